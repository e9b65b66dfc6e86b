"""The report of ``clipguard bench``: the backdoored models, detection AUROC as a heat map (detectors x
cells, worst case and mean beside), the defences' ASR before and after per cell, and what ran.

Reads ``bench.csv`` and ``run.json`` (written by :func:`clipguard.pipeline.bench.run_bench`); the tables
are :func:`~clipguard.report.bench_tables.bench_tables`, the same as ``bench.md``.

Example::

    from clipguard.report import build_bench_report

    build_bench_report("bench")        # -> bench/report.html
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from clipguard.errors import ConfigError  # noqa: E402
from clipguard.report.bench_tables import BenchTables, bench_tables  # noqa: E402
from clipguard.report.common import num, read_run, render, write_page  # noqa: E402
from clipguard.report.figures import png_uri  # noqa: E402

__all__ = ["build_bench_report", "metric_heatmap", "defence_bars"]


def metric_heatmap(wide: pd.DataFrame, metric: str) -> str:
    """Methods x (cells, worst, mean) as a heat map with the value in each square (0 red .. 1 green).

    Args:
        wide: rows = detectors, columns = cells then ``worst`` and ``mean``; values in [0, 1], higher = better.
        metric: the value's name for the colour bar (e.g. "AUROC").
    """
    values = wide.to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.95 * values.shape[1], 0.9 + 0.32 * values.shape[0]))
    im = ax.imshow(np.ma.masked_invalid(values), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, "-" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(values.shape[1]), list(map(str, wide.columns)), fontsize=7, rotation=30, ha="right")
    ax.set_yticks(range(values.shape[0]), list(wide.index), fontsize=7)
    if "worst" in wide.columns:
        ax.axvline(list(wide.columns).index("worst") - 0.5, color="black", lw=1.5)
    fig.colorbar(im, ax=ax, label=f"{metric} (higher = better; 0.5 = chance)", shrink=0.8)
    ax.set_title(f"{metric} per detector and cell (world, attack, rate)", fontsize=9)
    fig.tight_layout()
    return png_uri(fig)


def defence_bars(models: pd.DataFrame, asr_after: pd.DataFrame) -> str:
    """Per cell: the backdoored model's ASR (grey) and each defence's ASR after, in percent (lower = better).

    Args:
        models: ("CA", "ASR") x cells (:attr:`BenchTables.models`).
        asr_after: defences x (cells, worst, mean) (:attr:`BenchTables.defence` ``["asr"]``).
    """
    cells = [c for c in asr_after.columns if c not in ("worst", "mean")]
    x = np.arange(len(cells))
    width = 0.8 / (1 + len(asr_after.index))
    fig, ax = plt.subplots(figsize=(1.5 + 1.6 * len(cells), 3.4))
    series = [("no defence", models.loc["ASR", cells].to_numpy(float), "tab:grey")]
    colours = plt.get_cmap("tab10").colors
    series += [(d, asr_after.loc[d, cells].to_numpy(float), colours[i % 10]) for i, d in enumerate(asr_after.index)]
    for k, (name, vals, colour) in enumerate(series):
        bars = ax.bar(x + (k - (len(series) - 1) / 2) * width, 100 * np.nan_to_num(vals), width, color=colour, label=name)
        for b, v in zip(bars, vals):
            if np.isfinite(v):
                ax.annotate(f"{100 * v:.0f}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                            va="bottom", fontsize=6, xytext=(0, 1), textcoords="offset points")
    ax.set_xticks(x, [c.replace("_", "\n", 1) for c in cells], fontsize=7)
    ax.set_ylabel("attack success rate (%)")
    ax.set_ylim(0, 115)
    ax.set_title("ASR without and with each defence (lower = better)", fontsize=9)
    ax.legend(fontsize=7, ncol=len(series), loc="upper center")
    fig.tight_layout()
    return png_uri(fig)


def _html_table(wide: pd.DataFrame, fmt: str) -> dict[str, Any]:
    """Columns and formatted rows of a table for the template."""
    return {"columns": list(map(str, wide.columns)),
            "rows": [(str(i), [num(v, fmt) if pd.notna(v) else "-" for v in row]) for i, row in
                     zip(wide.index, wide.to_numpy())]}


def _sections(t: BenchTables) -> dict[str, Any]:
    out: dict[str, Any] = {"models": _html_table(t.models, ".3f")}
    if "auroc" in t.detection:
        out["auroc_map"] = metric_heatmap(t.detection["auroc"], "AUROC")
        out["detection"] = {k: _html_table(v, ".3f") for k, v in t.detection.items()}
    if "asr" in t.defence:
        out["defence_bars"] = defence_bars(t.models, t.defence["asr"])
        out["defence_asr"] = _html_table(t.defence["asr"], ".3f")
        out["defence_ca"] = _html_table(t.defence["ca_change"], "+.1f")
    return out


def build_bench_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the HTML report of the ``clipguard bench`` run in ``run_dir`` (``bench.csv`` + ``run.json``).

    Returns:
        The path of the page (default ``run_dir/report.html``).

    Raises:
        ConfigError: ``run_dir`` holds no bench run, or its ``bench.csv`` is missing.
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    run = read_run(run_dir, "`clipguard bench`", ("bench",))
    csv = run_dir / "bench.csv"
    if not csv.is_file():
        raise ConfigError(f"{run_dir}: no bench.csv; rerun `clipguard bench --out {run_dir}` (finished cells are kept)")
    table = pd.read_csv(csv)
    preset = run["config"].get("preset") or {}
    page = render("bench.html.j2", title=f"clipguard bench report: {run_dir}", run=run, preset=preset,
                  tables=bench_tables(table) if not table.empty else None,
                  sections=_sections(bench_tables(table)) if not table.empty else {},
                  failed=run.get("failed_cells") or {})
    return write_page(Path(out) if out is not None else run_dir / "report.html", page, run_dir, t0)
