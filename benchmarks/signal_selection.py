"""Can a scan pick its informative signals without labels? Two unsupervised criteria, measured (issue 9).

The oracle ceiling (``fusion_min_p.py``) says what a perfect pick of ONE signal, in either orientation, would
reach on the panel. This script measures two label-free ways of making that pick, on the stored scores and
embeddings of panel cells (``<cell>/scores_auto.parquet`` with ``poisoned``, ``<cell>/emb``, ``result.json``):

1. **Coherence of the top set.** Poison shares a trigger and a target caption, so the rows a good signal
   ranks highest should form a coherent group. For each signal (every ``<detector>_score`` but ``fused``) and
   each orientation, its top ``--top`` share of rows is described by: ``img_t`` / ``txt_t``, the norm of the
   mean unit image / caption embedding of the set (1 = identical rows); ``knn_i`` / ``knn_t``, the share of
   the set's 10 image / caption neighbours that are in the set, over the share expected at random. The pick
   is the (signal, orientation) with the largest value; ``frac_p``, the poisoned share of the top set, is the
   label-using reference pick.
2. **Tail excess per signal.** :func:`clipguard.detect.share.estimate_share` (envelope null, no bootstrap) on
   each signal: a signal whose upper tail holds a significant excess over the clean envelope (estimate > 0)
   passes the gate. An informative signal should pass it, an inverted or noise one should not.

Prints, for 1, the worst / mean AUROC of each pick over the learned cells (ASR >= 0.8) and, for 2, per
signal: how often it passes and the mean / worst AUROC of the signal where it passes and where it does not.

Usage::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/signal_selection.py --cells /tmp/panel16/cells runs/clean_model_scan
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors

from clipguard.detect.metrics import detection_metrics
from clipguard.detect.share import estimate_share
from clipguard.io.reader import load_embedding_folder

LEARNED_ASR = 0.8
STATS = ("img_t", "txt_t", "knn_i", "knn_t", "frac_p")


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def coherence(top: np.ndarray, x: np.ndarray, t: np.ndarray, nn_i: np.ndarray, nn_t: np.ndarray) -> dict:
    """The coherence statistics (module docstring) of the row indices ``top`` of (N, D) unit embeddings."""
    n, m = len(x), len(top)
    inset = np.zeros(n, bool)
    inset[top] = True
    return {"img_t": float(np.linalg.norm(x[top].mean(0))), "txt_t": float(np.linalg.norm(t[top].mean(0))),
            "knn_i": float(inset[nn_i[top]].mean() / (m / n)), "knn_t": float(inset[nn_t[top]].mean() / (m / n))}


def cell_rows(cell: Path, top_share: float) -> tuple[list[dict], list[dict]]:
    """Per (signal, orientation): its AUROC and coherence; per signal: AUROC and the tail-excess gate."""
    s = pd.read_parquet(cell / "scores_auto.parquet")
    emb = load_embedding_folder(cell / "emb")
    if not (emb.metadata["id"].astype(str).to_numpy() == s["id"].astype(str).to_numpy()).all():
        raise SystemExit(f"{cell}: the embeddings and the scores are not in the same row order")
    x, t = unit(emb.image), unit(emb.text)
    y = s["poisoned"].to_numpy(bool)
    nn_i = NearestNeighbors(n_neighbors=11).fit(x).kneighbors(x, return_distance=False)[:, 1:]
    nn_t = NearestNeighbors(n_neighbors=11).fit(t).kneighbors(t, return_distance=False)[:, 1:]
    m = max(10, int(round(top_share * len(y))))
    picks, gates = [], []
    for col in [c for c in s.columns if c.endswith("_score") and c != "fused_score"]:
        v = s[col].to_numpy(np.float64)
        ok = np.isfinite(v)
        v = np.where(ok, v, np.nanmedian(v[ok]))
        auroc = detection_metrics(y, v)["auroc"]
        for sign in (1, -1):
            top = np.argsort(-sign * v, kind="stable")[:m]
            picks.append({"cell": cell.name, "signal": col[:-6], "sign": sign,
                          "auroc": auroc if sign == 1 else 1 - auroc, "frac_p": float(y[top].mean()),
                          **coherence(top, x, t, nn_i, nn_t)})
        est = estimate_share(s[col].to_numpy(np.float64)[ok], n_boot=0)
        gates.append({"cell": cell.name, "signal": col[:-6], "auroc": auroc, "passes": est.share > 0})
    return picks, gates


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cells", nargs="+", required=True, help="folders of panel cells")
    p.add_argument("--top", type=float, default=0.01, help="share of rows in a signal's top set")
    a = p.parse_args(argv)
    picks, gates = [], []
    for folder in map(Path, a.cells):
        for res in sorted(folder.glob("*/result.json")):
            if json.loads(res.read_text()).get("attack_success_rate", 0) >= LEARNED_ASR:
                pk, gt = cell_rows(res.parent, a.top)
                picks += [dict(r, source=folder.name) for r in pk]
                gates += [dict(r, source=folder.name) for r in gt]
    pk, gt = pd.DataFrame(picks), pd.DataFrame(gates)
    for source, part in pk.groupby("source"):
        chosen = {stat: part.loc[part.groupby("cell")[stat].idxmax()] for stat in STATS}
        print(f"{source}: {part['cell'].nunique()} learned cells; AUROC of the (signal, orientation) each criterion "
              f"picks, worst / mean (frac_p uses the labels)")
        for stat, rows in chosen.items():
            print(f"  {stat:7s} {rows['auroc'].min():.3f} / {rows['auroc'].mean():.3f}  picks: "
                  f"{rows['signal'].value_counts().to_dict()}")
    print("\nTail-excess gate per signal (all learned cells): share passing; AUROC mean / worst where it passes "
          "| where it does not")
    for name, g in gt.groupby("signal"):
        on, off = g[g["passes"]], g[~g["passes"]]
        fmt = lambda d: f"{d['auroc'].mean():.3f} / {d['auroc'].min():.3f}" if len(d) else "-"  # noqa: E731
        print(f"  {name:22s} {g['passes'].mean():.2f}  {fmt(on):15s} | {fmt(off)}")


if __name__ == "__main__":
    main()
