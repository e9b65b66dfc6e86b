"""The tables of a bench (``clipguard bench``'s ``bench.csv``): methods x cells, with the worst case and the
mean over the cells whose backdoor was learned. One source for ``bench.md`` and the bench report page.

``bench.csv`` has one row per (cell, stage, method); a cell is (world, attack, rate). Stages: ``model``
(``ca``, ``asr``, ``learned``), ``detection`` (``auroc``, ``auprc``, ``tpr_at_1pct_fpr``), ``defence``
(``ca``, ``asr`` after, ``ca_change`` in points).

Example::

    t = bench_tables(pd.read_csv("bench/bench.csv"))
    t.detection["auroc"]          # DataFrame: detectors x (cells..., "worst", "mean")
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

__all__ = ["BenchTables", "bench_tables", "cell_label"]

#: per value: which end is the worst (AUROC: the lowest; ASR left after a defence: the highest)
WORST = {"auroc": "min", "auprc": "min", "tpr_at_1pct_fpr": "min", "asr": "max", "ca_change": "min"}


def cell_label(world: str, attack: str, rate: float) -> str:
    """A cell's name, e.g. ``shapes_badnets_0.05`` (also its folder under ``bench/cells/``)."""
    return f"{world}_{attack}_{rate:g}"


@dataclass
class BenchTables:
    """``models``: ("CA", "ASR") x cells; ``detection[value]`` and ``defence[value]``: methods x (cells,
    ``worst``, ``mean``); ``learned``: the cells the summaries run over; ``cells``: all, in run order."""

    cells: list[str]
    learned: list[str]
    models: pd.DataFrame
    detection: dict[str, pd.DataFrame] = field(default_factory=dict)
    defence: dict[str, pd.DataFrame] = field(default_factory=dict)


def _pivot(table: pd.DataFrame, stage: str, value: str, cells: list[str]) -> pd.DataFrame:
    """methods x cells of ``value`` for one stage (cells in run order; a missing one is NaN)."""
    df = table[table["stage"] == stage]
    df = df.assign(cell=[cell_label(w, a, r) for w, a, r in zip(df["world"], df["attack"], df["rate"])])
    wide = df.pivot_table(index="method", columns="cell", values=value, sort=False, dropna=False)
    return wide.reindex(columns=[c for c in cells if c in wide.columns])


def _summarised(wide: pd.DataFrame, over: list[str], worst: str) -> pd.DataFrame:
    """``wide`` plus ``worst`` (min or max) and ``mean`` over the cells ``over`` (all when none is learned)."""
    sub = wide[[c for c in over if c in wide.columns] or list(wide.columns)]
    return wide.assign(worst=sub.min(axis=1) if worst == "min" else sub.max(axis=1), mean=sub.mean(axis=1))


def bench_tables(table: pd.DataFrame) -> BenchTables:
    """The tables of a ``bench.csv`` (see the module docstring)."""
    models = table[table["stage"] == "model"]
    cells = [cell_label(w, a, r) for w, a, r in zip(models["world"], models["attack"], models["rate"])]
    learned = [c for c, ok in zip(cells, models["learned"]) if bool(ok)]
    model_table = pd.DataFrame({"CA": models["ca"].to_numpy(), "ASR": models["asr"].to_numpy()}, index=cells).T
    out = BenchTables(cells, learned, model_table)
    for value in ("auroc", "auprc", "tpr_at_1pct_fpr"):
        if (table["stage"] == "detection").any() and value in table.columns:
            out.detection[value] = _summarised(_pivot(table, "detection", value, cells), learned, WORST[value])
    for value in ("asr", "ca_change"):
        if (table["stage"] == "defence").any() and value in table.columns:
            out.defence[value] = _summarised(_pivot(table, "defence", value, cells), learned, WORST[value])
    return out
