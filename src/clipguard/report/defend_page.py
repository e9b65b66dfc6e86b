"""The report of ``clipguard defend``: CA / ASR before and after the defence, its training loss per epoch,
what it removed or unlearned, the overlap check, and what ran.

Reads only ``run.json`` (written by :func:`clipguard.pipeline.defend_model`): ``config`` (method, model,
data, ...), ``kind``, ``params``, ``train_config``, ``defence`` (``history``: per-epoch losses;
``objective``: the loss terms; counts of the retraining defences), ``overlap``, and with a test split
``before`` / ``after`` / ``ca_change`` / ``asr_reduction``.

Example::

    from clipguard.report import build_defend_report

    build_defend_report("defended", "defended/report.html")
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from clipguard.report.before_after import before_after
from clipguard.report.common import num, pct, read_run, render, write_page
from clipguard.report.model_figures import loss_curves

__all__ = ["build_defend_report", "DEFENCE_FIELDS"]

DEFENCE_FIELDS: dict[str, tuple[str, str]] = {
    "n_pairs": ("pairs trained on", "count"),
    "n_skipped": ("pairs skipped (image unreadable)", "count"),
    "train_seconds": ("seconds of training", "number"),
    "n_embedded": ("training pairs embedded for the scan", "count"),
    "n_removed": ("training pairs removed as suspects", "count"),
    "n_kept": ("training pairs kept", "count"),
    "n_suspects": ("training pairs unlearned as suspects", "count"),
    "poisoned_recall": ("share of the poisoned pairs removed (ground truth)", "share"),
    "poisoned_precision": ("share of the removed pairs that are poisoned (ground truth)", "share"),
    "suspects_poisoned_recall": ("share of the poisoned pairs among the suspects (ground truth)", "share"),
}
"""Label and format of the scalar entries of a defence's record (others are shown under their own key)."""


def _record_rows(info: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) of the defence record's scalar entries (history and objective have their own sections)."""
    rows = []
    for key, value in info.items():
        if key in ("history", "objective") or isinstance(value, (dict, list)):
            continue
        label, kind = DEFENCE_FIELDS.get(key, (key.replace("_", " "), "number"))
        rows.append((label, pct(value) if kind == "share" and value is not None else num(value)))
    return rows


def _history_rows(history: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Columns and formatted rows of the per-epoch history."""
    if not history:
        return [], []
    cols = [c for c in history[0] if isinstance(history[0][c], (int, float))]
    return cols, [[num(h.get(c)) for c in cols] for h in history]


def build_defend_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the HTML report of the ``clipguard defend`` run in ``run_dir`` (see the module docstring).

    Args:
        run_dir: the ``--out`` folder of ``clipguard defend`` (holds ``run.json``).
        out: the HTML file (default ``run_dir/report.html``).

    Returns:
        The path of the page.

    Raises:
        ConfigError: ``run_dir`` holds no ``run.json`` of ``clipguard defend``.
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    run = read_run(run_dir, "`clipguard defend`", ("defend",))
    info = run.get("defence") if isinstance(run.get("defence"), dict) else {}
    history = [h for h in info.get("history") or [] if isinstance(h, dict)]
    cols, epochs = _history_rows(history)
    page = render("defend.html.j2", title=f"clipguard defend report: {run_dir}", run=run,
                  method=run["config"].get("method", "?"), table=before_after(run), loss=loss_curves(history),
                  history_cols=cols, history=epochs, objective=info.get("objective") or [],
                  record=_record_rows(info), overlap=run.get("overlap"))
    return write_page(Path(out) if out is not None else run_dir / "report.html", page, run_dir, t0)
