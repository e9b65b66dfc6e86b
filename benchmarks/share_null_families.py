"""Which null should the share estimate extrapolate? (issue 16, a measured negative result)

:func:`clipguard.detect.share.estimate_share` fits a Gamma null to the 55-90 % quantiles of the default
detector's scores and counts the rows in excess of it in the upper tail. On the evaluation panel its
estimate is often 0 where the scan separates the poison almost perfectly (long-tailed world, frequent
target, 0.5-1 %, AUROC 0.99-0.999), and it reads a false 1.8 % on a 1M-row clean set. Both are failures of
the null's TAIL: the Gamma's tail is about twice too heavy on the first and up to 13x too light on the
second. This script measures two alternatives against it, point estimates only (no bootstrap), on the same
score sets:

- ``gamma``: the product's estimator (``estimate_share(scores, n_boot=0)``).
- ``gpd``: a peaks-over-threshold null. Above the clean rows' 80 % quantile the scores are modelled by a
  generalised Pareto distribution (free tail index xi: light, exponential or heavy tails), fitted by least
  squares to the 80-98 % quantiles; below the threshold the null is the empirical 80 %. The levels are
  remapped to the clean rows' own ``L / (1 - share)`` and refitted, and the excess is counted with the
  product's gate (:func:`clipguard.detect.share._excess`: tolerance 1.1-1.5, z >= 3) -- only the family
  changes.
- ``select``: per score set, the family whose fit to the 55-80 % quantiles (GPD threshold at 60 %) better
  predicts the 85-97 % quantiles (mean absolute probit error) is used.
- ``envelope``: the product's other null (``estimate_share(null="envelope")``): no family, a bound -- the
  clean log-survival taken to be concave above the median, so every chord between two clean quantiles,
  extended, bounds the clean tail beyond it.

Input: cell folders (``<cells>/<cell>/scores_auto.parquet`` with ``fused_score`` and ``poisoned``, and
``result.json``), and clean scan folders (``<scan>/scores/*.parquet`` with ``fused_score``), e.g. those
``benchmarks/share_estimate.py`` writes (``runs/share_estimate/clean/<world>/scan``). Output:
``<out>/share_null_families.md`` and ``.csv``.

Usage::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/share_null_families.py \\
        --cells /tmp/panel16/cells runs/panel_gpu/cells /tmp/fx/extra/cells \\
        --clean-scans runs/share_estimate/clean/world_shapes/scan runs/share_estimate/clean/world_longtail/scan \\
        runs/clean_scan_1m
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

from _results import write_csv

from clipguard.detect.metrics import detection_metrics
from clipguard.detect.share import _excess, _lam_grid, _prepare, estimate_share

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("gamma", "gpd", "select", "envelope")
LEARNED_ASR = 0.8


def fit_gpd(s: np.ndarray, share: float, lo: float = 0.80, hi: float = 0.98, n_levels: int = 10
            ) -> tuple[float, float, float, float]:
    """``(u, xi, sigma, lo)``: a GPD over the threshold ``u`` (the clean rows' ``lo`` quantile) fitted by least
    squares to the clean rows' ``lo..hi`` quantiles of the sorted scores ``s`` (clean level L read at the overall
    level ``L (1 - share)``: the poison taken to lie above)."""
    levels = np.linspace(lo, hi, n_levels)
    q = np.quantile(s, np.minimum(levels * (1 - share), 1.0))
    u, excess, cond = q[0], q[1:] - q[0], (levels[1:] - lo) / (1 - lo)
    scale0 = max(float(excess.mean()), 1e-9)

    def resid(theta: np.ndarray) -> np.ndarray:
        xi, sigma = theta[0], np.exp(theta[1])
        quant = (-sigma * np.log1p(-cond) if abs(xi) < 1e-6 else sigma / xi * ((1 - cond) ** (-xi) - 1))
        return (quant - excess) / scale0

    r = optimize.least_squares(resid, [0.1, np.log(scale0)], bounds=([-0.9, -50.0], [2.0, 50.0]))
    return float(u), float(r.x[0]), float(np.exp(r.x[1])), lo


def gpd_sf(x: np.ndarray, fit: tuple[float, float, float, float]) -> np.ndarray:
    """Null survival function: ``(1 - lo) * GPD_sf(x - u)`` above the threshold, 1 below it (not used there)."""
    u, xi, sigma, lo = fit
    x = np.asarray(x, dtype=np.float64)
    return np.where(x > u, (1 - lo) * stats.genpareto.sf(np.maximum(x - u, 0.0), xi, scale=sigma), 1.0)


def gpd_estimate(s: np.ndarray, z_min: float = 3.0, tol: float = 1.5) -> float:
    """The share in excess of the GPD-tailed null, with the product's gate; refitted with remapped levels."""
    n, grid, share = len(s), _lam_grid(len(s)), 0.0
    for _ in range(3):
        u, xi, sigma, lo = fit_gpd(s, share)
        thresholds = u + stats.genpareto.isf(np.minimum(grid / (1 - lo), 1.0), xi, scale=sigma)
        counts = n - np.searchsorted(s, thresholds, side="left")
        new = float(_excess(counts[None, :].astype(np.float64), np.array([float(n)]), grid, z_min, tol)[0, 0])
        settled, share = abs(new - share) < 0.5 / n, new
        if settled:
            break
    return share


def holdout_family(s: np.ndarray) -> str:
    """The family whose fit to the 55-80 % quantiles better predicts the 85-97 % quantiles (probit error)."""
    fit_levels, check = np.linspace(0.55, 0.80, 6), np.linspace(0.85, 0.97, 7)
    qf, qc = np.quantile(s, fit_levels), np.quantile(s, check)

    def resid(theta: np.ndarray) -> np.ndarray:
        a, sc = np.exp(theta)
        return special.ndtri(np.clip(special.gammainc(a, qf / sc), 1e-12, 1 - 1e-12)) - special.ndtri(fit_levels)

    m, v = qf.mean(), qf.var() + 1e-12
    a0 = float(np.clip(m * m / v / 4, 0.2, 1e3))
    a, sc = np.exp(optimize.least_squares(resid, np.log([a0, m / a0])).x)
    target = stats.norm.isf(1 - check)
    err_gamma = np.abs(stats.norm.isf(stats.gamma.sf(qc, a, scale=sc)) - target).mean()
    gfit = fit_gpd(s, 0.0, lo=0.6, hi=0.80, n_levels=6)
    err_gpd = np.abs(stats.norm.isf(np.clip(gpd_sf(qc, gfit), 1e-300, 1.0)) - target).mean()
    return "gamma" if err_gamma <= err_gpd else "gpd"


def oracle_z(x: np.ndarray, y: np.ndarray) -> float:
    """The largest z a tail count could reach if the clean scores' distribution were KNOWN: over the tail levels
    lam of the estimator's grid, (poisoned rows above the clean rows' 1 - lam quantile) / sqrt(n_clean lam).
    Below 3 no tail estimate at the estimator's gate can see the poison, whatever its null."""
    if not y.any() or y.all():
        return float("nan")
    clean, bad = x[~y & np.isfinite(x)], x[y & np.isfinite(x)]
    best = 0.0
    for lam in _lam_grid(len(x)):
        above = int((bad > np.quantile(clean, 1 - lam)).sum())
        best = max(best, above / np.sqrt(len(clean) * lam))
    return float(best)


def estimates(scores: np.ndarray) -> dict:
    """Point estimate of each family (and the family ``select`` chose)."""
    s = _prepare(scores)[0]  # sorted, finite, shifted positive as estimate_share does
    out = {"gamma": estimate_share(s, n_boot=0, null="gamma").share, "gpd": gpd_estimate(s),
           "envelope": estimate_share(s, n_boot=0, null="envelope").share}
    out["chosen"] = holdout_family(s)
    out["select"] = out[out["chosen"]]
    return out


def score_sets(a: argparse.Namespace) -> list[dict]:
    """Every cell (with its truth and learned flag) and clean scan: ``{"name", "kind", "learned", "x", "y"}``."""
    sets = []
    for cells in a.cells:
        for res in sorted(Path(cells).glob("*/result.json")):
            f = res.parent / "scores_auto.parquet"
            if not f.exists():
                continue
            r, df = json.loads(res.read_text()), pd.read_parquet(f, columns=["fused_score", "poisoned"])
            asr = r.get("attack_success_rate")
            learned = bool(asr >= LEARNED_ASR) if asr is not None else bool(r.get("learned", False))
            sets.append({"name": res.parent.name, "kind": "cell", "learned": learned,
                         "x": df["fused_score"].to_numpy(), "y": df["poisoned"].to_numpy(bool)})
    for scan in a.clean_scans:
        files = sorted((Path(scan) / "scores").glob("*.parquet"))
        x = pd.concat([pd.read_parquet(f, columns=["fused_score"]) for f in files])["fused_score"].to_numpy()
        sets.append({"name": str(scan), "kind": "clean", "learned": False, "x": x, "y": np.zeros(len(x), bool)})
    return sets


def measure(sets: list[dict]) -> pd.DataFrame:
    rows = []
    for st in sets:
        y = st["y"]
        auroc = detection_metrics(y, st["x"])["auroc"] if 0 < y.sum() < len(y) else float("nan")
        est = estimates(st["x"])
        rows.append({"kind": st["kind"], "name": st["name"], "learned": st["learned"], "n_rows": len(y),
                     "true_share": float(y.mean()), "auroc": auroc, "oracle_z": oracle_z(st["x"], y),
                     "chosen": est["chosen"],
                     **{f: est[f] for f in FAMILIES}})
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame) -> list[str]:
    lines = ["| null | learned cells: mean / worst abs error | gate opened where AUROC >= 0.99 | "
             "within 25 % of the truth where AUROC >= 0.95 | worst clean estimate |", "|---|---|---|---|---|"]
    learned, high = df[(df.kind == "cell") & df.learned], df[(df.kind == "cell") & (df.auroc >= 0.99)]
    good, clean = df[(df.kind == "cell") & (df.auroc >= 0.95)], df[df.kind == "clean"]
    for f in FAMILIES:
        err = (learned[f] - learned.true_share).abs()
        near = ((good[f] - good.true_share).abs() <= 0.25 * good.true_share).sum()
        lines.append(f"| {f} | {err.mean():.4f} / {err.max():.4f} | {(high[f] > 0).sum()}/{len(high)} | "
                     f"{near}/{len(good)} | {clean[f].max():.4f} |")
    z = learned["oracle_z"]
    lines += ["", f"Learned cells where the poison makes a tail excess at z >= 3 even against the KNOWN clean "
              f"distribution (`oracle_z`): {(z >= 3).sum()}/{len(z)}; in the others no tail estimate can see it, "
              "whatever its null (the detector does not separate the poison from the clean tail)."]
    return lines


def write_report(df: pd.DataFrame, out: Path, argv: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "share_null_families.csv", list(df.columns), df.to_dict("records"))
    table = ["| set | learned | true | AUROC | oracle z | gamma | gpd | select (chosen) | envelope |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in df.itertuples():
        table.append(f"| {r.name} | {'yes' if r.learned else 'no'} | {r.true_share:.4f} | {r.auroc:.3f} | {r.oracle_z:.1f} | "
                     f"{r.gamma:.4f} | {r.gpd:.4f} | {r.select:.4f} ({r.chosen}) | {r.envelope:.4f} |")
    text = ["# Share estimate: which null to extrapolate (issue 16)", "", f"Command: `{argv}`", "",
            "Point estimates (no bootstrap) of the poisoned share from `fused_score`; see the script's docstring.",
            "", *summary(df), "", *table, ""]
    (out / "share_null_families.md").write_text("\n".join(text))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cells", nargs="*", default=[], help="folders of panel cells")
    p.add_argument("--clean-scans", nargs="*", default=[], help="clean scan folders (scores/*.parquet)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = p.parse_args(argv)
    df = measure(score_sets(a))
    write_report(df, Path(a.out), "python benchmarks/share_null_families.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(v)}" for k, v in vars(a).items() if k != "out" and v))
    print("\n".join(summary(df)))


if __name__ == "__main__":
    main()
