"""The scan: score every sample of an embedding folder and write per-shard score files.

Outputs in ``out_dir``::

    scores/scores_{i}.parquet   row-aligned with img_emb/img_emb_{i}.npy; columns
                                id, and per detector <det>_score (float64, higher = more
                                suspicious), <det>_rank (int64, 1 = most suspicious over the
                                whole dataset), is_<det>_suspect (bool, the top
                                ``suspect_share`` of the dataset), then poisoned (if the
                                metadata has it)
    run.json                    config, versions, timings, data fingerprint, sizes, the
                                reference plan (mode chosen and why, IVF recall), detectors
                                skipped for missing inputs, detection metrics

Empty embedding shards get an empty score file with the same columns, so every embedding
shard has its score shard.

Detectors that need caption embeddings (``text_emb/``) or caption strings (metadata column
``caption``) are skipped, with a warning and a ``skipped_detectors`` entry in ``run.json``,
when they run by default and the folder lacks that input; asking for one explicitly raises a
:class:`~clipguard.errors.ConfigError` instead.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipguard.detect.detectors import DETECTORS
from clipguard.detect.knn import BACKENDS
from clipguard.detect.reference import INDEXES, REFERENCE_MODES
from clipguard.errors import ClipguardError, ConfigError
from clipguard.utils.io import atomic_path
from clipguard.utils.runrecord import RunRecord

log = logging.getLogger("clipguard")

DEFAULT_SUSPECT_SHARE = 0.01
"""``is_<det>_suspect`` marks the top 1% of the dataset by default (the DAO paper's filter
share for patch triggers)."""


@dataclass
class ScanResult:
    """What :func:`run_scan` produced.

    Attributes:
        scores: N-row DataFrame in dataset order: ``id``, ``shard``, ``row_in_shard``,
            ``<det>_score``, ``<det>_rank``, ``is_<det>_suspect`` for every detector, and
            ``poisoned`` if known.
        metrics: ``{det: {"auroc", "auprc", "tpr_at_1pct_fpr"}}`` or None without ground truth.
        detectors: detector names, in the order scored.
        out_dir: the output folder.
        score_paths: ``scores/scores_{i}.parquet`` files, in shard order.
        run_json: path of ``run.json``.
        info: the reference plan, per-draw kNN info (IVF recall) and detector info.
        skipped_detectors: ``{name: reason}`` of default detectors skipped for missing inputs.
    """

    scores: pd.DataFrame
    metrics: dict[str, dict[str, float]] | None
    detectors: list[str]
    out_dir: Path
    score_paths: list[Path]
    run_json: Path
    info: dict[str, Any] = field(default_factory=dict)
    skipped_detectors: dict[str, str] = field(default_factory=dict)


def rank_desc(scores: np.ndarray) -> np.ndarray:
    """Ranks (n,) int64: 1 = highest score; ties broken by row order; NaN ranked last."""
    s = np.asarray(scores, dtype=np.float64)
    nan = np.isnan(s)
    order = np.lexsort((np.arange(len(s)), -np.where(nan, 0.0, s), nan))
    ranks = np.empty(len(s), dtype=np.int64)
    ranks[order] = np.arange(1, len(s) + 1, dtype=np.int64)
    return ranks


def _check_config(detectors: list[str], k: int, reference: str, batch_size: int, backend: str,
                  index: str, suspect_share: float) -> None:
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
    if index not in INDEXES:
        raise ConfigError(f"unknown index {index!r}; choose one of: {', '.join(INDEXES)}")
    if not isinstance(suspect_share, (int, float)) or not 0 < suspect_share <= 1:
        raise ConfigError(f"suspect_share must lie in (0, 1], got {suspect_share!r}")


def n_suspects(n: int, suspect_share: float) -> int:
    """How many samples ``is_<det>_suspect`` marks: ``ceil(suspect_share * n)`` (at least 1 if n > 0)."""
    return min(n, max(1 if n else 0, math.ceil(suspect_share * n - 1e-9)))


def build_score_table(
    base: pd.DataFrame, scores: dict[str, np.ndarray], suspect_share: float = DEFAULT_SUSPECT_SHARE
) -> pd.DataFrame:
    """Add ``<det>_score``, ``<det>_rank``, ``is_<det>_suspect`` columns to ``base``.

    Args:
        base: N-row frame (``id``, ``shard``, ``row_in_shard`` and optionally ``poisoned``,
            which is moved to the end).
        scores: ``{det: (N,) scores}``, higher = more suspicious.
        suspect_share: share of the dataset marked as suspects per detector (top ranks).
    """
    table = base.drop(columns=["poisoned"], errors="ignore").copy()
    m = n_suspects(len(table), suspect_share)
    for name, s in scores.items():
        table[f"{name}_score"] = np.asarray(s, dtype=np.float64)
        rank = rank_desc(s)
        table[f"{name}_rank"] = rank
        table[f"is_{name}_suspect"] = rank <= m
    if "poisoned" in base.columns:
        table["poisoned"] = base["poisoned"].to_numpy()
    return table


def score_columns(names: list[str]) -> list[str]:
    """The per-detector columns of a score file, in order."""
    return [c for name in names for c in (f"{name}_score", f"{name}_rank", f"is_{name}_suspect")]


def detection_table(table: pd.DataFrame, names: list[str], rec: RunRecord | None = None):
    """``{det: metrics}`` from the ``poisoned`` column, or None without (usable) ground truth."""
    if "poisoned" not in table.columns:
        return None
    # imported here: the clipguard.evaluate package also loads the zero-shot code (open_clip)
    from clipguard.evaluate.detection_metrics import detection_metrics_many

    try:
        return detection_metrics_many(table["poisoned"].to_numpy(),
                                      {name: table[f"{name}_score"].to_numpy() for name in names})
    except ClipguardError as e:
        log.warning("no detection metrics: %s", e)
        if rec is not None:
            rec["detection_skipped"] = str(e)
        return None


def write_scan(
    table: pd.DataFrame, names: list[str], shard_ids: list[int], out_dir: str | Path, rec: RunRecord
) -> tuple[list[Path], Path]:
    """Write ``scores/scores_{i}.parquet`` for every shard id and ``run.json``.

    Args:
        table: from :func:`build_score_table` (needs ``id`` and ``shard``).
        names: detector names, in column order.
        shard_ids: every shard to write, including empty ones (they get an empty file).
        out_dir: output folder (created).
        rec: the run record, saved as ``run.json`` after the score files.

    Returns:
        ``(score_paths, run_json)``.
    """
    out_dir = Path(out_dir)
    file_cols = ["id"] + score_columns(names)
    if "poisoned" in table.columns:
        file_cols.append("poisoned")
    score_dir = out_dir / "scores"
    paths: list[Path] = []
    with rec.stage("write"):
        score_dir.mkdir(parents=True, exist_ok=True)
        stale = {p.name for p in score_dir.glob("scores_*.parquet")}
        shard_col = table["shard"].to_numpy()
        for i in sorted(shard_ids):
            part = table.loc[shard_col == i, file_cols].reset_index(drop=True)
            path = score_dir / f"scores_{i}.parquet"
            with atomic_path(path) as tmp:
                part.to_parquet(tmp, index=False)
            paths.append(path)
            stale.discard(path.name)
        if stale:
            log.warning("%s holds score files from an earlier scan that this scan did not "
                        "write: %s", score_dir, ", ".join(sorted(stale)))
    rec["outputs"] = [str(p) for p in paths]
    return paths, rec.save(out_dir)


def record_scoring(rec: RunRecord, info: dict[str, Any], skipped: dict[str, str]) -> None:
    """Put the reference plan, kNN info and skipped detectors into the run record."""
    rec["reference_plan"] = info.get("reference_plan")
    rec["references"] = info.get("references")
    if "recall_at_k" in info:
        rec["recall_at_k"] = info["recall_at_k"]
    if "detector_info" in info:
        rec["detector_info"] = info["detector_info"]
    rec["skipped_detectors"] = skipped
    rec["n_skipped_detectors"] = len(skipped)


def run_scan(
    emb_dir: str | Path,
    out_dir: str | Path,
    *,
    detectors: list[str] | tuple[str, ...] | None = None,
    k: int = 16,
    reference: str = "auto",
    batch_size: int = 2048,
    reference_size: int | None = None,
    n_references: int | None = None,
    index: str = "auto",
    nlist: int | None = None,
    nprobe: int | None = None,
    target_recall: float = 0.95,
    n_recall: int = 1000,
    seed: int = 0,
    backend: str = "blocked",
    suspect_share: float = DEFAULT_SUSPECT_SHARE,
    detector_params: dict[str, dict[str, Any]] | None = None,
) -> ScanResult:
    """Score every sample of a clip-retrieval embedding folder.

    Args:
        emb_dir: folder with ``img_emb/`` (and optionally ``text_emb/``, ``metadata/``; a
            ``caption`` metadata column is used by ``caption_dup``).
        out_dir: where ``scores/`` and ``run.json`` are written (created if needed).
        detectors: detector names; None = every registered detector whose inputs the folder
            has (the others are skipped and listed in ``run.json``).
        k: neighbours per sample.
        reference: ``"auto"``, ``"global"``, ``"batch"``, ``"reference"`` or
            ``"multi_reference"`` (:mod:`clipguard.detect.reference`; the choice of
            ``"auto"`` and its reason are recorded in ``run.json`` as ``reference_plan``).
        batch_size: batch size of ``"batch"`` mode.
        reference_size: M of the reference modes (default 50,000, capped at N).
        n_references: R of ``"multi_reference"`` (default 4).
        index: ``"auto"``, ``"flat"`` (exact) or ``"ivf"`` for the reference modes.
        nlist, nprobe: IVF lists / lists probed (nlist default from M; nprobe None = tuned
            on a sample until recall@k reaches ``target_recall``).
        target_recall: recall@k the IVF nprobe tuning aims for.
        n_recall: queries sampled to tune nprobe and to measure IVF recall@k (``run.json``).
        seed: seed of batches, references, IVF and Isolation Forest.
        backend: exact kNN backend of global mode, ``"blocked"`` or ``"faiss"``.
        suspect_share: share of the dataset marked ``is_<det>_suspect`` (top ranks).
        detector_params: extra constructor arguments per detector name.

    Returns:
        A :class:`ScanResult`.

    Raises:
        EmbeddingError: the folder is malformed or holds NaN/inf/zero embeddings.
        ConfigError: an unknown detector/mode/backend/index, k too large for the data or the
            reference, or an explicitly requested detector whose input the folder lacks.
    """
    from clipguard.detect.facade import Scan  # the facade builds on this module

    names = list(dict.fromkeys(detectors)) if detectors is not None else DETECTORS.names()
    if not names:
        raise ConfigError("no detectors requested; choose from: " + ", ".join(DETECTORS.names()))
    _check_config(names, k, reference, batch_size, backend, index, suspect_share)
    scan = Scan.from_folder(emb_dir).find_suspects(
        detectors, k=k, reference=reference, suspect_share=suspect_share, batch_size=batch_size,
        reference_size=reference_size, n_references=n_references, index=index, nlist=nlist,
        nprobe=nprobe, target_recall=target_recall, n_recall=n_recall, seed=seed,
        backend=backend,
        detector_params=detector_params)
    run_json = scan.save(out_dir)
    return ScanResult(scores=scan.scores, metrics=scan.metrics, detectors=scan.detectors,
                      out_dir=Path(out_dir), score_paths=scan.score_paths, run_json=run_json,
                      info=scan.info, skipped_detectors=scan.skipped_detectors)


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
