"""The report of ``clipguard audit``: the verdict in words, the reversed trigger and mask of the closest
target, every candidate with its trigger thumbnail, mask size and anomaly index, and what ran.

Reads the audit folder (:func:`clipguard.pipeline.audit.audit_model`): ``verdict.json`` (verdict,
target, closest_target, anomaly_index, threshold, calibrated, per_target_reference,
attack_success_rate, mask_l1, trigger, mask, candidates), ``candidates.csv`` (one row per candidate,
in the order of ``triggers/NN_*.png``), ``triggers/`` and ``run.json``. Target names come from class
lists or web captions: they are escaped in the page and literal in the figures.

Example::

    from clipguard.report import build_audit_report

    build_audit_report("audit", "audit/report.html")
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from clipguard.errors import ConfigError
from clipguard.report.common import image_uri, read_run, render, write_page
from clipguard.report.figures import thumbnail_uri
from clipguard.report.model_figures import candidate_bars
from clipguard.utils.io import read_json_object

__all__ = ["build_audit_report", "THUMBNAIL"]

THUMBNAIL = 64
"""Side of the trigger thumbnails in the candidates table (pixels)."""


def _candidates(run_dir: Path, verdict: dict[str, Any]) -> pd.DataFrame:
    """One row per candidate in file order (``number`` = the NN of ``triggers/NN_*.png``)."""
    path = run_dir / "candidates.csv"
    table = pd.read_csv(path, keep_default_na=False, dtype={"target": str}) if path.is_file() \
        else pd.DataFrame(verdict.get("candidates") or [])
    if table.empty or not {"target", "mask_l1", "anomaly_index"} <= set(table.columns):
        raise ConfigError(f"{run_dir}: no candidates (candidates.csv or verdict.json's candidates); rerun "
                          "`clipguard audit`")
    return table.assign(number=range(len(table)))


def _applied(pattern: Path, mask: Path, within: Path) -> str | None:
    """The trigger as it is stamped on a mid-grey image (pattern where the mask is on), as a data URI."""
    root = within.resolve()
    try:
        if not (pattern.resolve().is_relative_to(root) and mask.resolve().is_relative_to(root)):
            return None
        with Image.open(pattern) as p, Image.open(mask) as m:
            pat, alpha = p.convert("RGB"), m.convert("L").resize(p.size)
        grey = Image.new("RGB", pat.size, (128, 128, 128))
        return thumbnail_uri(Image.composite(pat, grey, alpha), size=max(pat.size))
    except (OSError, ValueError):
        return None


def _rows(table: pd.DataFrame, run_dir: Path) -> list[dict[str, Any]]:
    """The candidates as template rows, highest anomaly index first, each with its trigger thumbnail."""
    rows = []
    for r in table.sort_values("anomaly_index", ascending=False, kind="stable").to_dict("records"):
        k = int(r["number"])
        rows.append({**r, "thumb": image_uri(run_dir / "triggers" / f"{k:02d}_trigger.png", run_dir, THUMBNAIL),
                     "mask_thumb": image_uri(run_dir / "triggers" / f"{k:02d}_mask.png", run_dir, THUMBNAIL)})
    return rows


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def build_audit_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the HTML report of the ``clipguard audit`` folder ``run_dir`` (see the module docstring).

    Args:
        run_dir: the ``--out`` folder of ``clipguard audit``.
        out: the HTML file (default ``run_dir/report.html``).

    Returns:
        The path of the page.

    Raises:
        ConfigError: ``run_dir`` lacks ``run.json`` / ``verdict.json`` or its candidates.
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    run = read_run(run_dir, "`clipguard audit`", ("audit",))
    verdict = read_json_object(run_dir / "verdict.json", "an audit verdict (verdict.json)", "rerun `clipguard audit`")
    table = _candidates(run_dir, verdict)
    closest = int(table["anomaly_index"].astype(float).idxmax())
    threshold = _finite(verdict.get("threshold"))
    trigger, mask = run_dir / str(verdict.get("trigger", "")), run_dir / str(verdict.get("mask", ""))
    page = render("audit.html.j2", title=f"clipguard audit report: {run_dir}", run=run, v=verdict,
                  n=len(table), rows=_rows(table, run_dir),
                  trigger=image_uri(trigger, run_dir) if verdict.get("trigger") else None,
                  mask=image_uri(mask, run_dir) if verdict.get("mask") else None,
                  applied=_applied(trigger, mask, run_dir) if verdict.get("trigger") and verdict.get("mask") else None,
                  bars=candidate_bars(table["target"].astype(str).tolist(), table["mask_l1"].astype(float).tolist(),
                                      table["anomaly_index"].astype(float).tolist(),
                                      threshold, closest))
    return write_page(Path(out) if out is not None else run_dir / "report.html", page, run_dir, t0)
