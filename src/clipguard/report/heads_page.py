"""The reports of ``clipguard heads analyze | repair | filter`` (one builder, the page follows ``run.json``'s
``command``).

* analyze (:func:`clipguard.pipeline.heads.heads_analyze`): the infection heat maps
  (``heads_infection.png``, ``mlps_infection.png``) inlined, the heads most infected by the trigger
  (``heads.csv``), the input filter's quality (``run.json["filter"]``), per-layer changes, the profile.
* repair (:func:`~clipguard.pipeline.heads.heads_repair`, ``run.json`` in the repaired model folder): CA /
  ASR before and after, the MLP blocks chosen and the accuracy of every choice tried, the profile.
* filter (:func:`~clipguard.pipeline.heads.heads_filter`): counts, detection metrics with ground truth,
  the score histogram and the top suspects of ``scores.parquet``.

Example::

    from clipguard.report import build_heads_report

    build_heads_report("heads_out", "heads_out/report.html")
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pandas as pd

from clipguard.report.before_after import before_after
from clipguard.report.common import image_uri, num, pct, read_run, render, write_page
from clipguard.report.figures import score_histograms

__all__ = ["build_heads_report", "HEADS_COMMANDS", "FILTER_FIELDS", "TOP_HEADS", "TOP_INPUTS"]

HEADS_COMMANDS = ("heads analyze", "heads repair", "heads filter")
"""The ``run.json`` commands this page reads."""

TOP_HEADS = 12
"""Heads listed in the "most infected" table."""

TOP_INPUTS = 30
"""Inputs listed in the filter's top-suspects table."""

FILTER_FIELDS: list[tuple[str, str, str]] = [
    ("auroc_count", "AUROC, infected-head count", "probability that a triggered test image has more infected heads "
                                                  "than a clean one (0.5 = chance, 1 = perfect)"),
    ("auroc_score", "AUROC, tie-broken score", "the same for the count with ties broken by how far below eps"),
    ("zeta", "zeta (count rule)", "an input is rejected when more than zeta heads are infected (calibrated on clean "
                                  "images at the filter FPR)"),
    ("fpr_at_zeta", "clean rejected, count rule", "share of the clean test images rejected (false positives)"),
    ("tpr_at_zeta", "triggered rejected, count rule", "share of the triggered test images rejected (detections)"),
    ("zeta_score", "zeta_score (score rule)", "an input is rejected when its tie-broken score exceeds this"),
    ("fpr_at_zeta_score", "clean rejected, score rule", "share of the clean test images rejected"),
    ("tpr_at_zeta_score", "triggered rejected, score rule", "share of the triggered test images rejected"),
    ("mean_infected_clean", "mean infected heads, clean", "infected heads per clean test image, on average"),
    ("mean_infected_triggered", "mean infected heads, triggered",
     "infected heads per triggered test image, on average"),
]
"""(key of ``run.json["filter"]``, label, meaning) of the filter quality table."""

_SHARES = {"fpr_at_zeta", "tpr_at_zeta", "fpr_at_zeta_score", "tpr_at_zeta_score"}


def _filter_rows(summary: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    """(label, value, meaning) of the filter summary's entries."""
    if not isinstance(summary, dict):
        return []
    return [(label, pct(summary.get(key)) if key in _SHARES else num(summary.get(key)), meaning)
            for key, label, meaning in FILTER_FIELDS if key in summary]


def _top_heads(run_dir: Path) -> tuple[list[dict[str, Any]], bool]:
    """The heads of ``heads.csv`` most infected on triggered inputs (rate increase over clean), or, without
    triggered inputs, most often flagged on clean ones; and whether triggered rates exist."""
    path = run_dir / "heads.csv"
    if not path.is_file():
        return [], False
    heads = pd.read_csv(path)
    if "triggered_rate" in heads.columns and "clean_rate" in heads.columns:
        heads["increase"] = heads["triggered_rate"] - heads["clean_rate"]
        top = heads.sort_values(["increase", "triggered_rate"], ascending=False).head(TOP_HEADS)
        return top.to_dict("records"), True
    if "clean_rate" in heads.columns:
        return heads.sort_values("clean_rate", ascending=False).head(TOP_HEADS).to_dict("records"), False
    return [], False


def _layers(run: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per layer of ``run.json["layers"]`` (rate increases, triggered minus clean)."""
    layers = run.get("layers") if isinstance(run.get("layers"), dict) else {}
    keys = ("head_rate_increase_per_layer", "max_head_rate_increase_per_layer", "mlp_rate_increase_per_layer")
    cols = [layers.get(k) or [] for k in keys]
    return [{"layer": i, **{k: c[i] if i < len(c) else None for k, c in zip(keys, cols)}}
            for i in range(max((len(c) for c in cols), default=0))]


def _optional_image(path: Path, run_dir: Path) -> str | None:
    """``path`` inlined when it exists (heat maps exist only when test images were given)."""
    return image_uri(path, run_dir) if path.is_file() else None


def _analyze(run_dir: Path, run: dict[str, Any]) -> dict[str, Any]:
    heads, triggered = _top_heads(run_dir)
    return {"heads_map": _optional_image(run_dir / "heads_infection.png", run_dir),
            "mlps_map": _optional_image(run_dir / "mlps_infection.png", run_dir), "top_heads": heads,
            "triggered": triggered, "filter_rows": _filter_rows(run.get("filter")),
            "layers": _layers(run)}


def _filter(run_dir: Path, run: dict[str, Any]) -> dict[str, Any]:
    path = run_dir / "scores.parquet"
    if not path.is_file():
        return {"histogram": None, "top": []}
    table = pd.read_parquet(path)
    poisoned = table["poisoned"].to_numpy(bool) if "poisoned" in table.columns else None
    top = table.sort_values("heads_rank").head(TOP_INPUTS).to_dict("records")
    return {"histogram": score_histograms({"heads_score": table["heads_score"].to_numpy()}, poisoned), "top": top,
            "has_truth": poisoned is not None}


def build_heads_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the HTML report of a ``clipguard heads analyze | repair | filter`` folder (see the module docstring).

    Args:
        run_dir: the ``--out`` folder of the sub-command (the repaired model folder for ``repair``).
        out: the HTML file (default ``run_dir/report.html``).

    Returns:
        The path of the page.

    Raises:
        ConfigError: ``run_dir`` holds no ``run.json`` of a ``clipguard heads`` sub-command.
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    run = read_run(run_dir, "`clipguard heads analyze | repair | filter`", HEADS_COMMANDS)
    sub = run["command"].split()[-1]
    extra = {"analyze": _analyze, "filter": _filter}.get(sub, lambda d, r: {"table": before_after(r)})(run_dir, run)
    page = render(f"heads_{sub}.html.j2", title=f"clipguard heads {sub} report: {run_dir}", run=run, **extra)
    return write_page(Path(out) if out is not None else run_dir / "report.html", page, run_dir, t0)
