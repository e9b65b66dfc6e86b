"""Robust fusion (issue 9): ``fused`` with ``method="fisher"``, ``"folded"`` (every component two-sided) and
``"consensus"`` (two-sided, weighted by agreement with the other components) against the best single component.

Three kinds of sets, AUROC / AUPRC as worst and mean:

* ``columns``: synthetic score columns, n = 4,000, poison at 0.5 / 1 / 5 / 10 %, seeds 0-2: an
  informative column (clean N(0, 1), poison N(2.5, 1)), with or without an INVERTED column
  (poison N(-2.5, 1)) and a pure-noise column, Gaussian or log-normal (``exp(v / 2)``); the
  reference is the informative column;
* ``concept``: the synthetic embedding world of ``benchmarks/concept_signals.py`` (its generator
  is imported), same rates and seeds; the reference is the best of ``fused``'s components;
* ``demo``: ``demo/embeddings`` (BadNets, 5 %) when it exists.

Embedding sets are scanned with the global reference, k = 16. Writes
``benchmarks/results/fusion_robustness.csv`` and ``.md``. About 15 s on a 2-core CPU::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/fusion_robustness.py
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from _results import write_csv  # benchmarks/ is on sys.path when a script runs
from concept_signals import synthetic_world

from clipguard.detect import Scan, score_embeddings
from clipguard.detect.detectors.fused import ALREADY_TWO_SIDED, DEFAULT_TWO_SIDED, fold_two_sided, fuse_scores
from clipguard.detect.metrics import detection_metrics

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
METHODS = ["fisher", "folded", "consensus"]
COMPONENTS = ["dao", "density_anomaly", "clipscore", "caption_dup", "caption_disagreement"]
RATES = [0.005, 0.01, 0.05, 0.1]
SEEDS = [0, 1, 2]
FIELDS = ["kind", "set", "rate", "seed", "score", "auroc", "auprc"]


def score_columns(rate: float, seed: int, inverted: bool, noise: bool, lognormal: bool,
                  n: int = 4000, shift: float = 2.5) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``({name: (n,) column}, (n,) poisoned)`` of the synthetic score columns (module docstring)."""
    rng = np.random.default_rng(seed)
    y = np.zeros(n, bool)
    y[:int(round(rate * n))] = True
    f = (lambda v: np.exp(v / 2)) if lognormal else (lambda v: v)
    cols = {"informative": f(rng.normal(size=n) + shift * y)}
    if inverted:
        cols["inverted"] = f(rng.normal(size=n) - shift * y)
    if noise:
        cols["noise"] = f(rng.normal(size=n))
    return cols, y


def _rows(kind: str, name: str, rate: float, seed: int, scores: dict[str, np.ndarray], y: np.ndarray,
          reference: str | None) -> list[dict]:
    m = {k: detection_metrics(y, v) for k, v in scores.items()}
    comps = [k for k in m if k not in METHODS]
    best = reference or max(comps, key=lambda k: m[k]["auroc"])
    m["best_single"] = m[best]
    return [{"kind": kind, "set": name, "rate": rate, "seed": seed, "score": k,
             "auroc": m[k]["auroc"], "auprc": m[k]["auprc"]} for k in m]


def column_rows() -> list[dict]:
    rows = []
    for rate in RATES:
        for seed in SEEDS:
            for inv, noise in ((True, True), (True, False), (False, True), (False, False)):
                for logn in (False, True):
                    cols, y = score_columns(rate, seed, inv, noise, logn)
                    s = dict(cols, **{m: fuse_scores(cols, m) for m in METHODS})
                    name = f"inv{int(inv)}_noise{int(noise)}_{'lognormal' if logn else 'gaussian'}"
                    rows += _rows("columns", name, rate, seed, s, y, "informative")
    return rows


def embedding_scores(x, text=None, captions=None, seed=0, **kw) -> dict[str, np.ndarray]:
    """Component scores (caption_disagreement folded, as fused uses it) and every fusion of METHODS."""
    out = {}
    for m in METHODS:
        s, _ = score_embeddings(x, COMPONENTS + ["fused"], text=text, captions=captions, reference="global",
                                k=16, device="cpu", seed=seed, detector_params={"fused": {"method": m}}, **kw)
        out[m] = s.pop("fused")
    out.update({k: fold_two_sided(v) if k in DEFAULT_TWO_SIDED else v for k, v in s.items()})
    return out


def embedding_rows() -> list[dict]:
    rows = []
    demo = ROOT / "demo" / "embeddings"
    if demo.exists():
        y = None
        s = {}
        for m in METHODS:
            r = Scan.from_folder(demo).find_suspects(COMPONENTS + ["fused"], reference="global", k=16,
                                                     device="cpu", detector_params={"fused": {"method": m}})
            s[m] = r.scores["fused_score"].to_numpy()
            y = np.asarray(r.ground_truth, bool)
        s.update({k: r.scores[f"{k}_score"].to_numpy() for k in COMPONENTS})
        s["caption_disagreement"] = fold_two_sided(s["caption_disagreement"])
        rows += _rows("demo", "demo_badnets", round(float(y.mean()), 4), 0, s, y, None)
    for rate in RATES:
        for seed in SEEDS:
            x, t, y = synthetic_world(rate=rate, seed=seed)
            rows += _rows("concept", "synthetic", rate, seed, embedding_scores(x, t, seed=seed), y, None)
    return rows


def markdown(rows: list[dict], seconds: float) -> str:
    lines = ["# Robust fusion: `fused` methods " + ", ".join(f"`{m}`" for m in METHODS), "",
             f"`python benchmarks/fusion_robustness.py` ({seconds:.0f} s on this machine). Worst / mean over "
             "the cells of each kind; `best_single` = the informative column (columns) or the best "
             "component of `fused` in that cell (embedding sets: chosen with the labels, an oracle). "
             f"`folded` and `consensus` leave {', '.join(ALREADY_TWO_SIDED + DEFAULT_TWO_SIDED)} as they are "
             "(already two-sided).", "",
             "| kind | score | cells | AUROC worst | AUROC mean | AUPRC worst | AUPRC mean | worst AUROC gap to best_single |",
             "|---|---|---|---|---|---|---|---|"]
    for kind in dict.fromkeys(r["kind"] for r in rows):
        best = {(r["set"], r["rate"], r["seed"]): r["auroc"] for r in rows
                if r["kind"] == kind and r["score"] == "best_single"}
        for score in METHODS + ["best_single"]:
            sel = [r for r in rows if r["kind"] == kind and r["score"] == score]
            a, p = [r["auroc"] for r in sel], [r["auprc"] for r in sel]
            gap = min(r["auroc"] - best[(r["set"], r["rate"], r["seed"])] for r in sel)
            lines.append(f"| {kind} | {score} | {len(sel)} | {min(a):.3f} | {np.mean(a):.3f} | {min(p):.3f} | "
                         f"{np.mean(p):.3f} | {gap:+.3f} |")
    lines += ["", "Columns, by set (worst AUROC over rates and seeds):", "",
              "| set | " + " | ".join(METHODS) + " | informative |", "|---|" + "---|" * (len(METHODS) + 1)]
    for name in dict.fromkeys(r["set"] for r in rows if r["kind"] == "columns"):
        w = [min(r["auroc"] for r in rows if r["set"] == name and r["score"] == s) for s in (*METHODS, "informative")]
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in w) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    t0 = time.perf_counter()
    rows = column_rows() + embedding_rows()
    write_csv(OUT / "fusion_robustness.csv", FIELDS, rows)
    (OUT / "fusion_robustness.md").write_text(markdown(rows, time.perf_counter() - t0))
    print((OUT / "fusion_robustness.md").read_text())
