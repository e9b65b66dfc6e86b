"""Scan with the model that was poisoned, or with one that never saw the data? (issue 9)

The evaluation panel (``benchmarks/panel.py``) scans each cell with the embeddings of the model trained ON the
poisoned set -- the DAO paper's setting, where the backdoor shapes the embedding. A data team cleaning a set
before training has no such model: it embeds with a model trained elsewhere. This script re-scans the panel's
cells that way: each cell's poisoned training set is embedded with the panel's CLEAN model of the same world
(tiny-rn trained on the world's clean split, the one BadCLIP's patch is optimised against; it never saw the
poison) and scanned with ``clipguard.detect.run_scan`` at its defaults (every detector whose inputs exist).
Per cell and detector: AUROC and AUPRC under both models, and the best image-only single signal.

Input: ``--cells`` (``<cells>/<cell>/result.json``, ``data/attack.json``, ``scores_auto.parquet``) and
``--world-from`` (the panel work folder holding ``world_*/`` with ``clean_model`` and ``badclip/``). The panel
deletes a finished cell's poisoned images, so each cell's poisoned set is made again from the clean split with
the same attack and seed (checked: the same poisoned ids).
Each cell's result is kept in ``<work>/<cell>/result.json`` (with ``scores_auto.parquet``: the clean-model scan's
scores and ``poisoned``, so ``benchmarks/share_estimate.py --cells <work>`` reads the folder like panel cells)
and reused. Output: ``<out>/clean_model_scan.md``
and ``.csv``.

Usage::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/clean_model_scan.py --cells /tmp/panel16/cells \\
        --world-from /tmp/panel16 --threads 2
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from _results import limit_threads, write_csv
from panel import repoison_cell, world_dir
from panel_report import IMAGE_ONLY

from clipguard.data.manifest import read_manifest
from clipguard.detect import run_scan
from clipguard.detect.metrics import detection_metrics
from clipguard.embed import embed_dataset
from clipguard.models import load_model

ROOT = Path(__file__).resolve().parents[1]
LEARNED_ASR = 0.8


def metrics_of(scores: pd.DataFrame, y: np.ndarray) -> dict[str, dict[str, float]]:
    """``{detector: {"auroc", "auprc"}}`` of every ``<detector>_score`` column (NaN rows count as least suspicious)."""
    out = {}
    for col in (c for c in scores.columns if c.endswith("_score")):
        s = scores[col].to_numpy(np.float64)
        if np.isfinite(s).sum() < 2:
            continue
        m = detection_metrics(y, np.where(np.isfinite(s), s, np.nanmin(s[np.isfinite(s)]) - 1.0))
        out[col[: -len("_score")]] = {"auroc": m["auroc"], "auprc": m["auprc"]}
    return out


def scan_cell(cell: Path, a: argparse.Namespace) -> dict | None:
    """Embed the cell's poisoned set with its world's clean model, scan it; both models' metrics per detector."""
    res = json.loads((cell / "result.json").read_text())
    work = Path(a.work) / cell.name
    done = work / "result.json"
    if done.is_file() and (work / "scores_auto.parquet").is_file():
        return json.loads(done.read_text())
    t = time.perf_counter()
    # the panel deletes a finished cell's poisoned images: poison the clean split again (same attack, seed)
    again, _, wa = repoison_cell(cell, work / "data", a.world_from)
    bundle = load_model(world_dir(wa, res["world"]) / "clean_model", device=a.device)
    manifest = read_manifest(again.manifest_path)
    embed_dataset(bundle, manifest, work / "emb", progress=False, device=a.device)
    scan = run_scan(work / "emb", work / "scan", k=a.k, seed=a.seed, device=a.device)
    truth = manifest.df.set_index(manifest.df["id"].astype(str))["poisoned"].astype(bool)
    y = truth.loc[scan.scores["id"].astype(str)].to_numpy()
    old = pd.read_parquet(cell / "scores_auto.parquet")
    frame = scan.scores[["id"] + [c for c in scan.scores.columns if c.endswith("_score")]].assign(poisoned=y)
    frame.to_parquet(work / "scores_auto.parquet", index=False)  # as a panel cell: share_estimate.py reads it
    row = {"cell": cell.name, "world": res["world"], "attack": res["attack"], "rate": res["rate"],
           "attack_success_rate": res.get("attack_success_rate"),
           "learned": bool(res.get("attack_success_rate", 0) >= LEARNED_ASR),
           "clean_model": metrics_of(scan.scores, y), "poisoned_model": metrics_of(old, old["poisoned"].to_numpy(bool)),
           "seconds": round(time.perf_counter() - t, 1)}
    work.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(row, indent=1))
    return row


def table_rows(rows: list[dict]) -> list[dict]:
    """One row per (cell, model, detector)."""
    out = []
    for r in rows:
        for model in ("poisoned_model", "clean_model"):
            for det, m in r[model].items():
                out.append({"cell": r["cell"], "world": r["world"], "attack": r["attack"], "rate": r["rate"],
                            "learned": r["learned"], "model": model, "detector": det, **m})
    return out


def summary(df: pd.DataFrame) -> list[str]:
    """Worst / mean AUROC over the learned cells per detector and model, and the best image-only signal."""
    learned = df[df["learned"]]
    lines = [f"Learned cells: {learned['cell'].nunique()}.", "",
             "| detector | poisoned model: worst / mean AUROC | clean model: worst / mean AUROC |", "|---|---|---|"]
    for det in sorted(learned["detector"].unique()):
        cells = [learned[(learned["detector"] == det) & (learned["model"] == m)]["auroc"] for m in
                 ("poisoned_model", "clean_model")]
        lines.append(f"| {det} | " + " | ".join(f"{c.min():.3f} / {c.mean():.3f}" if len(c) else "-" for c in cells)
                     + " |")
    best = learned[learned["detector"].isin(IMAGE_ONLY)].groupby(["model", "cell"])["auroc"].max()
    lines += ["", "Best image-only single signal per learned cell (oracle pick), worst / mean: " + "; ".join(
        f"{m} {best[m].min():.3f} / {best[m].mean():.3f}" for m in ("poisoned_model", "clean_model"))]
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cells", nargs="+", required=True)
    p.add_argument("--world-from", required=True, help="the panel work folder with world_*/clean_model")
    p.add_argument("--only", nargs="*", default=None, help="cell names to run (default: every finished cell)")
    p.add_argument("--work", default=str(ROOT / "runs" / "clean_model_scan"))
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = p.parse_args(argv)
    limit_threads(a.threads)
    rows = []
    for cells in map(Path, a.cells):
        for cell in sorted(c for c in cells.iterdir() if (c / "result.json").is_file()):
            if a.only and cell.name not in a.only:
                continue
            row = scan_cell(cell, a)
            rows.append(row)
            f = row["clean_model"].get("fused", {}).get("auroc", float("nan"))
            print(f"[{cell.name}] learned {row['learned']} fused: poisoned model "
                  f"{row['poisoned_model']['fused']['auroc']:.3f}, clean model {f:.3f} ({row['seconds']} s)", flush=True)
    df = pd.DataFrame(table_rows(rows))
    out = Path(a.out)
    write_csv(out / "clean_model_scan.csv", list(df.columns), df.to_dict("records"))
    per_cell = df.pivot_table(index=["cell", "learned"], columns=["model", "detector"], values="auroc")
    lines = ["# Scanning with a model that never saw the data (issue 9)", "",
             f"`python benchmarks/clean_model_scan.py {' '.join(sys.argv[1:] if argv is None else argv)}`", "",
             *summary(df), "",
             "## Fused and the caption/image signals per cell (AUROC)", "",
             "| cell | learned | fused: poisoned / clean model | clipscore | caption_dup | kdist | iforest |",
             "|---|---|---|---|---|---|---|"]
    for (cell, learned), r in per_cell.iterrows():
        def pair(det: str) -> str:
            return " / ".join(f"{r.get((m, det), float('nan')):.3f}" for m in ("poisoned_model", "clean_model"))
        lines.append(f"| {cell} | {'yes' if learned else 'no'} | {pair('fused')} | {pair('clipscore')} | "
                     f"{pair('caption_dup')} | {pair('kdist')} | {pair('iforest')} |")
    (out / "clean_model_scan.md").write_text("\n".join(lines) + "\n")
    print("\n".join(summary(df)))


if __name__ == "__main__":
    main()
