"""The tables of ``benchmarks/panel.py``: worst-case and mean detection over the learned cells.

Reads ``<work>/cells/*/result.json`` and the stored per-sample scores; fusion rules are evaluated on
the stored component scores with :func:`clipguard.detect.detectors.fused.fuse_components` (what the
``fused`` detector computes), so a rule can be compared without training again.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from _results import write_csv

from clipguard.detect.detectors import DETECTORS
from clipguard.detect.detectors.fused import DEFAULT_IMAGE, DEFAULT_SIGNALS, FUSE_METHODS, fuse_components
from clipguard.detect.metrics import detection_metrics

IMAGE_ONLY = [n for n in DETECTORS.names() if DETECTORS.get(n).requires == frozenset({"image"}) and n != "fused"]
"""Detectors that need image embeddings only: the single signals of the image-only panel."""
NO_CAPTIONS = {*IMAGE_ONLY, "learning_speed", "learning_speed[fast]", "learning_speed[slow]", "perturbation"}
"""Rows of the image-only tables: the image detectors, the training-dynamics signal (which needs the
training record, not the captions) and the perturbation probe (``panel.py --probe``: the model and the images)."""
FIELDS = ["world", "attack", "rate", "n_poisoned", "epochs", "clean_accuracy", "attack_success_rate", "learned",
          "mode", "detector", "captions", "auroc", "auprc", "tpr_at_1pct_fpr", "seed"]


def fusion_variants() -> dict[str, tuple[dict, bool]]:
    """Label -> (fuse_components keyword arguments, uses captions)."""
    out = {}
    for method in FUSE_METHODS:
        out[f"fused[{method}]"] = ({"method": method, "image": DEFAULT_IMAGE, "signals": DEFAULT_SIGNALS}, True)
        out[f"fused[{method},image-only]"] = ({"method": method, "image": DEFAULT_IMAGE, "signals": ()}, False)
    return out


def cell_rows(cell: Path, rec: dict) -> list[dict]:
    """Every (mode, detector, captions) metric of one cell: the scan's detectors, learning_speed and the
    fusion variants recomputed from the stored component scores."""
    rows = []
    head = {k: rec[k] for k in ("world", "attack", "rate", "n_poisoned", "epochs", "clean_accuracy",
                                "attack_success_rate", "learned", "seed")}
    for path in sorted(cell.glob("scores_*.parquet")):
        frame = pd.read_parquet(path)
        mode = path.stem.removeprefix("scores_")
        y = frame["poisoned"].to_numpy(bool)
        cols = {c.removesuffix("_score"): frame[c].to_numpy(np.float64) for c in frame.columns if c.endswith("_score")}
        if "learning_speed_raw" in frame.columns:
            speed = frame["learning_speed_raw"].to_numpy(np.float64)
            cols["learning_speed[fast]"], cols["learning_speed[slow]"] = speed, 1.0 - speed
        for det, s in cols.items():
            rows.append({**head, "mode": mode, "detector": det, "captions": det not in NO_CAPTIONS,
                         **detection_metrics(y, s)})
        for label, (kw, captions) in fusion_variants().items():
            parts = {n: cols[n] for n in (*kw["image"], *kw["signals"]) if n in cols}
            rows.append({**head, "mode": mode, "detector": label, "captions": captions,
                         **detection_metrics(y, fuse_components(parts, method=kw["method"]))})
    return rows


def load(work: Path) -> pd.DataFrame:
    rows = []
    for res in sorted((work / "cells").glob("*/result.json")):
        rows += cell_rows(res.parent, json.loads(res.read_text()))
    if not rows:
        raise SystemExit(f"no finished cell under {work}/cells")
    return pd.DataFrame(rows)


def worst_table(df: pd.DataFrame, captions: bool) -> list[str]:
    """Markdown rows: per detector and mode, worst / mean AUROC and AUPRC over the learned cells."""
    sub = df[df["learned"] & (df["captions"] <= captions)]
    if sub.empty:
        return ["(no learned cell)"]
    g = sub.groupby(["detector", "mode"]).agg(worst_auroc=("auroc", "min"), mean_auroc=("auroc", "mean"),
                                              worst_auprc=("auprc", "min"), mean_auprc=("auprc", "mean"),
                                              cells=("auroc", "size")).reset_index()
    g = g.sort_values("worst_auroc", ascending=False)
    lines = ["| detector | mode | worst AUROC | mean AUROC | worst AUPRC | mean AUPRC | cells |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.detector} | {r.mode} | {r.worst_auroc:.4f} | {r.mean_auroc:.4f} | {r.worst_auprc:.4f} | "
              f"{r.mean_auprc:.4f} | {r.cells} |" for r in g.itertuples()]
    return lines


def cell_table(df: pd.DataFrame, default: str = "fisher") -> list[str]:
    """Per cell (mode auto): CA, ASR, the default with and without captions, the best image-only single
    signal and the gap."""
    lines = ["| world | attack | rate | poisoned | CA | ASR | default (captions) | default image-only | "
             "best image-only signal | gap | DAO per-batch |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = ["world", "attack", "rate"]
    for (world, attack, rate), c in df.groupby(keys, sort=False):
        auto = c[c["mode"] == "auto"].set_index("detector")
        single = auto.loc[[d for d in IMAGE_ONLY if d in auto.index and d != "fused"]]
        best = single["auroc"].idxmax()
        dflt, img = auto.loc[f"fused[{default}]", "auroc"], auto.loc[f"fused[{default},image-only]", "auroc"]
        batch = c[c["mode"] == "batch"].set_index("detector")
        r = c.iloc[0]
        learned = "" if r["learned"] else " (not learned)"
        lines.append(f"| {world} | {attack} | {rate:.1%} | {r['n_poisoned']} | {r['clean_accuracy']:.3f} | "
                     f"{r['attack_success_rate']:.3f}{learned} | {dflt:.4f} | {img:.4f} | "
                     f"{single.loc[best, 'auroc']:.4f} ({best}) | {min(dflt, img) - single.loc[best, 'auroc']:+.4f} | "
                     f"{batch.loc['dao', 'auroc'] if 'dao' in batch.index else np.nan:.4f} |")
    return lines


def fusion_table(df: pd.DataFrame) -> list[str]:
    """Markdown rows: every fusion rule (method), with captions and image-only, worst / mean AUROC over the
    learned cells in mode auto, and the worst gap to the best image-only single signal of the cell; and the
    probe's ``perturbation`` (the default ranking of a scan with a stability record) when the run has it."""
    auto = df[(df["mode"] == "auto") & df["learned"]]
    if auto.empty:
        return ["(no learned cell)"]
    keys = ["world", "attack", "rate"]
    best = auto[auto["detector"].isin(IMAGE_ONLY)].groupby(keys)["auroc"].max().rename("best")
    lines = ["| rule | captions | worst AUROC | mean AUROC | worst AUPRC | worst gap to best image-only signal | "
             "mean gap |", "|---|---|---|---|---|---|---|"]
    probed = ["perturbation"] if (auto["detector"] == "perturbation").any() else []  # the default with a record
    for label in [*fusion_variants(), *probed]:
        sub = auto[auto["detector"] == label].set_index(keys).join(best)
        gap = sub["auroc"] - sub["best"]
        lines.append(f"| {label} | {'yes' if sub['captions'].iloc[0] else 'no'} | {sub['auroc'].min():.4f} | "
                     f"{sub['auroc'].mean():.4f} | {sub['auprc'].min():.4f} | {gap.min():+.4f} | {gap.mean():+.4f} |")
    return lines


def paper_table(df: pd.DataFrame) -> list[str]:
    """The DAO paper's setting: DAO with the per-batch reference, rare target, rates <= 0.1 %; beside it the
    default ``fused`` (auto) and the best detector of the cell (any mode)."""
    cells = df[(df["world"] == "longtail-rare") & (df["rate"] <= 0.001)]
    if cells.empty:
        return ["(no cell of the paper's setting)"]
    lines = ["| attack | rate | poisoned | CA | ASR | DAO per-batch AUROC / AUPRC | fused auto | best (mode) |",
             "|---|---|---|---|---|---|---|---|"]
    for (attack, rate), c in cells.groupby(["attack", "rate"], sort=False):
        r = c.iloc[0]
        dao = c[(c["detector"] == "dao") & (c["mode"] == "batch")].iloc[0]
        fused = c[(c["detector"] == "fused") & (c["mode"] == "auto")].iloc[0]
        best = c.loc[c["auroc"].idxmax()]
        lines.append(f"| {attack} | {rate:.2%} | {r['n_poisoned']} | {r['clean_accuracy']:.3f} | "
                     f"{r['attack_success_rate']:.3f}{'' if r['learned'] else ' (not learned)'} | "
                     f"{dao['auroc']:.4f} / {dao['auprc']:.4f} | {fused['auroc']:.4f} | "
                     f"{best['auroc']:.4f} ({best['detector']}, {best['mode']}) |")
    return lines


def report(a: argparse.Namespace) -> Path:
    """Write panel.csv and panel.md (preset-suffixed) from the cells under ``a.work``; returns the .md path."""
    df = load(Path(a.work))
    out = Path(a.out)
    stem = f"panel_{a.preset}"
    write_csv(out / f"{stem}.csv", FIELDS, df[FIELDS].to_dict("records"))
    n_learned = df.drop_duplicates(["world", "attack", "rate"])["learned"].sum()
    lines = [f"# Evaluation panel, preset {a.preset} ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"{df[['world', 'attack', 'rate']].drop_duplicates().shape[0]} cells, {n_learned} learned "
             f"(ASR >= {a.learned}); seed {a.seed}, k = {a.k}. Reference modes: "
             + ", ".join(sorted(df["mode"].unique())) + " (batch = the paper's per-batch reference; auto = what "
             "`clipguard scan` uses by default, the global exact kNN at these sizes).", "",
             "## Worst case over the learned cells, with captions", "", *worst_table(df, True), "",
             "## Worst case over the learned cells, image-only", "", *worst_table(df, False), "",
             "## Fusion rules (mode auto, learned cells)", "", *fusion_table(df), "",
             "## The DAO paper's setting (long-tailed world, rare target, <= 0.1 %)", "", *paper_table(df), "",
             "## Per cell (mode auto)", "", *cell_table(df), ""]
    md = out / f"{stem}.md"
    md.write_text("\n".join(lines))
    return md
