"""How much to drop: the poisoned share of a scanned set, estimated from its scores without ground truth.

The question after a scan is which rows to drop and what that costs. :func:`estimate_share` answers it
from ONE detector's scores (higher = more suspicious; the default ``fused``) by the excess of the upper
tail over a null fitted to the bulk -- the "empirical null" of large-scale testing (Efron), with
Storey's estimate of the non-null share and Benjamini-Hochberg's cut on the null p-values:

1. **Null fit.** The clean rows make up the bulk of the scores and the poison, when a detector sees
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
   simply not Gamma-shaped.
2. **p-values.** ``p_i = P_null(S >= s_i)`` from the fitted Gamma (higher score, smaller p).
3. **Share.** At a tail level ``lam`` (a grid doubling from ``2/n`` to 0.2), ``count(lam) - n lam``
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

:func:`bh_cut` is the Benjamini-Hochberg cut at a stated false-discovery rate on the same p-values,
:func:`precision_cut` the largest top cut whose expected precision stays >= 0.5 (what ``clipguard filter
--share auto`` removes), and :func:`tradeoff_curve` tabulates, for each share removed, the expected precision and the clean
share lost (from the estimate), and, with ground truth, the measured precision and recall.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from clipguard.errors import ConfigError

__all__ = ["ShareEstimate", "estimate_share", "null_pvalues", "bh_cut", "precision_cut", "tradeoff_curve",
           "tolerance_at", "TRADEOFF_SHARES", "TAIL_TOLERANCE", "METHOD"]

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
        z: the binomial z of the excess at ``lam`` (the largest over the grid).
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


def _lam_grid(n: int) -> np.ndarray:
    """Tail levels from about 2/n to 0.2, doubling."""
    lo = min(2.0 / n, 0.2)
    k = int(math.floor(math.log2(0.2 / lo))) + 1
    return np.unique(np.clip(lo * 2.0 ** np.arange(k), lo, 0.2))


def tolerance_at(lam: np.ndarray, deep: float = TAIL_TOLERANCE) -> np.ndarray:
    """The factor the fitted null's tail mass at level ``lam`` may be off by: 1.1 where the fit window ends
    (``lam >= 0.05``: the null is fitted there), ``deep`` from ``lam <= 0.005`` on (extrapolated), log-linear
    in between."""
    t = np.clip(np.log(0.05 / np.asarray(lam, dtype=np.float64)) / np.log(10.0), 0.0, 1.0)
    return 1.1 + (deep - 1.1) * t


def _excess(counts: np.ndarray, n: np.ndarray, grid: np.ndarray, z_min: float, tol: float) -> np.ndarray:
    """(B, 4) ``(share, lam, z, share_low)`` from ``counts`` (B, G): the rows whose null p-value is <= each
    grid level, of ``n`` (B,) rows.

    At each level lam, ``count(lam) - n lam`` rows are in excess of the fitted null and
    ``count(lam) - t n lam`` in excess of a null ``t`` = :func:`tolerance_at` times heavier; the latter's z
    (``/ sqrt(t n lam (1 - lam))``) must reach ``z_min`` somewhere, else the share is 0 (lam NaN). Among
    the levels that reach it, the one with the largest ``count - t n lam - 2 sqrt(t n lam)`` (a lower
    confidence count: far enough into the tail to hold the poison, not so far that the null's count
    swamps it) gives ``share = (count - n lam) / (n (1 - lam))`` and ``share_low = (count - t n lam) / n``."""
    t = tolerance_at(grid, tol)[None, :]
    expected = n[:, None] * grid[None, :]
    z = (counts - t * expected) / np.sqrt(t * expected * (1 - grid[None, :]))
    ok = z >= z_min
    lower = np.where(ok, counts - t * expected - 2.0 * np.sqrt(t * expected), -np.inf)
    j = np.argmax(lower, axis=1)
    rows = np.arange(len(counts))
    c, e, g = counts[rows, j], expected[rows, j], grid[j]
    hit = ok.any(axis=1)
    share = np.where(hit, np.clip((c - e) / (n * (1 - g)), 0.0, 1.0), 0.0)
    low = np.where(hit, np.clip((c - t[0, j] * e) / n, 0.0, 1.0), 0.0)
    return np.stack([share, np.where(hit, g, np.nan), z.max(axis=1), low], axis=1)


def _estimate_batch(s: np.ndarray, cw: np.ndarray, z_min: float, tol: float, start: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(share, lam, z, share_low, theta)``, each (B,) (theta (B, 2)), of the sorted positive scores ``s``
    under each row of cumulative row weights ``cw`` (B, n): ``arange(1, n + 1)`` for the data itself,
    cumulated Poisson counts for bootstrap resamples. ``lam`` is NaN where no excess passed the gate."""
    from scipy import stats

    n_b = cw[:, -1]
    grid = _lam_grid(len(s))
    q = _weighted_quantiles(s, cw, _FIT_LEVELS)
    share = np.zeros(len(cw))
    out = np.zeros((len(cw), 4))
    theta = start
    for _ in range(3):  # fit, estimate, refit with the levels of the clean rows alone
        theta, _ = _fit_gamma(q, share, theta)
        a, sc = np.exp(theta).T
        thresholds = stats.gamma.isf(grid[None, :], a[:, None], scale=sc[:, None])  # p <= lam <=> s >= threshold
        below = np.searchsorted(s, thresholds, side="left")  # (B, G): rows of s below each threshold
        counts = n_b[:, None] - np.where(below > 0, np.take_along_axis(cw, np.maximum(below - 1, 0), axis=1), 0.0)
        out = _excess(counts, n_b, grid, z_min, tol)
        settled = np.all(np.abs(out[:, 0] - share) < 0.5 / n_b)
        share = out[:, 0].copy()
        if settled:
            break
    return out[:, 0], out[:, 1], out[:, 2], out[:, 3], theta


def _bootstrap(s: np.ndarray, n_boot: int, seed: int, z_min: float, tol: float, start: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """``(share, share_low)`` of ``n_boot`` Poisson-bootstrap resamples of the sorted scores ``s`` (each row's
    count ~ Poisson(1): no re-sorting), in chunks of at most 2^24 weights."""
    gen = np.random.default_rng(seed)
    n, shares, lows = len(s), [], []
    chunk = max(1, min(n_boot, (1 << 24) // n))
    for c in range(0, n_boot, chunk):
        m = min(chunk, n_boot - c)
        cw = np.cumsum(gen.poisson(1.0, (m, n)), axis=1, dtype=np.float64)
        cw[cw[:, -1] == 0, -1] = 1.0  # an empty resample (n tiny): no rows, share 0
        sh, _, _, low, _ = _estimate_batch(s, cw, z_min, tol, np.repeat(start, m, axis=0))
        shares.append(sh)
        lows.append(low)
    return np.concatenate(shares), np.concatenate(lows)


def estimate_share(scores: Any, *, detector: str | None = None, n_boot: int = 200, level: float = 0.95,
                   z_min: float = 3.0, tail_tolerance: float = TAIL_TOLERANCE, seed: int = 0) -> ShareEstimate:
    """Estimate the poisoned share of a set from its (N,) scores (higher = more suspicious).

    Args:
        scores: (N,) scores of one detector over the whole set (NaN/inf rows are left out, counted).
        detector: the detector's name (recorded).
        n_boot: bootstrap resamples of the interval (0: no bootstrap; the interval is then
            ``[share_low, share]``, the count beyond the tolerated tail to the point estimate).
        level: nominal coverage of the interval.
        z_min: the binomial z an excess must reach to count (below it the estimate is 0).
        tail_tolerance: how many times heavier than fitted the null's tail may be (the gate and the
            interval's low end count only the rows beyond it).
        seed: seed of the bootstrap.

    Returns:
        A :class:`ShareEstimate` (method and reason in words).

    Raises:
        ConfigError: fewer than 20 finite scores, or ``level`` / ``n_boot`` out of range.
    """
    if not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1), got {level}")
    if n_boot < 0:
        raise ConfigError(f"n_boot must be >= 0, got {n_boot}")
    s, shift, n_bad = _prepare(scores)
    n = len(s)
    share, lam, z, low, theta = (v[0] for v in _estimate_batch(s, np.arange(1, n + 1, dtype=np.float64)[None, :],
                                                                 z_min, tail_tolerance))
    share, low, z = float(share), float(low), float(z)
    lam = None if np.isnan(lam) else float(lam)
    boot_share, boot_low = np.array([share]), np.array([low])
    if n_boot:
        boot_share, boot_low = _bootstrap(s, n_boot, seed, z_min, tail_tolerance, theta[None, :])
    lo = min(float(np.quantile(boot_low, (1 - level) / 2)), low, share)
    hi = max(float(np.quantile(boot_share, (1 + level) / 2)), share)
    fit = np.exp(theta)
    est = ShareEstimate(share=share, low=lo, high=hi, level=level, n_rows=n, n_estimated=int(round(share * n)),
                        lam=lam, z=z, null={"family": "gamma", "shape": float(fit[0]), "scale": float(fit[1]), "shift": shift,
                                            "tail_tolerance": tail_tolerance},
                        n_boot=int(n_boot), seed=int(seed), detector=detector, n_nonfinite=n_bad)
    est.reason = (f"{est.describe()}; {METHOD}" if lam is not None else
                  f"no excess over the null: the largest tail z was {z:.2f} < {z_min:g}, so the estimated "
                  f"share is 0 (interval [{lo:.2%}, {hi:.2%}]); {METHOD}")
    return est


def null_pvalues(scores: Any, est: ShareEstimate) -> np.ndarray:
    """(N,) p-values of ``scores`` under the null fitted in ``est`` (NaN and -inf scores -> p = 1, +inf -> 0)."""
    from scipy import stats

    s = np.asarray(scores, dtype=np.float64) + est.null["shift"]
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
