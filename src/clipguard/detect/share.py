"""How much to drop: the poisoned share of a scanned set, estimated from its scores without ground truth.

The question after a scan is which rows to drop and what that costs. :func:`estimate_share` answers it
from ONE detector's scores (higher = more suspicious; the default ``fused``) by the excess of the upper
tail over a null for the clean rows -- the "empirical null" of large-scale testing (Efron), with
Storey's estimate of the non-null share and Benjamini-Hochberg's cut on the null p-values. Two nulls:

- ``"envelope"`` (the default, :data:`DEFAULT_NULL`): a BOUND on the clean tail, valid whenever the clean
  scores' hazard rate does not fall above their median ("The cautious null" below);
- ``"gamma"``: a Gamma distribution FITTED to the bulk and extrapolated (steps 1-4).

Why the envelope is the default (measured; ``benchmarks/results/share_estimate.md`` and
``share_estimate_gamma.md``): over the 22 cells whose scan AUROC is >= 0.99 -- the panel's cells scanned
with the poisoned model's embeddings and with a clean model's (``benchmarks/clean_model_scan.py``) and the
demo -- ``filter --share auto`` removes >= 90 % of the poison at precision >= 0.5 in 7 with the envelope
and in 2 with the Gamma (mean recall 0.71 against 0.24: the Gamma's tail, extrapolated from a bimodal
clean bulk, is too heavy, and its gate stays shut; in 5 of the 22 no top cut of the ranking reaches the goal
at all, so 17 is the most any cut rule could reach there), and it removes nothing from each of three clean sets
(the Gamma: 2.8 % of a 1M-row clean set whose tail is lighter than the fit's). What it costs: poison that
merges into the clean tail (the shapes world's 5 % cells on the poisoned model, AUROC 0.987-0.989: the
Gamma removes 98-99 % of it, the envelope none), estimates that run low, and clean scores whose hazard
falls (a mixture of exponentials with different rates: up to 0.11 % of 50,000 clean rows removed).

1. **Null fit (Gamma).** The clean rows make up the bulk of the scores and the poison, when a detector sees
   it, sits in the upper tail. A Gamma distribution is fitted by quantile matching to the scores'
   55 %, 60 %, ..., 90 % quantiles (least squares on the probit scale, damped Gauss-Newton): the upper
   middle of the bulk,
   nearest the tail the null must extrapolate to (fitted to the lower half instead, it put 580-600
   clean rows above the empirical 1 % point of 999 on 100k-row scans). Gamma because the default
   score is Fisher's ``-mean(ln p)`` over m rank p-values: exactly Gamma(m, 1/m) when the components
   are independent on clean data, still Gamma-like (wider) when they are correlated -- shape and
   scale are fitted, m is not assumed. Scores that are not all positive are shifted by their minimum
   first. Poison above the window shifts its quantiles: the fit is repeated with each level mapped
   to the null's own level ``L / (1 - share)`` until the share settles (at most three fits). Choosing
   that share instead by the best-fitting mapping (profile over 0-20 %) was tried and rejected: it found
   the 5 % shapes cells (3.7-6.1 %) but read 17-18 % on every long-tailed cell, whose clean scores are
   simply not Gamma-shaped. A peaks-over-threshold null (a generalised Pareto tail with a free tail
   index, fitted to the 80-98 % quantiles) was measured against the Gamma too
   (``benchmarks/share_null_families.py``, ``benchmarks/results/share_null_families.md``): it removes
   the false 1.8 % on the 1M-row clean set (0.0 %) and opens the gate on three long-tailed cells
   whose AUROC is 0.99-0.999 (0.94-1.18 % for 0.5-1 % poison), but its window holds 5 % poison: it
   reads 0 on the demo and on the shapes 5 % cells the Gamma finds (3.7-5.1 %), reads 0.4 % on a clean
   long-tailed world, and choosing the family per set by which better predicts the 85-97 % quantiles
   from the 55-80 % ones picked the GPD for the demo. Neither tail is right on every world; the Gamma
   stays the default (and see the envelope below).
2. **p-values.** ``p_i = P_null(S >= s_i)`` from the fitted Gamma (higher score, smaller p).
3. **Share.** At a tail level ``lam`` (a grid doubling from ``2/n`` to 0.2; the envelope also reads deeper
   levels, below), ``count(lam) - n lam``
   rows lie in excess of the null: Storey's pi1 = 1 - pi0 read in the upper tail, where the poison is.
   The null's tail is trusted only to within a factor (:func:`tolerance_at`: 1.1 where the fit window
   ends, :data:`TAIL_TOLERANCE` = 1.5 from ``lam <= 0.005`` on): the estimate is 0 unless the excess
   over that heavier tail reaches a binomial z of ``z_min`` (3.0) at some level; among
   those levels the one with the largest lower-confidence count gives the share
   ``(count - n lam) / (n (1 - lam))``.
4. **Interval.** A percentile Poisson bootstrap over rows (``n_boot`` resamples, default 200, seeded;
   each refits the null): the upper end from the share, the lower end from the count beyond the 1.5x
   heavier tail, at nominal coverage ``level`` (0.95). It does NOT cover a null of another shape
   than the fit's, nor poison the detector does not see (ranked among clean rows): no estimate from
   scores counts what the scores do not separate. The cluster sizes of ``clipguard discover`` were
   not used: they depend on its own thresholds and see only poison that forms one cluster.

**The cautious null** (``null="envelope"``). Not a fit but a bound: if the clean scores' hazard rate
does not fall above their median (their log-survival is concave there: Gamma with shape >= 1, normal,
exponential, Weibull >= 1, Fisher's statistic of independent p-values), the log-survival lies below every
chord between two of its points once extended beyond the chord's right end. The chords of consecutive clean
quantiles (:data:`ENVELOPE_LEVELS`), each flattened by :data:`ENVELOPE_MARGIN` Poisson standard deviations,
give a bound on the clean tail whose p-values are conservative (measured 0.94-0.99 lam of clean rows below
lam on those families); the excess over it is counted as above with tolerance 1.0 (the bound needs none).
Where no level from 2/n up shows an excess, its deep tail is read too (:data:`DEEP_ROWS`: levels where the bound
expects 1 to 0.05 rows, gated by the exact Poisson tail instead of z): 0.1 % poison that the scan ranks first
is 5 rows of 5,000, a z of 2.1 at 2/n, but 5 rows where the bound expects 0.08. On the panel re-run with the
probe (``benchmarks/results/share_estimate_probe-panel.md``) this took ``--share auto`` from 3 to 5 of the 12
cells at AUROC >= 0.99 (two 0.1 % cells: all 5 rows removed at precision 0.83) and still removed nothing from
the two clean worlds. On clean synthetic sets (``benchmarks/results/share_deep_tail.md``: 1,000 sets of 1,000
rows, 500 of 5,000 and 50 of 50,000 per family) with a rising or constant hazard (Gamma 1, 2, 5, normal, Weibull
1.5, Fisher's statistic, uniform, Beta) it opened once, on an exponential set of 1,000 rows (3 rows removed).
Where the hazard falls, the assumption broken, it opened on up to 9.4 % of the sets (Student t5, 5,000 rows;
at most 17 rows removed, 0.34 %) and removed at most 1.3 % (13 of 1,000 rows of a two-rate exponential mixture);
the levels from 2/n up already open there more often (on 60 % of those 5,000-row mixtures).
A poison that merges into the clean tail raises the chords as much as the tail (the bound cannot tell a
bump on a rising hazard from the hazard): it misses the shapes 5 % cells the Gamma finds, and its estimates
run low (demo 3.6 % [2.5, 4.1] for 5 %). A clean tail whose hazard falls breaks its assumption: 0.07 % of
50,000 log-normal rows read as excess, and a two-rate exponential mixture loses up to 0.11 % of 50,000 clean
rows to ``--share auto``. A margin of 0.5 instead of 1.0 reached 9 of the 22 cells above (mean recall 0.84)
and still removed nothing from the three clean sets, but up to 0.21 % of those mixtures; 1.0, set before
the measurement, stays.

:func:`bh_cut` is the Benjamini-Hochberg cut at a stated false-discovery rate on the same p-values,
:func:`precision_cut` the largest top cut whose expected precision stays >= 0.5 (what ``clipguard filter
--share auto`` removes), and :func:`tradeoff_curve` tabulates, for each share removed, the expected precision and the clean
share lost (from the estimate), and, with ground truth, the measured precision and recall.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Callable

import numpy as np
import pandas as pd

from clipguard.errors import ConfigError

__all__ = ["ShareEstimate", "estimate_share", "null_pvalues", "bh_cut", "precision_cut", "tradeoff_curve",
           "tolerance_at", "envelope_pvalues", "TRADEOFF_SHARES", "TAIL_TOLERANCE", "METHOD", "ENVELOPE_METHOD",
           "ENVELOPE_LEVELS", "ENVELOPE_MARGIN", "NULLS", "DEFAULT_NULL", "DEEP_ROWS"]

METHOD = ("tail excess over a Gamma null fitted to the 55-90 % quantiles of the scores (Storey's pi1 read in the "
          "upper tail; percentile bootstrap interval)")
"""What :func:`estimate_share` does, in words (recorded with every estimate)."""

_FIT_LEVELS = np.arange(0.55, 0.901, 0.05)
"""Quantile levels of the null fit: the upper middle of the scores, the part of the bulk nearest the tail
the null must extrapolate to (the lower half fits the bulk but misses the tail: on clean 100k-row scans it
put 580-600 rows above the empirical 1 % point of 999; levels 0.6-0.95 put 1,200-1,600)."""

TAIL_TOLERANCE = 1.5
"""Factor by which the fitted null's tail may be too light: the gate and the interval's low end count as poison
only the rows beyond TAIL_TOLERANCE times what the null puts above a level (misfit measured on clean rows of
100k-row scans: 1.2-1.6x at the 1 % and 0.1 % points; on the 1M-row synthetic clustered set of
benchmarks/memory.py it is 1.8x at 0.8 % and 13x at 2e-6, and the estimate there is a false 1.8 %). With one
flat factor for every level the 5 % demo scan read 1.25 -> 4.9 % [4.3, 5.3], 1.5 -> 4.4 % [3.5, 5.2],
2.0 -> 3.7 % [0.0, 4.9]; :func:`tolerance_at` lowers it to 1.1 where the null is fitted."""

NULLS = ("envelope", "gamma")
"""The nulls :func:`estimate_share` can count the excess over: the IFR envelope (default) or the fitted Gamma."""

DEFAULT_NULL = "envelope"
"""The null of a scan's estimate and of ``clipguard filter`` unless told otherwise (why: the module docstring)."""

ENVELOPE_METHOD = ("tail excess over the IFR envelope of the scores (the clean log-survival taken to be concave "
                   "above the median: every chord extended beyond its right end bounds the clean tail; Storey's pi1 "
                   "read in the upper tail; percentile bootstrap interval)")
"""What :func:`estimate_share` with ``null="envelope"`` does, in words."""

ENVELOPE_LEVELS = np.array([0.5, 0.7, 0.9, 0.95, 0.975, 0.99, 0.995, 0.998])
"""Clean quantile levels whose consecutive pairs are the chords of the envelope (a chord needs >= 20 clean rows
above its right end)."""

ENVELOPE_MARGIN = 1.0
"""Each chord is flattened by this many Poisson standard deviations of its two counts (``k_left - m sqrt(k_left)``
over ``k_right + m sqrt(k_right)``): its noise must not make the bound too light. Fixed at one SD before
measuring; on the demo scan (5 % poison) 2.0 reads 2.5 %, 1.0 3.6 %, 0.5 3.6 %; the other figures of 0.5 are in
the module docstring."""

DEEP_ROWS = (1.0, 0.5, 0.25, 0.1, 0.05)
"""The envelope's deep tail levels, as the number of clean rows its bound expects beyond them (level = rows / n):
read with the exact Poisson tail, and only where no level from 2/n up finds an excess. A handful of rows far beyond
every clean row (0.1 % poison ranked first: 5 rows of 5,000 that the bound expects 0.08 of) is an excess no level
from 2/n up can show: there the bound expects 2 rows and 5 is a z of 2.1. The envelope only: a bound stays a bound
that deep, a fitted tail does not (the Gamma's misfit reached 13x at 2e-6)."""

TRADEOFF_SHARES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3)
"""Shares removed in :func:`tradeoff_curve` (plus the estimate itself)."""


@dataclass
class ShareEstimate:
    """The estimated poisoned share of a scored set (no ground truth used).

    Attributes:
        share: point estimate of the poisoned share, in [0, 1].
        low, high: the bootstrap interval of ``share`` at nominal coverage ``level``.
        n_rows: rows scored (non-finite scores are left out and counted in ``n_nonfinite``).
        n_estimated: ``round(share * n_rows)``, the rows a cut at the estimate removes.
        lam: the tail level the estimate was read at (None when no excess reached ``z_min``).
        z: the z of the excess at ``lam`` (the largest over the grid): binomial, or at a deep level
            (:data:`DEEP_ROWS`) the normal z of its exact Poisson tail.
        null: the fitted null (``family``, ``shape``, ``scale``, ``shift``).
        detector: whose scores (``None`` when given bare scores).
        method: :data:`METHOD`; ``reason``: the estimate in words.
    """

    share: float
    low: float
    high: float
    level: float
    n_rows: int
    n_estimated: int
    lam: float | None
    z: float
    null: dict[str, Any]
    n_boot: int
    seed: int
    detector: str | None = None
    n_nonfinite: int = 0
    method: str = METHOD
    reason: str = field(default="")

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``run.json`` records under ``share_estimate``)."""
        return asdict(self)

    def describe(self) -> str:
        """One line: the estimate, its interval and how many rows that is."""
        who = f"{self.detector}_score" if self.detector else "the scores"
        return (f"estimated poisoned share {self.share:.2%} ({self.n_estimated} of {self.n_rows} rows), "
                f"{self.level:.0%} interval [{self.low:.2%}, {self.high:.2%}], from {who}")


def _weighted_quantiles(s: np.ndarray, cw: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """(B, L) quantiles at ``levels`` of the sorted scores ``s`` under each row of cumulative weights ``cw`` (B, n)."""
    return np.stack([s[np.minimum(np.searchsorted(c, levels * c[-1], side="left"), len(s) - 1)] for c in cw])


def _fit_gamma(q: np.ndarray, share: np.ndarray, start: np.ndarray | None = None, iters: int = 30
               ) -> tuple[np.ndarray, np.ndarray]:
    """``(theta, rms)``: (B, 2) ``(log shape, log scale)`` of the Gamma fitted to each row of quantiles ``q``
    (B, L) taken at the levels :data:`_FIT_LEVELS`, and (B,) the root mean squared probit residual of each fit.

    Each level L is mapped to the null's own level ``L / (1 - share_b)`` (the poisoned share taken to lie above
    the window; levels mapped beyond 0.97 get weight 0, and with fewer than 3 left the levels are used as
    they are). Least squares on the probit scale, ``sum (Phi^-1(F_gamma(q_L)) - Phi^-1(L_null))^2`` (the CDF
    is cheap, the quantile function is not), by damped Gauss-Newton over (log shape, log scale), all B fits
    at once."""
    from scipy import special

    levels = _FIT_LEVELS[None, :] / np.maximum(1.0 - share[:, None], 1e-9)
    mask = (levels <= 0.97).astype(np.float64)
    few = mask.sum(axis=1) < 3
    levels[few], mask[few] = _FIT_LEVELS, 1.0
    target = special.ndtri(np.minimum(levels, 0.97))
    if start is None:
        m, v = q.mean(axis=1), q.var(axis=1) + 1e-12
        a0 = np.clip(m * m / v / 4, 0.2, 1e3)
        start = np.log(np.stack([a0, m / a0], axis=1))
    theta = np.array(start, dtype=np.float64).reshape(-1, 2).repeat(len(q) // len(np.atleast_2d(start)), axis=0)

    def resid(th: np.ndarray) -> np.ndarray:
        a, sc = np.exp(np.clip(th, -30, 30)).T
        cdf = np.clip(special.gammainc(a[:, None], q / sc[:, None]), 1e-12, 1 - 1e-12)
        return (special.ndtri(cdf) - target) * mask

    r = resid(theta)
    loss = (r * r).sum(axis=1)
    for _ in range(iters):
        jac = np.stack([(resid(theta + d) - r) / 1e-6 for d in (np.array([1e-6, 0.0]), np.array([0.0, 1e-6]))],
                       axis=-1)  # (B, L, 2)
        jtj = np.einsum("blk,blm->bkm", jac, jac) + 1e-9 * np.eye(2)
        step = np.linalg.solve(jtj, np.einsum("blk,bl->bk", jac, r)[..., None])[..., 0]
        if np.abs(step).max() < 1e-7:  # every fit has converged
            break
        for _half in range(4):  # accept a step that lowers the loss, else halve it
            cand = theta - step
            rc = resid(cand)
            lc = (rc * rc).sum(axis=1)
            better = lc < loss
            theta[better], r[better], loss[better] = cand[better], rc[better], lc[better]
            step = np.where(better[:, None], 0.0, step / 2)
            if not step.any():
                break
    return theta, np.sqrt(loss / mask.sum(axis=1))


def _prepare(scores: Any) -> tuple[np.ndarray, float, int]:
    """``(sorted positive scores, shift, n_nonfinite)``."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    finite = np.isfinite(s)
    s = np.sort(s[finite])
    if len(s) < 20:
        raise ConfigError(f"estimating a poisoned share needs at least 20 finite scores, got {len(s)}; "
                          "use --share F or --top N on a set this small")
    shift = 0.0
    if s[0] <= 0:  # the Gamma null lives on (0, inf): shift by the minimum (plus a little)
        spread = max(float(s[-1] - s[0]), 1e-12)
        shift = float(-s[0] + 1e-6 * spread)
    return s + shift, shift, int((~finite).sum())


def _lam_grid(n: int, deep: bool = False) -> np.ndarray:
    """Tail levels from about 2/n to 0.2, doubling; with ``deep``, first the levels :data:`DEEP_ROWS` / n."""
    lo = min(2.0 / n, 0.2)
    k = int(math.floor(math.log2(0.2 / lo))) + 1
    grid = np.unique(np.clip(lo * 2.0 ** np.arange(k), lo, 0.2))
    return np.concatenate([np.array(sorted(DEEP_ROWS)) / n, grid]) if deep and lo < 0.2 else grid


def _deep_excess(counts: np.ndarray, expected: np.ndarray, z_min: float) -> tuple[np.ndarray, np.ndarray]:
    """``(ok, z)``, each (B, D): whether the rows beyond each deep level are too many for the null's ``expected``
    (B, D) rows (fewer than 2) -- the exact Poisson tail ``P(X >= count)`` at most that of a normal z of ``z_min``
    -- and that tail's z (``isf``, capped at 40)."""
    from scipy import stats

    tail = stats.poisson.sf(np.maximum(counts - 1, -1), np.maximum(expected, 1e-12))
    return tail <= stats.norm.sf(z_min), np.minimum(stats.norm.isf(np.maximum(tail, 1e-300)), 40.0)


def tolerance_at(lam: np.ndarray, deep: float = TAIL_TOLERANCE) -> np.ndarray:
    """The factor the fitted null's tail mass at level ``lam`` may be off by: 1.1 where the fit window ends
    (``lam >= 0.05``: the null is fitted there), ``deep`` from ``lam <= 0.005`` on (extrapolated), log-linear
    in between."""
    t = np.clip(np.log(0.05 / np.asarray(lam, dtype=np.float64)) / np.log(10.0), 0.0, 1.0)
    return 1.1 + (deep - 1.1) * t


def _excess(counts: np.ndarray, n: np.ndarray, grid: np.ndarray, z_min: float, tol: float,
            n_deep: int = 0) -> np.ndarray:
    """(B, 4) ``(share, lam, z, share_low)`` from ``counts`` (B, G): the rows whose null p-value is <= each
    grid level, of ``n`` (B,) rows.

    At each level lam, ``count(lam) - n lam`` rows are in excess of the fitted null and
    ``count(lam) - t n lam`` in excess of a null ``t`` = :func:`tolerance_at` times heavier; the latter's z
    (``/ sqrt(t n lam (1 - lam))``) must reach ``z_min`` somewhere, else the share is 0 (lam NaN). Among
    the levels that reach it, the one with the largest ``count - t n lam - 2 sqrt(t n lam)`` (a lower
    confidence count: far enough into the tail to hold the poison, not so far that the null's count
    swamps it) gives ``share = (count - n lam) / (n (1 - lam))`` and ``share_low = (count - t n lam) / n``.

    The first ``n_deep`` levels of ``grid`` are the deep ones (:data:`DEEP_ROWS`: the null expects fewer than
    2 rows beyond them, where a normal z means nothing). They are read only where no other level passes, and
    with the exact Poisson tail instead of z (:func:`_deep_excess`): a few rows far beyond every clean row."""
    t = tolerance_at(grid, tol)[None, :]
    expected = n[:, None] * grid[None, :]
    z = (counts - t * expected) / np.sqrt(t * expected * (1 - grid[None, :]))
    ok = z >= z_min
    ok[:, :n_deep] = False
    if n_deep:
        deep_ok, deep_z = _deep_excess(counts[:, :n_deep], t[:, :n_deep] * expected[:, :n_deep], z_min)
        ok[:, :n_deep] = deep_ok & ~ok.any(axis=1, keepdims=True)
        z[:, :n_deep] = np.where(ok[:, :n_deep], deep_z, -np.inf)  # reported only where the deep gate opened
    lower = np.where(ok, counts - t * expected - 2.0 * np.sqrt(t * expected), -np.inf)
    j = np.argmax(lower, axis=1)
    rows = np.arange(len(counts))
    c, e, g = counts[rows, j], expected[rows, j], grid[j]
    hit = ok.any(axis=1)
    share = np.where(hit, np.clip((c - e) / (n * (1 - g)), 0.0, 1.0), 0.0)
    low = np.where(hit, np.clip((c - t[0, j] * e) / n, 0.0, 1.0), 0.0)
    return np.stack([share, np.where(hit, g, np.nan), z.max(axis=1), low], axis=1)


def _settle(counts_of: Callable[[np.ndarray], tuple[np.ndarray, Any]], n_b: np.ndarray, grid: np.ndarray,
            z_min: float, tol: float, n_deep: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Any]:
    """``(share, lam, z, share_low, null)`` (each (B,)): fit the null with the share taken to lie above, count the
    rows beyond each grid level (``counts_of(share) -> ((B, G) counts, null)``), read the excess, and refit with
    the new share until it settles (at most three fits)."""
    share = np.zeros(len(n_b))
    out, null = np.zeros((len(n_b), 4)), None
    for _ in range(3):
        counts, null = counts_of(share)
        out = _excess(counts, n_b, grid, z_min, tol, n_deep)
        settled = np.all(np.abs(out[:, 0] - share) < 0.5 / n_b)
        share = out[:, 0].copy()
        if settled:
            break
    return out[:, 0], out[:, 1], out[:, 2], out[:, 3], null


def _estimate_batch(s: np.ndarray, cw: np.ndarray, z_min: float, tol: float, start: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(share, lam, z, share_low, theta)``, each (B,) (theta (B, 2)), of the sorted positive scores ``s``
    under each row of cumulative row weights ``cw`` (B, n): ``arange(1, n + 1)`` for the data itself,
    cumulated Poisson counts for bootstrap resamples. ``lam`` is NaN where no excess passed the gate."""
    from scipy import stats

    n_b = cw[:, -1]
    grid = _lam_grid(len(s))
    q = _weighted_quantiles(s, cw, _FIT_LEVELS)
    theta = start

    def counts_of(share: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nonlocal theta  # each refit starts from the last fit
        theta, _ = _fit_gamma(q, share, theta)
        a, sc = np.exp(theta).T
        thresholds = stats.gamma.isf(grid[None, :], a[:, None], scale=sc[:, None])  # p <= lam <=> s >= threshold
        below = np.searchsorted(s, thresholds, side="left")  # (B, G): rows of s below each threshold
        return n_b[:, None] - np.where(below > 0, np.take_along_axis(cw, np.maximum(below - 1, 0), axis=1), 0.0), theta

    return _settle(counts_of, n_b, grid, z_min, tol)


def _envelope_chords(s: np.ndarray, cw: np.ndarray, share: np.ndarray, margin: float) -> np.ndarray:
    """(B, C, 3) chords ``(anchor a, log bound at a, slope beta)`` of the IFR envelope of the sorted scores ``s``
    under each row of cumulative weights ``cw`` (B, n), the poisoned share ``share`` (B,) taken to lie above.

    Clean level L is read at the overall level ``L (1 - share)``; with ``k_L = n_clean (1 - L)`` clean rows above
    the anchor ``a_L``, the chord of consecutive levels (L1, L2) has slope
    ``beta = ln((k1 - m sqrt k1) / (k2 + m sqrt k2)) / (a_L2 - a_L1)`` and bounds the clean survival beyond a_L2
    by ``(k2 + m sqrt k2) / n_clean * exp(-beta (s - a_L2))``. A chord with fewer than 20 clean rows above a_L2,
    a non-positive slope or coinciding anchors is unused (beta NaN)."""
    n_b = cw[:, -1]
    n_clean = n_b * (1.0 - share)
    lv = ENVELOPE_LEVELS[None, :] * (1.0 - share[:, None])
    idx = np.stack([np.searchsorted(c, row * c[-1], side="left") for c, row in zip(cw, lv)])
    a = s[np.minimum(idx, len(s) - 1)]
    k = n_clean[:, None] * (1.0 - ENVELOPE_LEVELS[None, :])
    k_left = np.maximum(k[:, :-1] - margin * np.sqrt(k[:, :-1]), 1e-12)
    k_right = k[:, 1:] + margin * np.sqrt(k[:, 1:])
    with np.errstate(divide="ignore", invalid="ignore"):
        beta = np.log(k_left / k_right) / (a[:, 1:] - a[:, :-1])
    ok = (k[:, 1:] >= 20) & np.isfinite(beta) & (beta > 0)
    log_bound = np.log(np.minimum(k_right / np.maximum(n_clean[:, None], 1e-12), 1.0))
    return np.stack([a[:, 1:], log_bound, np.where(ok, beta, np.nan)], axis=-1)


def envelope_pvalues(scores: Any, chords: np.ndarray) -> np.ndarray:
    """(N,) p-values of (shifted) ``scores`` under an IFR envelope: the smallest bound over the (C, 3) ``chords``
    ``(a, log bound, beta)`` whose anchor a lies at or below the score (1 below every anchor; NaN chords unused)."""
    s = np.asarray(scores, dtype=np.float64)
    p = np.ones(s.shape)
    for a, log_bound, beta in np.asarray(chords, dtype=np.float64).reshape(-1, 3):
        if np.isfinite(beta):
            with np.errstate(invalid="ignore", over="ignore"):
                p = np.where(s >= a, np.minimum(p, np.exp(log_bound - beta * (s - a))), p)
    return np.clip(p, 0.0, 1.0)


def _envelope_batch(s: np.ndarray, cw: np.ndarray, z_min: float, tol: float, margin: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """As :func:`_estimate_batch` with the IFR envelope as the null (the last item: (B, C, 3) chords)."""
    n_b = cw[:, -1]
    grid = _lam_grid(len(s), deep=True)
    n_deep = len(grid) - len(_lam_grid(len(s)))

    def counts_of(share: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        chords = _envelope_chords(s, cw, share, margin)
        counts = np.empty((len(cw), len(grid)))
        for b in range(len(cw)):  # p is non-increasing along the sorted scores
            first = np.searchsorted(-envelope_pvalues(s, chords[b]), -grid, side="left")
            counts[b] = n_b[b] - np.where(first > 0, cw[b, np.maximum(first - 1, 0)], 0.0)
        return counts, chords

    return _settle(counts_of, n_b, grid, z_min, tol, n_deep)


def _bootstrap(s: np.ndarray, n_boot: int, seed: int, batch: Callable[[np.ndarray], tuple]
               ) -> tuple[np.ndarray, np.ndarray]:
    """``(share, share_low)`` of ``n_boot`` Poisson-bootstrap resamples of the sorted scores ``s`` (each row's
    count ~ Poisson(1): no re-sorting), in chunks of at most 2^24 weights; ``batch(cw)`` estimates each resample
    (:func:`_estimate_batch` or :func:`_envelope_batch` with their settings bound)."""
    gen = np.random.default_rng(seed)
    n, shares, lows = len(s), [], []
    chunk = max(1, min(n_boot, (1 << 24) // n))
    for c in range(0, n_boot, chunk):
        m = min(chunk, n_boot - c)
        cw = np.cumsum(gen.poisson(1.0, (m, n)), axis=1, dtype=np.float64)
        cw[cw[:, -1] == 0, -1] = 1.0  # an empty resample (n tiny): no rows, share 0
        sh, _, _, low, _ = batch(cw)
        shares.append(sh)
        lows.append(low)
    return np.concatenate(shares), np.concatenate(lows)


def _null_record(null: str, params: np.ndarray, shift: float, tol: float, margin: float) -> dict[str, Any]:
    """The JSON-ready null of an estimate (what :func:`null_pvalues` evaluates)."""
    if null == "gamma":
        fit = np.exp(params)
        return {"family": "gamma", "shape": float(fit[0]), "scale": float(fit[1]), "shift": shift,
                "tail_tolerance": tol}
    return {"family": "envelope", "chords": [[float(v) if np.isfinite(v) else None for v in c] for c in params],
            "levels": ENVELOPE_LEVELS.tolist(), "margin": margin, "shift": shift, "tail_tolerance": tol}


def estimate_share(scores: Any, *, detector: str | None = None, n_boot: int = 200, level: float = 0.95,
                   z_min: float = 3.0, tail_tolerance: float | None = None, seed: int = 0, null: str = DEFAULT_NULL,
                   margin: float = ENVELOPE_MARGIN) -> ShareEstimate:
    """Estimate the poisoned share of a set from its (N,) scores (higher = more suspicious).

    Args:
        scores: (N,) scores of one detector over the whole set (NaN/inf rows are left out, counted).
        detector: the detector's name (recorded).
        n_boot: bootstrap resamples of the interval (0: no bootstrap; the interval is then
            ``[share_low, share]``, the count beyond the tolerated tail to the point estimate).
        level: nominal coverage of the interval.
        z_min: the z an excess must reach to count (below it the estimate is 0): binomial, or the same tail
            probability under the exact Poisson law at the envelope's deep levels.
        tail_tolerance: how many times heavier than fitted the null's tail may be (the gate and the
            interval's low end count only the rows beyond it); None: :data:`TAIL_TOLERANCE` for the Gamma,
            1.0 for the envelope (already a bound).
        seed: seed of the bootstrap.
        null: ``"envelope"`` (default): the IFR envelope, a bound on the clean tail that holds whenever the
            clean scores' log-survival is concave above their median (increasing hazard: Gamma with shape
            >= 1, normal, exponential, Fisher's statistic of independent p-values); ``"gamma"``: a Gamma
            fitted to the bulk, which also finds a poison "shoulder" merging into the clean tail but misreads
            clean tails that are not Gamma-shaped (the module docstring has both, measured).
        margin: the envelope's chord margin (:data:`ENVELOPE_MARGIN`; envelope only).

    Returns:
        A :class:`ShareEstimate` (method and reason in words).

    Raises:
        ConfigError: fewer than 20 finite scores, or ``level`` / ``n_boot`` / ``null`` out of range.
    """
    if not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1), got {level}")
    if n_boot < 0:
        raise ConfigError(f"n_boot must be >= 0, got {n_boot}")
    if null not in NULLS:
        raise ConfigError(f"null must be one of {', '.join(NULLS)}, got {null!r}")
    tol = (TAIL_TOLERANCE if null == "gamma" else 1.0) if tail_tolerance is None else float(tail_tolerance)
    s, shift, n_bad = _prepare(scores)
    n = len(s)
    def batch(cw: np.ndarray, start: np.ndarray | None = None) -> tuple:
        if null == "gamma":
            return _estimate_batch(s, cw, z_min, tol, None if start is None else np.repeat(start, len(cw), axis=0))
        return _envelope_batch(s, cw, z_min, tol, margin)

    share, lam, z, low, params = (v[0] for v in batch(np.arange(1, n + 1, dtype=np.float64)[None, :]))
    share, low, z = float(share), float(low), float(z)
    lam = None if np.isnan(lam) else float(lam)
    boot_share, boot_low = np.array([share]), np.array([low])
    if n_boot:
        boot_share, boot_low = _bootstrap(s, n_boot, seed, partial(batch, start=params[None, :]))
    lo = min(float(np.quantile(boot_low, (1 - level) / 2)), low, share)
    hi = max(float(np.quantile(boot_share, (1 + level) / 2)), share)
    method = METHOD if null == "gamma" else ENVELOPE_METHOD
    est = ShareEstimate(share=share, low=lo, high=hi, level=level, n_rows=n, n_estimated=int(round(share * n)),
                        lam=lam, z=z, null=_null_record(null, params, shift, tol, margin), n_boot=int(n_boot),
                        seed=int(seed), detector=detector, n_nonfinite=n_bad, method=method)
    est.reason = (f"{est.describe()}; {method}" if lam is not None else
                  f"no excess over the null: the largest tail z was {z:.2f} < {z_min:g}, so the estimated "
                  f"share is 0 (interval [{lo:.2%}, {hi:.2%}]); {method}")
    return est


def null_pvalues(scores: Any, est: ShareEstimate) -> np.ndarray:
    """(N,) p-values of ``scores`` under the null of ``est`` (the fitted Gamma or the IFR envelope; NaN and -inf
    scores -> p = 1, +inf -> 0)."""
    from scipy import stats

    s = np.asarray(scores, dtype=np.float64) + est.null["shift"]
    if est.null.get("family", "gamma") == "envelope":
        chords = np.array([[np.nan if v is None else v for v in c] for c in est.null["chords"]], dtype=np.float64)
        p = envelope_pvalues(s, chords)
    else:
        p = stats.gamma.sf(s, est.null["shape"], scale=est.null["scale"])
    return np.where(np.isfinite(p), p, 1.0)


def bh_cut(pvalues: Any, fdr: float) -> int:
    """The number of rows Benjamini-Hochberg rejects at false-discovery rate ``fdr``: the largest k
    with ``p_(k) <= fdr * k / N`` (0 when none); the rejected rows are the k smallest p-values."""
    if not 0 < fdr < 1:
        raise ConfigError(f"--fdr must be in (0, 1), got {fdr}")
    p = np.sort(np.asarray(pvalues, dtype=np.float64).ravel())
    n = len(p)
    if not n:
        return 0
    ok = np.flatnonzero(p <= fdr * np.arange(1, n + 1) / n)
    return int(ok[-1] + 1) if ok.size else 0


def tradeoff_curve(scores: Any, est: ShareEstimate, poisoned: Any = None,
                   shares: tuple[float, ...] = TRADEOFF_SHARES) -> pd.DataFrame:
    """What removing the top share f costs and gains, for each f of ``shares`` and the estimate.

    Rows: the top ``ceil(f N)`` for each f of ``shares``, and the estimate's ``n_estimated`` (``is_estimate``).
    Columns: ``share_removed``, ``n_removed``; from the estimate (no ground truth):
    ``expected_precision`` = 1 - (expected clean rows among the removed) / n_removed, where the
    expected clean count is ``N (1 - share) * p_null(k-th score)``; ``expected_recall`` = expected
    poisoned rows removed / ``share * N`` (NaN when the estimate is 0); ``clean_lost_share`` =
    expected clean rows removed / N. With ``poisoned`` ((N,) bool): ``precision``, ``recall``.
    """
    s = np.asarray(scores, dtype=np.float64)
    n = len(s)
    order = np.argsort(-np.where(np.isfinite(s), s, -np.inf), kind="stable")
    p_sorted = null_pvalues(s[order], est)
    y = None if poisoned is None else np.asarray(poisoned, dtype=bool)[order]
    ks = sorted({min(n, max(1, int(math.ceil(f * n)))) for f in shares if f > 0} | ({est.n_estimated} - {0}))
    clean = np.minimum(ks, n * (1 - est.share) * p_sorted[np.array(ks) - 1])
    bad = np.maximum.accumulate(np.array(ks) - clean)  # the poison removed cannot shrink as the cut grows
    rows = []
    for k, c, b in zip(ks, clean, bad):
        row = {"share_removed": k / n, "n_removed": k, "is_estimate": bool(k == est.n_estimated),
               "expected_precision": float(min(b, k) / k),
               "expected_recall": float(min(1.0, b / (est.share * n))) if est.share > 0 else float("nan"),
               "clean_lost_share": float(c / n)}
        if y is not None:
            tp = int(y[:k].sum())
            row.update(precision=tp / k, recall=(tp / int(y.sum())) if y.any() else float("nan"))
        rows.append(row)
    return pd.DataFrame(rows)


def precision_cut(scores: Any, est: ShareEstimate, min_precision: float = 0.5) -> int:
    """The number of top rows to remove so that the EXPECTED precision stays >= ``min_precision``: the largest k
    with ``1 - N (1 - share) p_null(s_(k)) / k >= min_precision`` (Storey's adaptive Benjamini-Hochberg at
    FDR ``1 - min_precision``, pi0 = 1 - share), 0 when the estimated share is 0.

    Why not cut at the estimate itself: a detector ranks some poison below some clean rows, so a cut of
    exactly ``share * N`` rows misses that poison (on the 5 % demo scan such a cut has recall 0.76); the
    precision cut goes on while the rows it adds are still expected to be poisoned often enough."""
    if not 0 < min_precision < 1:
        raise ConfigError(f"min_precision must be in (0, 1), got {min_precision}")
    if est.share <= 0:
        return 0
    s = np.asarray(scores, dtype=np.float64)
    p = np.sort(null_pvalues(s, est))
    n = len(s)
    k = np.arange(1, n + 1)
    ok = np.flatnonzero(1 - n * (1 - est.share) * p / k >= min_precision)
    return int(max(ok[-1] + 1, est.n_estimated)) if ok.size else est.n_estimated
