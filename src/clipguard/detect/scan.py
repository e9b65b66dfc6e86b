"""The scan: score every sample of an embedding folder and write per-shard score files.

Outputs in ``out_dir``::

    scores/scores_{i}.parquet   row-aligned with img_emb/img_emb_{i}.npy; columns
                                id, <det>_score (float64, higher = more suspicious),
                                <det>_rank (int64, 1 = most suspicious over the whole
                                dataset), poisoned (if the metadata has it)
    run.json                    config, timings, data fingerprint, sizes, detection metrics

Empty embedding shards get an empty score file with the same columns, so every embedding
shard has its score shard.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from clipguard.detect.detectors import DETECTORS, REFERENCE_MODES, score_all
from clipguard.detect.knn import BACKENDS, normalize
from clipguard.detect.layout import load_embedding_folder
from clipguard.errors import ClipguardError, ConfigError
from clipguard.utils.io import atomic_path
from clipguard.utils.runrecord import RunRecord, fingerprint_arrays

log = logging.getLogger("clipguard")


@dataclass
class ScanResult:
    """What :func:`run_scan` produced.

    Attributes:
        scores: N-row DataFrame in dataset order: ``id``, ``shard``, ``row_in_shard``,
            ``<det>_score``, ``<det>_rank`` for every detector, and ``poisoned`` if known.
        metrics: ``{det: {"auroc", "auprc", "tpr_at_1pct_fpr"}}`` or None without ground truth.
        detectors: detector names, in the order scored.
        out_dir: the output folder.
        score_paths: ``scores/scores_{i}.parquet`` files, in shard order.
        run_json: path of ``run.json``.
    """

    scores: pd.DataFrame
    metrics: dict[str, dict[str, float]] | None
    detectors: list[str]
    out_dir: Path
    score_paths: list[Path]
    run_json: Path


def rank_desc(scores: np.ndarray) -> np.ndarray:
    """Ranks (n,) int64: 1 = highest score; ties broken by row order; NaN ranked last."""
    s = np.asarray(scores, dtype=np.float64)
    nan = np.isnan(s)
    order = np.lexsort((np.arange(len(s)), -np.where(nan, 0.0, s), nan))
    ranks = np.empty(len(s), dtype=np.int64)
    ranks[order] = np.arange(1, len(s) + 1, dtype=np.int64)
    return ranks


def _check_config(detectors: list[str], k: int, reference: str, batch_size: int, backend: str) -> None:
    for name in detectors:
        DETECTORS.get(name)  # ConfigError listing the known names
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k must be an integer >= 1, got {k!r}")
    if reference not in REFERENCE_MODES:
        raise ConfigError(
            f"unknown reference mode {reference!r}; choose one of: {', '.join(REFERENCE_MODES)}"
        )
    if reference == "batch" and (
        isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= k
    ):
        raise ConfigError(f"batch_size must be an integer larger than k={k}, got {batch_size!r}")
    if backend not in BACKENDS:
        raise ConfigError(f"unknown kNN backend {backend!r}; choose one of: {', '.join(BACKENDS)}")


def run_scan(
    emb_dir: str | Path,
    out_dir: str | Path,
    *,
    detectors: list[str] | tuple[str, ...] | None = None,
    k: int = 16,
    reference: str = "global",
    batch_size: int = 2048,
    seed: int = 0,
    backend: str = "blocked",
) -> ScanResult:
    """Score every sample of a clip-retrieval embedding folder with density detectors.

    Args:
        emb_dir: folder with ``img_emb/`` (and optionally ``metadata/``, ``text_emb/``).
        out_dir: where ``scores/`` and ``run.json`` are written (created if needed).
        detectors: detector names; None = every registered detector.
        k: neighbours per sample.
        reference: ``"global"`` (all other samples) or ``"batch"`` (random batches).
        batch_size: batch size of ``"batch"`` mode.
        seed: seed of the batch permutation.
        backend: kNN backend, ``"blocked"`` or ``"faiss"``.

    Returns:
        A :class:`ScanResult`.

    Raises:
        EmbeddingError: the folder is malformed or holds NaN/inf/zero embeddings.
        ConfigError: an unknown detector/mode/backend, or k too large for the data.
    """
    names = list(dict.fromkeys(detectors)) if detectors is not None else DETECTORS.names()
    if not names:
        raise ConfigError("no detectors requested; choose from: " + ", ".join(DETECTORS.names()))
    _check_config(names, k, reference, batch_size, backend)
    emb_dir, out_dir = Path(emb_dir), Path(out_dir)
    rec = RunRecord("scan", config={
        "emb_dir": str(emb_dir), "out_dir": str(out_dir), "detectors": names, "k": int(k),
        "reference": reference, "batch_size": int(batch_size), "seed": int(seed),
        "backend": backend,
    })

    with rec.stage("load"):
        es = load_embedding_folder(emb_dir)
    with rec.stage("normalize"):
        x = normalize(es.image, describe_row=lambda i: f"{emb_dir}/{es.locate(i)}")
    n, d = x.shape
    with rec.stage("fingerprint"):
        rec["data_fingerprint"] = fingerprint_arrays(es.image)
    rec["n"], rec["d"] = int(n), int(d)
    rec["shard_ids"] = es.shard_ids
    rec["shard_sizes"] = es.shard_sizes
    rec["skipped_shards"] = es.skipped_shards

    with rec.stage("score"):
        raw = score_all(x, names, k=k, reference=reference, batch_size=batch_size, seed=seed,
                        backend=backend)

    meta = es.metadata
    table = pd.DataFrame({
        "id": meta["id"].to_numpy() if "id" in meta.columns else np.arange(n, dtype=np.int64),
        "shard": meta["shard"].to_numpy(np.int64),
        "row_in_shard": meta["row_in_shard"].to_numpy(np.int64),
    })
    for name in names:
        table[f"{name}_score"] = raw[name].astype(np.float64)
        table[f"{name}_rank"] = rank_desc(raw[name])
    if "poisoned" in meta.columns:
        table["poisoned"] = meta["poisoned"].to_numpy()

    metrics = None
    if "poisoned" in table.columns:
        # imported here: the clipguard.evaluate package also loads the zero-shot code (open_clip)
        from clipguard.evaluate.detection_metrics import detection_metrics

        with rec.stage("metrics"):
            try:
                metrics = {name: detection_metrics(table["poisoned"].to_numpy(), raw[name])
                           for name in names}
            except ClipguardError as e:
                log.warning("no detection metrics: %s", e)
                rec["detection_skipped"] = str(e)
    rec["detection"] = metrics

    file_cols = ["id"] + [c for name in names for c in (f"{name}_score", f"{name}_rank")]
    if "poisoned" in table.columns:
        file_cols.append("poisoned")
    score_dir = out_dir / "scores"
    paths: list[Path] = []
    with rec.stage("write"):
        score_dir.mkdir(parents=True, exist_ok=True)
        stale = {p.name for p in score_dir.glob("scores_*.parquet")}
        for i in sorted(es.shard_ids + es.skipped_shards):
            part = table.loc[table["shard"].to_numpy() == i, file_cols].reset_index(drop=True)
            path = score_dir / f"scores_{i}.parquet"
            with atomic_path(path) as tmp:
                part.to_parquet(tmp, index=False)
            paths.append(path)
            stale.discard(path.name)
        if stale:
            log.warning("%s holds score files from an earlier scan that this scan did not "
                        "write: %s", score_dir, ", ".join(sorted(stale)))
    rec["outputs"] = [str(p) for p in paths]
    run_json = rec.save(out_dir)
    return ScanResult(scores=table, metrics=metrics, detectors=names, out_dir=out_dir,
                      score_paths=paths, run_json=run_json)


def top_suspects(result: ScanResult, detector: str, n: int = 20) -> pd.DataFrame:
    """The ``n`` most suspicious rows by ``detector`` (rank 1 first).

    Returns:
        A DataFrame slice of ``result.scores`` sorted by ``<detector>_rank``.
    """
    if detector not in result.detectors:
        raise ConfigError(
            f"detector {detector!r} was not part of this scan; choose one of: "
            + ", ".join(result.detectors)
        )
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    return result.scores.sort_values(f"{detector}_rank", kind="stable").head(n)
