"""``clipguard filter``: drop a scan's suspects from a dataset manifest before training.

The last step of the data team's job: ``clipguard scan`` ranks every pair (higher score = more
suspicious), ``filter_manifest`` writes the manifest without the suspects. Output folder::

    out/manifest.<ext>   the kept rows, every column of the input; image paths rewritten so they
                         still point at the same files from the new folder
    out/removed.csv      the removed rows: id, <detector>_rank, <detector>_score, caption
                         (and poisoned, when the manifest has ground truth)
    out/run.json         detector, selection rule, counts, and with ground truth the share of
                         the poisoned rows removed (recall) and of the removed rows poisoned
                         (precision)

Which rows go:

* default: the scan's own budget, ``is_<detector>_suspect`` (the top ``suspect_share`` of the
  scan, 1 % unless the scan was told otherwise);
* ``share=f``: the top ``ceil(f * n_scored)`` by ``<detector>_rank``;
* ``top=n``: the top ``n`` by ``<detector>_rank``.

Rows the scan never scored (left out at embedding time: missing or unreadable image, empty
caption) are kept and counted as ``n_unscored``: the trainer skips them again with the reason.
Scores whose ids are not in the manifest mean the scan belongs to another dataset: an error.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from clipguard.data.manifest import read_manifest, write_manifest
from clipguard.errors import ConfigError
from clipguard.utils.io import atomic_path
from clipguard.utils.runrecord import RunRecord, fingerprint_files

log = logging.getLogger("clipguard")


@dataclass
class FilterResult:
    """What :func:`filter_manifest` did (the same figures are in ``run.json``)."""

    manifest_path: Path
    n_rows: int
    n_scored: int
    n_removed: int
    n_kept: int
    n_unscored: int
    removed: pd.DataFrame
    poisoned_recall: float | None = None
    poisoned_precision: float | None = None


def read_scores(scan_dir: str | os.PathLike) -> pd.DataFrame:
    """Every ``scores/scores_{i}.parquet`` of a scan folder, in shard order, as one DataFrame."""
    folder = Path(scan_dir) / "scores"
    paths = sorted(folder.glob("scores_*.parquet"), key=lambda p: int(p.stem.split("_")[-1]))
    if not paths:
        raise ConfigError(f"{scan_dir}: no scores/scores_*.parquet; pass the --out folder of `clipguard scan`")
    frames = [pd.read_parquet(p) for p in paths]
    table = pd.concat([f for f in frames if len(f)] or frames[:1], ignore_index=True)
    table["id"] = table["id"].astype(str)
    return table


def filter_manifest(manifest: str | os.PathLike, scan_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                    detector: str = "fused", share: float | None = None, top: int | None = None) -> FilterResult:
    """Write ``manifest`` without the suspects of ``detector`` in ``scan_dir`` to ``out_dir``.

    Args:
        manifest: the dataset the scan was made from (its ids are matched to the scores).
        scan_dir: the output folder of ``clipguard scan`` (``scores/`` inside).
        out_dir: folder for ``manifest.<ext>`` (the input's format), ``removed.csv``, ``run.json``.
        detector: whose ranking decides (a detector the scan ran).
        share: remove the top ``ceil(share * n_scored)``; ``top``: remove the top ``top``;
            neither: remove the scan's ``is_<detector>_suspect`` rows.

    Raises:
        ConfigError: both ``share`` and ``top``, a value out of range, a detector the scan did
            not run, or scores that do not belong to the manifest.
        ManifestError: the manifest cannot be read.
    """
    if share is not None and top is not None:
        raise ConfigError("give --share or --top, not both")
    if share is not None and not 0 < share <= 1:
        raise ConfigError(f"share must lie in (0, 1], got {share!r}")
    if top is not None and (isinstance(top, bool) or int(top) != top or top < 0):
        raise ConfigError(f"top must be an integer >= 0, got {top!r}")
    m = read_manifest(manifest)
    scores = read_scores(scan_dir)
    rank_col, score_col, flag_col = f"{detector}_rank", f"{detector}_score", f"is_{detector}_suspect"
    if rank_col not in scores.columns:
        ran = sorted(c[:-len("_rank")] for c in scores.columns if c.endswith("_rank"))
        raise ConfigError(f"{scan_dir}: the scan did not run detector {detector!r}; choose one of: {', '.join(ran)}")
    ids = m.df["id"].astype(str)
    unknown = ~scores["id"].isin(set(ids))
    if unknown.any():
        raise ConfigError(f"{scan_dir}: {int(unknown.sum())} of {len(scores)} scored ids are not in {m.path} "
                          f"(e.g. {scores['id'][unknown].iat[0]!r}); was the scan made from this manifest?")
    n_scored = len(scores)
    if top is not None:
        remove = scores[rank_col] <= int(top)
        rule = f"top {int(top)} by {rank_col}"
    elif share is not None:
        n = math.ceil(share * n_scored)
        remove = scores[rank_col] <= n
        rule = f"top {share:g} of {n_scored} scored ({n}) by {rank_col}"
    else:
        remove = scores[flag_col].astype(bool)
        rule = f"{flag_col} (the scan's suspect budget)"
    removed_ids = set(scores["id"][remove])
    drop = ids.isin(removed_ids).to_numpy()
    kept = m.df[~drop].copy()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kept["image"] = [_rebase(p, m.root, out) for p in kept["image"]]
    manifest_out = write_manifest(kept.reset_index(drop=True), out / f"manifest{m.path.suffix}")

    cols = ["id", rank_col, score_col]
    removed = scores.loc[remove, cols].merge(m.df[["id", "caption"] + (["poisoned"] if m.has_ground_truth else [])],
                                             on="id", how="left").sort_values(rank_col)
    with atomic_path(out / "removed.csv") as tmp:
        removed.to_csv(tmp, index=False)

    n_unscored = int((~ids.isin(set(scores["id"]))).sum())
    if n_unscored:
        log.warning("%d manifest rows have no score (skipped when embedding); kept", n_unscored)
    res = FilterResult(manifest_out, len(m), n_scored, int(drop.sum()), len(kept), n_unscored, removed.reset_index(drop=True))
    if m.has_ground_truth:
        y = m.df["poisoned"].astype(bool).to_numpy()
        res.poisoned_recall = float(drop[y].mean()) if y.any() else None
        res.poisoned_precision = float(y[drop].mean()) if drop.any() else None
    rec = RunRecord("filter", {"manifest": str(m.path), "scan_dir": str(scan_dir), "detector": detector,
                               "share": share, "top": top})
    rec["data_fingerprint"] = fingerprint_files([m.path])
    rec.data.update(rule=rule, n_rows=res.n_rows, n_scored=n_scored, n_removed=res.n_removed, n_kept=res.n_kept,
                    n_unscored=n_unscored, poisoned_recall=res.poisoned_recall,
                    poisoned_precision=res.poisoned_precision)
    rec.save(out)
    return res


def _rebase(image: str, old_root: Path, new_root: Path) -> str:
    """``image`` (relative to ``old_root``, or absolute) relative to ``new_root`` when possible."""
    p = Path(str(image))
    if p.is_absolute():
        return str(p)
    target = (old_root / p).resolve()
    try:
        return os.path.relpath(target, new_root.resolve())
    except ValueError:  # another drive (Windows): keep it absolute
        return str(target)


__all__ = ["FilterResult", "filter_manifest", "read_scores"]
