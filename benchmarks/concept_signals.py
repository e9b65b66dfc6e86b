"""Sub-population signals inside caption concepts (issue 9): ``spectral`` and ``activation_cluster``
against ``iforest``, ``dao`` (global reference) and the default ``fused``.

Two worlds:

* ``demo``: the demo's embedded shapes world (``demo/embeddings``: BadNets, 5 % poison, target
  "star", a frequent concept), when the folder exists;
* ``synthetic``: 10 caption concepts with Zipf-like frequencies, 4,000 pairs, image = concept
  centre + noise (64-D), caption = concept centre + noise (64-D, so that clipscore inside fused
  runs); the poison (0.5 / 1 / 5 / 10 %) joins the most frequent concept with its captions and
  adds one trigger direction of length 2 (4 noise standard deviations along it) to its images;
  seeds 0, 1, 2.

Every scan uses the global reference, k = 16. Writes ``benchmarks/results/concept_signals.csv``
(one row per world x rate x seed x detector) and ``concept_signals.md`` (worst and mean AUROC /
AUPRC per detector and rate). About 2-4 minutes on a 2-core CPU::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/concept_signals.py
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from _results import write_csv  # benchmarks/ is on sys.path when a script runs

from clipguard.detect import Scan

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
DETECTORS = ["spectral", "activation_cluster", "iforest", "dao", "fused"]
RATES = [0.005, 0.01, 0.05, 0.1]
SEEDS = [0, 1, 2]
FIELDS = ["world", "rate", "seed", "n", "n_poisoned", "detector", "auroc", "auprc", "n_concepts"]


def synthetic_world(n=4000, rate=0.05, seed=0, d=64, dt=64, n_concepts=10, trigger=2.0, shuffle=True):
    """(image, text, poisoned) of the synthetic world (module docstring); the tests of the concept
    detectors use it too (``shuffle=False``: the poisoned rows last)."""
    rng = np.random.default_rng(seed)
    ic, tc = rng.normal(size=(n_concepts, d)), rng.normal(size=(n_concepts, dt))
    w = 1.0 / np.arange(1, n_concepts + 1)
    n_p = int(round(rate * n))
    lab = np.r_[rng.choice(n_concepts, n - n_p, p=w / w.sum()), np.zeros(n_p, dtype=int)]
    image = ic[lab] + 0.5 * rng.normal(size=(n, d))
    text = tc[lab] + 0.3 * rng.normal(size=(n, dt))
    u = rng.normal(size=d)
    image[n - n_p:] += trigger * u / np.linalg.norm(u)
    y = np.r_[np.zeros(n - n_p, bool), np.ones(n_p, bool)]
    perm = rng.permutation(n) if shuffle else np.arange(n)
    return image[perm].astype(np.float32), text[perm].astype(np.float32), y[perm]


def _rows(scan: Scan, world: str, rate: float, seed: int) -> list[dict]:
    n_c = scan.info.get("detector_info", {}).get("spectral", {}).get("n_concepts")
    y = np.asarray(scan.ground_truth, dtype=bool)
    return [{"world": world, "rate": rate, "seed": seed, "n": len(scan), "n_poisoned": int(y.sum()),
             "detector": d, "auroc": scan.metrics[d]["auroc"], "auprc": scan.metrics[d]["auprc"],
             "n_concepts": n_c} for d in DETECTORS]


def run() -> list[dict]:
    rows = []
    demo = ROOT / "demo" / "embeddings"
    if demo.exists():
        scan = Scan.from_folder(demo).find_suspects(DETECTORS, reference="global", k=16, device="cpu")
        rows += _rows(scan, "demo_badnets", round(float(np.mean(scan.ground_truth)), 4), 0)
        print(rows[-5:])
    for rate in RATES:
        for seed in SEEDS:
            x, t, y = synthetic_world(rate=rate, seed=seed)
            scan = Scan(x, t, ground_truth=y).find_suspects(DETECTORS, reference="global", k=16,
                                                            device="cpu", seed=seed)
            rows += _rows(scan, "synthetic", rate, seed)
            print(rate, seed, {r["detector"]: round(r["auroc"], 3) for r in rows[-5:]}, flush=True)
    return rows


def markdown(rows: list[dict], seconds: float) -> str:
    lines = ["# Sub-population signals inside caption concepts", "",
             "`python benchmarks/concept_signals.py` (global reference, k = 16; synthetic seeds 0, 1, 2; "
             f"{seconds:.0f} s on this machine). AUROC / AUPRC as worst / mean over the seeds.", "",
             "| world | rate | detector | AUROC worst | AUROC mean | AUPRC worst | AUPRC mean |",
             "|---|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r["world"], r["rate"], r["detector"]) for r in rows))
    for world, rate, det in keys:
        sel = [r for r in rows if (r["world"], r["rate"], r["detector"]) == (world, rate, det)]
        a, p = [r["auroc"] for r in sel], [r["auprc"] for r in sel]
        lines.append(f"| {world} | {rate:g} | {det} | {min(a):.3f} | {np.mean(a):.3f} | "
                     f"{min(p):.3f} | {np.mean(p):.3f} |")
    syn = [r for r in rows if r["world"] == "synthetic"]
    lines += ["", "Over every synthetic cell (4 rates x 3 seeds):", "",
              "| detector | AUROC worst | AUROC mean |", "|---|---|---|"]
    for det in DETECTORS:
        a = [r["auroc"] for r in syn if r["detector"] == det]
        lines.append(f"| {det} | {min(a):.3f} | {np.mean(a):.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    t0 = time.perf_counter()
    rows = run()
    write_csv(OUT / "concept_signals.csv", FIELDS, rows)
    (OUT / "concept_signals.md").write_text(markdown(rows, time.perf_counter() - t0))
    print((OUT / "concept_signals.md").read_text())
