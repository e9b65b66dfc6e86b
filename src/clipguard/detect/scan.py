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

from clipguard.detect.config import DEFAULT_SUSPECT_SHARE, ScanConfig
from clipguard.errors import ClipguardError, ConfigError
from clipguard.utils.io import atomic_path
from clipguard.utils.runrecord import RunRecord

log = logging.getLogger("clipguard")

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
    config: ScanConfig | None = None,
    **overrides: Any,
) -> ScanResult:
    """Score every sample of a clip-retrieval embedding folder.

    Args:
        emb_dir: folder with ``img_emb/`` (and optionally ``text_emb/``, ``metadata/``; a
            ``caption`` metadata column is used by ``caption_dup``).
        out_dir: where ``scores/`` and ``run.json`` are written (created if needed).
        detectors: detector names; None = every registered detector whose inputs the folder
            has (the others are skipped and listed in ``run.json``).
        config: the scan options, a :class:`~clipguard.detect.config.ScanConfig` (default
            ``ScanConfig()``: k=16, reference ``"auto"`` -- its choice and reason are recorded
            in ``run.json`` as ``reference_plan`` --, suspect_share 0.01, ...).
        **overrides: ScanConfig field names applied on top of ``config``, e.g.
            ``run_scan(emb, out, k=8, reference="batch", batch_size=512)``, or
            ``device="cuda"`` to run the kNN search on a GPU.

    Returns:
        A :class:`ScanResult`. ``run.json`` records ``dataclasses.asdict(config)`` under
        ``config`` (plus ``emb_dir``, ``out_dir`` and ``detectors``).

    Raises:
        EmbeddingError: the folder is malformed or holds NaN/inf/zero embeddings.
        ConfigError: an unknown option or detector, an invalid option value, k too large for
            the data or the reference, a device that is not available, or an explicitly
            requested detector whose input the folder lacks.
    """
    from clipguard.detect.facade import Scan  # the facade builds on this module

    cfg = ScanConfig.resolve(config, **overrides)
    scan = Scan.from_folder(emb_dir).find_suspects(detectors, config=cfg)
    run_json = scan.save(out_dir)
    return ScanResult(scores=scan.scores, metrics=scan.metrics, detectors=scan.detectors,
                      out_dir=Path(out_dir), score_paths=scan.score_paths, run_json=run_json,
                      info=scan.info, skipped_detectors=scan.skipped_detectors)


@dataclass
class DatasetScanResult:
    """What :func:`scan_dataset` produced: the embedding run and the scan of its folder.

    Attributes:
        embed: the :class:`~clipguard.embed.extract.EmbedResult` (shards written / reused).
        scan: the :class:`ScanResult` of ``out_dir``.
        emb_dir: the embedding folder, ``out_dir/embeddings``.
    """

    embed: Any
    scan: ScanResult
    emb_dir: Path


def scan_dataset(
    model_dir: str | Path,
    manifest: str | Path,
    out_dir: str | Path,
    *,
    detectors: list[str] | tuple[str, ...] | None = None,
    config: ScanConfig | None = None,
    embed_batch_size: int = 256,
    progress: bool = True,
    **overrides: Any,
) -> DatasetScanResult:
    """Embed a dataset with a model, then scan the embeddings.

    Writes ``out_dir/embeddings/`` (clip-retrieval layout, with caption embeddings; resumable:
    a rerun reuses the finished shards) with
    :func:`~clipguard.embed.embed_dataset`, then ``out_dir/scores/`` and ``out_dir/run.json``
    with :func:`run_scan`.

    Args:
        model_dir: a model folder written by :func:`~clipguard.models.save_model`.
        manifest: a dataset manifest (:func:`~clipguard.data.manifest.read_manifest`).
        out_dir: output folder (created).
        detectors, config, **overrides: as in :func:`run_scan`.
        embed_batch_size: images per forward pass while embedding (the model runs on
            ``config.device``, like the kNN search).
        progress: show the embedding progress bar.

    Raises:
        ConfigError: as :func:`run_scan` (checked before anything is embedded).
        ClipguardError: the model or manifest cannot be read.
    """
    from clipguard.data.manifest import read_manifest
    from clipguard.embed import embed_dataset
    from clipguard.models import load_model

    cfg = ScanConfig.resolve(config, **overrides)  # fail fast, before the expensive part
    out_dir = Path(out_dir)
    emb_dir = out_dir / "embeddings"
    emb = embed_dataset(load_model(model_dir, device=cfg.device), read_manifest(manifest), emb_dir,
                        batch_size=embed_batch_size, progress=progress)
    res = run_scan(emb_dir, out_dir, detectors=detectors, config=cfg)
    return DatasetScanResult(embed=emb, scan=res, emb_dir=emb_dir)


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
