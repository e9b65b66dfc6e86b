"""``clipguard discover SCAN_DIR``: the clusters among a scan's most suspicious samples (issue 12).

Reads the scan's score files and the embedding folder it scored (``run.json`` names it; ``embeddings``
overrides), clusters the top samples with :func:`clipguard.analyze.discover_clusters` and writes::

    out/clusters.parquet   one row per cluster (rank, kind, by, name, size, share, mean_score, ...,
                           member_ids), plus ``planted_share`` / ``poisoned_share`` when the embeddings carry
                           that ground truth (share of members with ``natural`` / ``poisoned``)
    out/run.json           config, versions, timings, data fingerprint, counts per kind

``out`` defaults to ``SCAN_DIR/discover`` (the scan's own ``run.json`` is left alone).
"""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from clipguard.analyze import DiscoverConfig, discover_clusters
from clipguard.detect.neighbours.normalize import normalize
from clipguard.detect.store import SavedScan, read_scan
from clipguard.errors import ConfigError
from clipguard.io.reader import EmbeddingSet, load_embedding_folder
from clipguard.utils.io import atomic_path
from clipguard.utils.runrecord import RunRecord, fingerprint_arrays

__all__ = ["GROUND_TRUTH_SHARES", "discover_scan", "format_clusters"]

GROUND_TRUTH_SHARES = {"natural": "planted_share", "poisoned": "poisoned_share", "mismatched": "mismatched_share"}
"""Ground-truth column of the embeddings -> the column of the cluster table giving its share among members."""


def _embeddings(saved: SavedScan, scan_dir: Path, embeddings: str | os.PathLike | None) -> EmbeddingSet:
    """The embedding folder the scan scored: ``embeddings``, else ``run.json``'s ``emb_dir`` as written or
    relative to the scan folder."""
    source = str(embeddings or saved.run["config"].get("emb_dir") or "")
    tries = [Path(source), scan_dir / source, scan_dir / "embeddings"] if source else [scan_dir / "embeddings"]
    for path in tries:
        if (path / "img_emb").is_dir():
            es = load_embedding_folder(path)
            # refuse NaN/inf and all-zero rows as a scan does, naming the shard file and row
            normalize(es.image, describe_row=lambda i: f"{es.root}/{es.locate(i)}")
            if es.text is not None:
                normalize(es.text, describe_row=lambda i: f"{es.root}/{es.locate(i, 'text')}")
            return es
    raise ConfigError(f"{scan_dir}: the embedding folder this scan scored ({source or 'not recorded'}) was not "
                      "found; pass it with --embeddings EMB_DIR")


def _aligned(table: pd.DataFrame, es: EmbeddingSet) -> np.ndarray:
    """Row of the embedding set for each row of the scan table (matched on shard and row in shard)."""
    key = pd.MultiIndex.from_arrays([es.metadata["shard"].to_numpy(), es.metadata["row_in_shard"].to_numpy()])
    pos = key.get_indexer(pd.MultiIndex.from_arrays([table["shard"].to_numpy(), table["row_in_shard"].to_numpy()]))
    if (pos < 0).any() or len(es) != len(table):
        raise ConfigError(f"the embedding folder {es.root} does not hold the rows this scan scored "
                          f"({len(es)} vs {len(table)} rows); pass the right one with --embeddings")
    return pos


def _ground_truth(table: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """Add ``planted_share`` / ``poisoned_share`` / ``mismatched_share`` where the metadata has the column."""
    by_id = meta.set_index(meta["id"].astype(str))
    for col, share in GROUND_TRUTH_SHARES.items():
        if col in meta.columns:
            truth = by_id[col].fillna(False).astype(bool)
            table[share] = [float(truth.loc[m].mean()) for m in table["member_ids"]]
    return table


def format_clusters(table: pd.DataFrame, n: int = 10) -> str:
    """The first ``n`` clusters as a plain-text table (what ``clipguard discover`` prints)."""
    if not len(table):
        return "no cluster of two or more samples among the top-scored samples"
    cols = ["rank", "kind", "size", "share", "mean_score", "caption_agreement", "image_tightness", "name"]
    cols += [c for c in GROUND_TRUTH_SHARES.values() if c in table.columns]
    fmt = {c: "{:.4f}".format for c in ("share", "mean_score", "caption_agreement", "image_tightness",
                                         *GROUND_TRUTH_SHARES.values())}
    head = table[cols].head(n).copy()
    head["name"] = head["name"].str.slice(0, 48)
    return head.to_string(index=False, formatters=fmt)


def discover_scan(scan_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                  detector: str | None = None, embeddings: str | os.PathLike | None = None,
                  config: DiscoverConfig = DiscoverConfig()) -> pd.DataFrame:
    """Cluster the top-scored samples of the scan in ``scan_dir`` and write ``clusters.parquet`` + ``run.json``.

    Args:
        scan_dir: the ``--out`` folder of ``clipguard scan``.
        out_dir: where to write [default: ``scan_dir/discover``].
        detector: the score column used to pick the top samples [default: the scan's default detector].
        embeddings: the embedding folder the scan scored [default: the one its ``run.json`` names].
        config: :class:`~clipguard.analyze.DiscoverConfig`.

    Returns:
        The cluster table of :func:`~clipguard.analyze.discover_clusters` (plus ground-truth shares).

    Raises:
        ConfigError: no scan in ``scan_dir``, an unknown detector, embeddings not found or without captions.
    """
    scan_dir = Path(scan_dir)
    saved = read_scan(scan_dir)
    scores, detectors = saved.table, list(saved.run["detectors"])
    detector = detector or saved.run.get("default_detector") or detectors[0]
    if detector not in detectors:
        raise ConfigError(f"{scan_dir}: no scores of detector {detector!r}; the scan has {', '.join(detectors)}")
    rec = RunRecord("discover", {"scan_dir": str(scan_dir), "detector": detector, **asdict(config)})
    with rec.stage("load"):
        es = _embeddings(saved, scan_dir, embeddings)
        if "caption" not in es.metadata.columns:
            raise ConfigError(f"{es.root}: the embeddings carry no captions; embed a manifest with a caption column")
        pos = _aligned(scores, es)
    rec["data_fingerprint"] = fingerprint_arrays(es.image)
    with rec.stage("cluster"):
        table = discover_clusters(es.image[pos], scores[f"{detector}_score"].to_numpy(),
                                  es.metadata["caption"].astype(str).to_numpy()[pos],
                                  scores["id"].astype(str).to_numpy(),
                                  text=None if es.text is None else es.text[pos], config=config)
    table = _ground_truth(table, es.metadata)
    out = Path(out_dir) if out_dir is not None else scan_dir / "discover"
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "clusters.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    rec.data.update({"n": len(es), "n_top": table.attrs["n_top"], "n_singletons": table.attrs["n_singletons"],
                     "n_repeated_captions": table.attrs["n_repeated_captions"],
                     "n_clusters": int(len(table)), "kinds": table["kind"].value_counts().to_dict(),
                     "outputs": [str(out / "clusters.parquet")]})
    rec.save(out)
    return table
