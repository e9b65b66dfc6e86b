"""The scan of an embedding folder as two functions: :func:`run_scan` (score it and write the scan
folder, :mod:`clipguard.detect.store`) and :func:`top_suspects`.

Detectors that need caption embeddings (``text_emb/``) or caption strings (metadata column
``caption``) are skipped, with a warning and a ``skipped_detectors`` entry in ``run.json``,
when they run by default and the folder lacks that input; asking for one explicitly raises a
:class:`~clipguard.errors.ConfigError` instead. ``dynamics=MODEL_DIR`` adds the model's
training-dynamics record (``learning_speed``, see :meth:`Scan.with_dynamics
<clipguard.detect.facade.Scan.with_dynamics>`), ``records=[PATH, ...]`` any per-row record, its kind
inferred (``perturbation`` reads a perturbation-stability record, see :meth:`Scan.with_record
<clipguard.detect.facade.Scan.with_record>`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from clipguard.detect.config import ScanConfig
from clipguard.detect.detectors.records import record_sources
from clipguard.detect.facade import Scan
from clipguard.errors import ConfigError

__all__ = ["ScanResult", "run_scan", "top_suspects"]


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
        records_info: ``{input name: what was joined}`` of each per-row record (``"dynamics"``,
            ``"stability"``: ``source``, ``n_record_ids``, ``n_record_ids_unmatched``, ``n_rows``,
            ``n_rows_without_record``); ``{}`` without one.
        dynamics_info: ``records_info["dynamics"]`` with a training-dynamics record, else None.
    """

    scores: pd.DataFrame
    metrics: dict[str, dict[str, float]] | None
    detectors: list[str]
    out_dir: Path
    score_paths: list[Path]
    run_json: Path
    info: dict[str, Any] = field(default_factory=dict)
    skipped_detectors: dict[str, str] = field(default_factory=dict)
    dynamics_info: dict[str, Any] | None = None
    records_info: dict[str, dict[str, Any]] = field(default_factory=dict)


def run_scan(
    emb_dir: str | Path,
    out_dir: str | Path,
    *,
    detectors: list[str] | tuple[str, ...] | None = None,
    config: ScanConfig | None = None,
    dynamics: str | os.PathLike | None = None,
    records: Sequence[str | os.PathLike] = (),
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
            in ``run.json`` as ``reference_plan`` --, suspect_share 0.01, device ``"auto"``, ...).
        dynamics: a model folder trained on these pairs with ``--record-epochs N`` (or its
            ``dynamics.parquet``): its training-dynamics record is joined to the rows by id
            (:meth:`Scan.with_dynamics <clipguard.detect.facade.Scan.with_dynamics>`) and
            ``learning_speed`` joins the default detectors; None = no record.
        records: per-row records, each a folder or a parquet file whose kind is inferred
            (:func:`~clipguard.detect.detectors.records.record_kind_of`): a perturbation-stability
            record (``clipguard probe MODEL_DIR MANIFEST --out DIR``: ``perturbation`` joins the
            default detectors) or a training-dynamics record; joined by id as ``dynamics``.
        **overrides: ScanConfig field names applied on top of ``config``, e.g.
            ``run_scan(emb, out, k=8, reference="batch", batch_size=512)``, or
            ``device="cuda"`` to run the kNN search on a GPU.

    Returns:
        A :class:`ScanResult`. ``run.json`` records ``dataclasses.asdict(config)`` under
        ``config`` (plus ``emb_dir``, ``out_dir`` and ``detectors``).

    Raises:
        EmbeddingError: the folder is malformed or holds NaN/inf/zero embeddings.
        ConfigError: an unknown option or detector, an invalid option value, k too large for
            the data or the reference, a device that is not available, an explicitly
            requested detector whose input the folder lacks, or a record (``dynamics``,
            ``records``) that is missing, of no known kind, given twice for one kind, or whose ids
            match no row.
    """
    cfg = ScanConfig.resolve(config, **overrides)
    sources = record_sources(dynamics, records)
    scan = Scan.from_folder(emb_dir)
    for kind, source in sources:
        scan.with_record(source, kind=kind)
    scan.find_suspects(detectors, config=cfg)
    run_json = scan.save(out_dir)
    return ScanResult(scores=scan.scores, metrics=scan.metrics, detectors=scan.detectors,
                      out_dir=Path(out_dir), score_paths=scan.score_paths, run_json=run_json,
                      info=scan.info, skipped_detectors=scan.skipped_detectors,
                      dynamics_info=scan.dynamics_info, records_info=dict(scan.records_info))


def top_suspects(result: ScanResult, detector: str, n: int = 20) -> pd.DataFrame:
    """The ``n`` most suspicious rows by ``detector`` (rank 1 first).

    Returns:
        A DataFrame slice of ``result.scores`` (every column) sorted by ``<detector>_rank``.
    """
    if detector not in result.detectors:
        raise ConfigError(
            f"detector {detector!r} was not part of this scan; choose one of: "
            + ", ".join(result.detectors)
        )
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    return result.scores.sort_values(f"{detector}_rank", kind="stable").head(n)
