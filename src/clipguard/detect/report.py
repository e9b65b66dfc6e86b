"""The plain-text report of a scan (what :meth:`Scan.report <clipguard.detect.facade.Scan.report>`
prints): the reference mode and why, per-detector score statistics and suspect counts, the
detection metrics (with ground truth), and the top suspects of each detector."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from clipguard.detect.results import suspects_of

__all__ = ["format_report"]


def _header(n_samples: int, inputs: set[str], info: dict[str, Any], skipped: dict[str, str]) -> list[str]:
    plan = info.get("reference_plan", {})
    lines = [f"clipguard scan: {n_samples} samples, inputs {', '.join(sorted(inputs))}",
             f"reference: {plan.get('mode')} ({plan.get('reason')})"]
    if "recall_at_k" in info:
        lines.append(f"kNN recall@k vs exact: {info['recall_at_k']:.4f}")
    if skipped:
        lines.append("skipped: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()))
    return lines


def _detector_rows(table: pd.DataFrame, detectors: list[str], metrics: dict | None) -> list[str]:
    w = max(8, *(len(d) for d in detectors))
    lines = [f"{'detector':{w}s} {'min':>10s} {'median':>10s} {'max':>10s} {'suspects':>9s}"
             + ("" if metrics is None else f" {'AUROC':>7s} {'AUPRC':>7s} {'TPR@1%':>7s}")]
    for det in detectors:
        s = table[f"{det}_score"].to_numpy()
        row = (f"{det:{w}s} {np.nanmin(s):10.4g} {np.nanmedian(s):10.4g} {np.nanmax(s):10.4g} "
               f"{int(table[f'is_{det}_suspect'].sum()):9d}")
        if metrics is not None:
            m = metrics[det]
            row += f" {m['auroc']:7.4f} {m['auprc']:7.4f} {m['tpr_at_1pct_fpr']:7.4f}"
        lines.append(row)
    return lines


def format_report(
    table: pd.DataFrame,
    *,
    detectors: list[str],
    inputs: set[str],
    info: dict[str, Any],
    metrics: dict[str, dict[str, float]] | None,
    skipped: dict[str, str],
    n: int = 5,
) -> str:
    """The report of a scan as one string.

    Args:
        table: the score table (:mod:`clipguard.detect.results`).
        detectors: the detectors that ran, in order.
        inputs: the input names the data had (``image``, ``text``, ``captions``).
        info: the engine's info (``reference_plan``, ``recall_at_k``, ...).
        metrics: ``{det: {"auroc", "auprc", "tpr_at_1pct_fpr"}}`` or None.
        skipped: ``{det: reason}`` of the detectors skipped for missing inputs.
        n: top suspects listed per detector (0 = none).
    """
    lines = _header(len(table), inputs, info, skipped)
    lines += [""] + _detector_rows(table, detectors, metrics)
    if n:
        lines.append("")
        for det in detectors:
            top = suspects_of(table, detectors, det, n)
            ids = ", ".join(str(i) for i in top["id"].tolist())
            lines.append(f"top {len(top)} by {det}: {ids}")
    return "\n".join(lines)
