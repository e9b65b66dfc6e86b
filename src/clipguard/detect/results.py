"""The score table of a scan: one row per sample, a fixed column contract per detector.

Columns: ``id``, ``shard``, ``row_in_shard``, then per detector ``<det>_score`` (float64, higher =
more suspicious), ``<det>_rank`` (int64, 1 = most suspicious) and ``is_<det>_suspect`` (bool, the
``ceil(suspect_share * N)`` best ranks), then ``poisoned`` when the ground truth is known.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd

from clipguard.detect.metrics import detection_metrics_many
from clipguard.detect.options import DEFAULT_SUSPECT_SHARE
from clipguard.errors import ClipguardError, ConfigError
from clipguard.utils.runrecord import RunRecord
from clipguard.utils.validate import check_optional_int

__all__ = ["rank_desc", "n_suspects", "build_score_table", "score_columns", "detection_table",
           "suspects_of"]

log = logging.getLogger("clipguard")


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
    """``{det: metrics}`` from the ``poisoned`` column, or None without (usable) ground truth.

    A ground truth the metrics cannot use (one class only, labels not 0/1) is logged, recorded in
    ``rec["detection_skipped"]``, and gives None.
    """
    if "poisoned" not in table.columns:
        return None
    try:
        return detection_metrics_many(table["poisoned"].to_numpy(),
                                      {name: table[f"{name}_score"].to_numpy() for name in names})
    except ClipguardError as e:
        log.warning("no detection metrics: %s", e)
        if rec is not None:
            rec["detection_skipped"] = str(e)
        return None


def suspects_of(table: pd.DataFrame, detectors: list[str], detector: str, n: Any = None) -> pd.DataFrame:
    """The suspects of ``detector`` in a score table, most suspicious first.

    Args:
        table: a score table of the detectors ``detectors``.
        detector: one of them.
        n: the ``n`` best-ranked samples; None = those marked ``is_<det>_suspect``.

    Returns:
        DataFrame (index = dataset row) with ``id``, ``<det>_score``, ``<det>_rank``,
        ``is_<det>_suspect`` (and ``poisoned`` with ground truth), sorted by rank.

    Raises:
        ConfigError: ``detector`` is not one of ``detectors``, or a bad ``n``.
    """
    if detector not in detectors:
        raise ConfigError(
            f"detector {detector!r} was not part of this scan; choose one of: " + ", ".join(detectors)
        )
    check_optional_int("n", n, minimum=0)
    cols = ["id", f"{detector}_score", f"{detector}_rank", f"is_{detector}_suspect"]
    if "poisoned" in table.columns:
        cols.append("poisoned")
    out = table.sort_values(f"{detector}_rank", kind="stable")[cols]
    return out[out[f"is_{detector}_suspect"]] if n is None else out.head(n)
