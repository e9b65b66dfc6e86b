"""The poisoned-share estimate of a scan (detect/share.py): synthetic score mixtures with known shares,
clean data, the Benjamini-Hochberg cut against a hand computation, the trade-off curve, bad input.

The tests written for the fitted Gamma null pin ``null="gamma"``; the IFR envelope (the default) has its own
section at the end."""
import json
import math

import numpy as np
import pytest

from clipguard.detect.share import (DEFAULT_NULL, TRADEOFF_SHARES, ShareEstimate, bh_cut, envelope_pvalues, estimate_share,
                                    null_pvalues, precision_cut, tradeoff_curve)
from clipguard.errors import ConfigError


def gamma_mixture(n: int, share: float, seed: int, shape: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """(n,) scores and (n,) poisoned flags: clean ~ Gamma(shape, 1/shape) (mean 1), the round(share n)
    poisoned rows ~ N(5, 0.4): far in the clean rows' upper tail (higher = more suspicious)."""
    gen = np.random.default_rng(seed)
    k = int(round(share * n))
    s = np.concatenate([gen.gamma(shape, 1.0 / shape, n - k), gen.normal(5.0, 0.4, k)])
    y = np.arange(n) >= n - k
    perm = gen.permutation(n)
    return s[perm], y[perm]


def fisher_mixture(n: int, share: float, seed: int, m: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """What the default ``fused`` score is: ``-mean(ln p)`` over m independent uniform p-values per clean
    row (exactly Gamma(m, 1/m)); a poisoned row has a tiny p (< 1e-6) in ONE component, the others uniform."""
    gen = np.random.default_rng(seed)
    k = int(round(share * n))
    p = gen.uniform(size=(n, m))
    y = np.zeros(n, dtype=bool)
    y[gen.choice(n, k, replace=False)] = True
    p[y, 0] = gen.uniform(0.0, 1e-6, k)
    return -np.log(p).mean(axis=1), y


def tolerance(true_share: float) -> float:
    """The stated accuracy of the point estimate on well-separated poison: 0.1 % of the rows plus 10 % of
    the true share (measured worst over 20 seeds at 10,000 rows, Gamma and Fisher mixtures: 0.06-0.08 % abs
    at 0.5, 1 and 5 % poison)."""
    return 0.001 + 0.1 * true_share


# ---- the estimator on mixtures with known shares ------------------------------------------------------------

@pytest.mark.parametrize("share", [0.005, 0.01, 0.05])
def test_gamma_mixture_share_is_inside_the_interval_and_near_the_truth(share):
    for seed, shape in ((0, 3.0), (1, 4.0), (2, 5.0)):
        s, y = gamma_mixture(10_000, share, seed, shape)
        est = estimate_share(s, null="gamma", n_boot=50, seed=seed)
        true = y.mean()
        assert est.low <= true <= est.high, (seed, shape, est)
        assert abs(est.share - true) <= tolerance(true), (seed, shape, est.share, true)
        assert est.lam is not None and est.z >= 3.0
        assert est.n_estimated == round(est.share * 10_000) and est.n_rows == 10_000
        assert est.low <= est.share <= est.high and est.high - est.low < 0.02


@pytest.mark.parametrize("share", [0.005, 0.01, 0.05])
def test_fisher_mixture_share_is_inside_the_interval_and_near_the_truth(share):
    for seed in (0, 1):
        s, y = fisher_mixture(10_000, share, seed)
        est = estimate_share(s, null="gamma", n_boot=50, seed=seed, detector="fused")
        true = y.mean()
        assert est.low <= true <= est.high, (seed, est)
        assert abs(est.share - true) <= tolerance(true), (seed, est.share, true)
        # the null is the clean rows' exact law, Gamma(4, 1/4): the fit must find it
        assert est.null["family"] == "gamma" and est.null["shift"] == 0.0
        assert est.null["shape"] == pytest.approx(4.0, rel=0.25)
        assert est.null["shape"] * est.null["scale"] == pytest.approx(1.0, rel=0.1)
        assert "fused_score" in est.describe() and est.reason.startswith("estimated poisoned share")


def test_default_bootstrap_covers_the_truth():
    """The defaults (n_boot 200, level 0.95, seed 0) on a mixture: the interval holds the truth and has width."""
    s, y = gamma_mixture(10_000, 0.01, seed=3, shape=4.0)
    est = estimate_share(s, null="gamma")
    assert est.n_boot == 200 and est.level == 0.95 and est.seed == 0
    assert est.low < y.mean() < est.high and est.low < est.share < est.high
    assert est.high - est.low < 0.01
    assert abs(est.share - y.mean()) <= tolerance(y.mean())


def test_default_bootstrap_on_clean_scores_is_an_interval_at_zero():
    """The defaults on clean Fisher scores: share 0, and even the bootstrap's upper end stays under the
    issue's 0.5 %."""
    s = -np.log(np.random.default_rng(21).uniform(size=(5_000, 4))).mean(axis=1)
    est = estimate_share(s, null="gamma", detector="fused")
    assert est.n_boot == 200
    assert est.share == 0.0 and est.n_estimated == 0 and est.low == 0.0 and est.lam is None
    assert 0.0 <= est.high <= 0.005
    assert est.reason.startswith("no excess over the null") and "fused_score" in est.describe()


def test_poison_the_scores_do_not_separate_is_not_counted():
    """Poison ranked among the clean rows (the same law) leaves no tail excess: the estimate is 0, as the
    docstring states (no estimate from scores counts what the scores do not separate)."""
    gen = np.random.default_rng(5)
    s = gen.gamma(4.0, 0.25, 10_000)  # 5 % of these are "poisoned" but scored like the clean rows
    est = estimate_share(s, null="gamma", n_boot=0)
    assert est.share == 0.0 and est.n_estimated == 0 and est.lam is None
    assert est.reason.startswith("no excess over the null")


@pytest.mark.parametrize("share", [0.12, 0.2])
def test_the_default_envelope_finds_a_large_separated_share(share):
    """Where the Gamma fails (below), the envelope's lowest chords still lie under the poison (measured: right
    within the tolerance at 12 and 20 % over three seeds; it reads 0 at 30 %, when the poison reaches them)."""
    s, y = gamma_mixture(10_000, share, seed=0)
    assert abs(estimate_share(s, n_boot=0).share - y.mean()) <= tolerance(y.mean())


@pytest.mark.xfail(strict=True, reason="known limit of the Gamma null: poison above ~10 % reaches the 55-90 % fit "
                                       "window, the null swallows it, and the estimate is erratic (0 at 12, 20, 30 %)")
def test_a_large_separated_share_is_found():
    s, y = gamma_mixture(10_000, 0.2, seed=0)
    est = estimate_share(s, null="gamma", n_boot=0)
    assert abs(est.share - y.mean()) <= tolerance(y.mean())


# ---- clean data -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [5_000, 20_000])
def test_clean_scores_give_no_or_a_tiny_share(n):
    for seed in range(3):
        gen = np.random.default_rng(100 + seed)
        for s in (gen.gamma(3.0 + seed, 1.0 / (3.0 + seed), n),  # Gamma(3..5) clean scores
                  -np.log(gen.uniform(size=(n, 4))).mean(axis=1)):  # Fisher's score on uniform p-values
            est = estimate_share(s, null="gamma", n_boot=0)
            assert est.share <= 0.005 and est.n_estimated <= 0.005 * n, (n, seed, est)
            assert est.share == 0.0  # measured: 0 on all 90 clean sets of 5k-20k rows tried (largest z 2.45)


def test_clean_scores_shifted_below_zero_are_fitted_after_the_shift():
    s = np.random.default_rng(3).gamma(4.0, 0.25, 10_000) - 5.0  # all negative: shifted by the minimum
    est = estimate_share(s, null="gamma", n_boot=5)
    assert est.null["shift"] == pytest.approx(-s.min(), rel=1e-3) and est.share == 0.0
    assert est.high <= 0.005
    p = null_pvalues(s, est)
    assert p.shape == s.shape and np.all((p >= 0) & (p <= 1))
    assert p[np.argmax(s)] == p.min()  # higher score, smaller p


# ---- the Benjamini-Hochberg cut ---------------------------------------------------------------------------

BH_P = [0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216]
# N = 10; BH rejects the k smallest, k the LARGEST with p_(k) <= q k / N.
#  q = 0.05: thresholds 0.005 k = .005 .010 .015 .020 .025 .030 .035 .040 .045 .050
#            p_(1) = .001 <= .005 yes; p_(2) = .008 <= .010 yes; p_(3) = .039 > .015, and every later
#            p_(k) exceeds 0.005 k (.041 > .020, .042 > .025, .06 > .03, .074 > .035, .205 > .04,
#            .212 > .045, .216 > .05)                                                   -> k = 2
#  q = 0.1:  thresholds 0.01 k = .01 .02 .03 .04 .05 .06 .07 .08 .09 .10
#            k=1,2 yes; k=3 (.039 > .03) no; k=4 (.041 > .04) no; k=5 (.042 <= .05) YES; k=6 (.06 <= .06,
#            equal counts) YES; k=7 (.074 > .07) no; k=8..10 (.205, .212, .216 > .10) no  -> k = 6
#            (step-up: k=3 and k=4 fail, yet they are rejected with the 6 smallest)
#  q = 0.2:  thresholds 0.02 k = .02 .04 .06 .08 .10 .12 .14 .16 .18 .20
#            k=7: .074 <= .14 yes; k=8: .205 > .16; k=9: .212 > .18; k=10: .216 > .20     -> k = 7
#  q = 0.25: thresholds 0.025 k = ... .175 .200 .225 .250
#            k=8: .205 > .200 no, but k=9: .212 <= .225 and k=10: .216 <= .25            -> k = 10 (all)


@pytest.mark.parametrize("fdr,expected", [(0.05, 2), (0.1, 6), (0.2, 7), (0.25, 10)])
def test_bh_cut_equals_the_hand_computed_cut(fdr, expected):
    assert bh_cut(BH_P, fdr) == expected
    shuffled = np.random.default_rng(0).permutation(BH_P)  # the order of the rows does not matter
    assert bh_cut(shuffled, fdr) == expected


def test_bh_cut_edge_cases():
    assert bh_cut([0.006, 0.5, 0.9], 0.01) == 0  # 0.006 > 0.01 * 1/3 and nothing later qualifies
    assert bh_cut(np.full(50, 0.3), 0.1) == 0
    assert bh_cut([1e-9, 2e-9, 1e-8, 1e-7], 0.05) == 4  # all rejected
    assert bh_cut([], 0.1) == 0
    assert bh_cut(np.array([[0.001], [0.5]]), 0.1) == 1  # (N, 1) is read as N values
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="--fdr must be in"):
            bh_cut(BH_P, bad)


def test_bh_cut_on_null_pvalues_keeps_the_false_discoveries_near_the_rate():
    fdp = []
    for seed in range(8):
        s, y = fisher_mixture(10_000, 0.01, seed=seed)
        p = null_pvalues(s, estimate_share(s, null="gamma", n_boot=0))
        k = bh_cut(p, 0.1)
        assert k > 0.9 * y.sum()  # tiny-p poison: BH finds nearly all of it
        fdp.append(1.0 - y[np.argsort(p, kind="stable")[:k]].mean())
    # the false-discovery proportion varies (0.08-0.19 here: ~12 false of ~115); its mean is the rate's
    assert np.mean(fdp) <= 0.13 and max(fdp) <= 0.25


# ---- the trade-off curve ----------------------------------------------------------------------------------

def test_tradeoff_curve_measured_columns_equal_a_direct_computation():
    n = 8_000
    s, y = gamma_mixture(n, 0.02, seed=11)
    est = estimate_share(s, null="gamma", n_boot=0)
    curve = tradeoff_curve(s, est, y)
    order = np.argsort(-s, kind="stable")
    expected_ks = sorted({math.ceil(f * n) for f in TRADEOFF_SHARES} | {est.n_estimated})
    assert curve["n_removed"].tolist() == expected_ks
    for row in curve.itertuples():
        tp = int(y[order[:row.n_removed]].sum())
        assert row.precision == pytest.approx(tp / row.n_removed)
        assert row.recall == pytest.approx(tp / y.sum())
        assert row.share_removed == pytest.approx(row.n_removed / n)
        assert 0.0 <= row.expected_precision <= 1.0 and 0.0 <= row.expected_recall <= 1.0
        assert 0.0 <= row.clean_lost_share * n <= row.n_removed + 1e-9
    assert np.all(np.diff(curve["clean_lost_share"]) >= -1e-12)  # a larger cut loses no fewer clean rows
    at_est = curve[curve["is_estimate"]]
    assert len(at_est) == 1 and int(at_est["n_removed"].iloc[0]) == est.n_estimated
    # on separated poison the estimate's own prediction matches what ground truth measures
    assert at_est["precision"].iloc[0] >= 0.95 and at_est["recall"].iloc[0] >= 0.9
    assert at_est["expected_precision"].iloc[0] == pytest.approx(at_est["precision"].iloc[0], abs=0.05)
    # beyond the poison, every further row removed is clean: expected precision falls as measured does
    last = curve.iloc[-1]
    assert last["share_removed"] == pytest.approx(0.3)
    assert last["expected_precision"] == pytest.approx(last["precision"], abs=0.03)


def test_tradeoff_curve_without_ground_truth_and_without_an_estimate():
    s = np.random.default_rng(2).gamma(4.0, 0.25, 3_000)
    est = estimate_share(s, null="gamma", n_boot=0)
    assert est.n_estimated == 0
    curve = tradeoff_curve(s, est)
    assert "precision" not in curve.columns and "recall" not in curve.columns
    assert not curve["is_estimate"].any() and curve["expected_recall"].isna().all()
    assert len(curve) == len(TRADEOFF_SHARES)


def test_same_seed_gives_the_identical_estimate_and_curve():
    s, y = fisher_mixture(4_000, 0.05, seed=9)
    a, b = estimate_share(s, null="gamma", n_boot=4, seed=4), estimate_share(s, null="gamma", n_boot=4, seed=4)
    assert a.as_dict() == b.as_dict()
    assert tradeoff_curve(s, a, y).equals(tradeoff_curve(s, b, y))
    other = estimate_share(s, null="gamma", n_boot=4, seed=5)
    assert other.share == a.share  # the point estimate uses no randomness; only the interval does


# ---- bad input --------------------------------------------------------------------------------------------

def test_fewer_than_20_finite_scores_is_a_config_error():
    s = np.r_[np.random.default_rng(0).gamma(4.0, 0.25, 19), [np.nan] * 30, [np.inf] * 5]
    with pytest.raises(ConfigError, match="at least 20 finite scores, got 19"):
        estimate_share(s)
    with pytest.raises(ConfigError, match="at least 20"):
        estimate_share([])


def test_nonfinite_scores_are_left_out_and_counted():
    gen = np.random.default_rng(1)
    clean = gen.gamma(4.0, 0.25, 2_000)
    s = np.r_[clean, [np.nan] * 7, [np.inf] * 3, [-np.inf] * 2]
    est = estimate_share(s, null="gamma", n_boot=5)
    assert est.n_nonfinite == 12 and est.n_rows == 2_000
    assert est.as_dict() == {**estimate_share(clean, null="gamma", n_boot=5).as_dict(), "n_nonfinite": 12}
    p = null_pvalues(s, est)
    assert np.all(p[2_000:2_007] == 1.0)  # NaN scores: p = 1


@pytest.mark.parametrize("kwargs,match", [({"level": 1.0}, "level must be"), ({"level": 0.0}, "level must be"),
                                          ({"n_boot": -1}, "n_boot must be"), ({"null": "pareto"}, "null must be")])
def test_invalid_options_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        estimate_share(np.random.default_rng(0).gamma(4.0, 0.25, 100), **kwargs)


def test_share_estimate_records_what_run_json_needs():
    s, _ = fisher_mixture(3_000, 0.05, seed=1)
    est = estimate_share(s, null="gamma", n_boot=0, detector="fused")
    d = est.as_dict()
    assert isinstance(est, ShareEstimate)
    assert {"share", "low", "high", "n_rows", "n_estimated", "null", "method", "reason", "detector"} <= set(d)
    # no resamples: the high end is the point; the low end is the count beyond the 1.5x heavier null tail
    assert est.n_boot == 0 and est.high == est.share and 0.0 < est.low <= est.share


def test_precision_cut_is_storey_bh_at_fdr_one_half_and_nothing_without_excess():
    """``precision_cut``: the largest k with 1 - N (1 - share) p_(k) / k >= 0.5, checked row by row."""
    rng = np.random.default_rng(7)
    n, bad = 4000, 100
    s = np.r_[rng.gamma(4.0, 0.25, n - bad), rng.normal(3.6, 0.3, bad)]  # AUROC ~0.99, as where the goal applies
    est = estimate_share(s, null="gamma", n_boot=20)
    k = precision_cut(s, est, 0.5)
    p = np.sort(null_pvalues(s, est))
    expected_precision = 1 - n * (1 - est.share) * p / np.arange(1, n + 1)
    assert expected_precision[k - 1] >= 0.5 and (expected_precision[k:] < 0.5).all()
    assert k >= est.n_estimated
    top = np.argsort(-s)[:k]
    # all the poison goes; the MEASURED precision is near the expected 0.5 (0.476 here: the null is a fit)
    assert (top >= n - bad).sum() >= 0.9 * bad and (top >= n - bad).mean() >= 0.4
    clean = estimate_share(rng.gamma(4.0, 0.25, n), null="gamma", n_boot=20)
    assert clean.share == 0 and precision_cut(rng.gamma(4.0, 0.25, n), clean) == 0
    with pytest.raises(ConfigError, match="min_precision"):
        precision_cut(s, est, 1.0)


# -- the IFR envelope (null="envelope") ---------------------------------------------------------------

def test_envelope_pvalues_equal_a_hand_computation():
    """p(s) = min over the chords whose anchor a <= s of exp(log_bound - beta (s - a)); 1 below every anchor;
    a chord with slope NaN is unused."""
    chords = np.array([[1.0, math.log(0.2), 2.0], [2.0, math.log(0.05), 3.0], [3.0, math.log(0.01), np.nan]])
    p = envelope_pvalues([0.5, 1.5, 2.5, 3.5], chords)
    # 0.5: no anchor below -> 1;  1.5: 0.2 e^-1;  2.5: min(0.2 e^-3, 0.05 e^-1.5) = 0.2 e^-3;
    # 3.5: min(0.2 e^-5, 0.05 e^-4.5) = 0.05 e^-4.5 (the third chord is unused)
    expected = [1.0, 0.2 * math.exp(-1), 0.2 * math.exp(-3), 0.05 * math.exp(-4.5)]
    np.testing.assert_allclose(p, expected, rtol=1e-12)


def test_envelope_of_an_exact_exponential_has_the_true_slope():
    """Scores at the exact quantiles of Exp(1): every chord's slope is the hazard rate 1 (margin 0), and the bound
    at the chord's anchor is the true survival there."""
    n = 100_000
    s = -np.log1p(-(np.arange(n) + 0.5) / n)
    est = estimate_share(s, n_boot=0, null="envelope", margin=0.0)
    chords = np.array(est.null["chords"], dtype=float)
    assert est.share == 0 and est.null["family"] == "envelope"
    np.testing.assert_allclose(chords[:, 2], 1.0, rtol=0.02)
    np.testing.assert_allclose(np.exp(chords[:, 1]), np.exp(-chords[:, 0]), rtol=0.02)


@pytest.mark.parametrize("name", ["gamma1", "gamma4", "normal", "fisher4"])
def test_envelope_pvalues_are_conservative_on_clean_scores_with_a_rising_hazard(name):
    """Clean scores whose hazard rate does not fall: no share, and at most about lam of the rows have p <= lam
    (measured 0.94-0.99 lam at lam = 0.05 and 0.01, 50,000 rows)."""
    gen = np.random.default_rng(3)
    s = {"gamma1": lambda: gen.gamma(1.0, 1.0, 50_000), "gamma4": lambda: gen.gamma(4.0, 0.25, 50_000),
         "normal": lambda: gen.normal(0.0, 1.0, 50_000), "fisher4": lambda: fisher_mixture(50_000, 0.0, 3)[0]}[name]()
    est = estimate_share(s, n_boot=0, null="envelope")
    p = null_pvalues(s, est)
    assert est.share == 0
    for lam in (0.05, 0.01):
        assert (p <= lam).mean() <= 1.05 * lam


@pytest.mark.parametrize("share", [0.005, 0.05])
def test_envelope_finds_separated_poison_inside_its_interval(share):
    s, y = gamma_mixture(10_000, share, seed=0)
    est = estimate_share(s, n_boot=50, null="envelope", seed=0)
    assert est.low <= share <= est.high
    assert abs(est.share - share) <= tolerance(share)
    k = precision_cut(s, est)
    top = np.argsort(-s)[:k]
    assert y[top].sum() == y.sum() and y[top].mean() >= 0.5  # all the poison, at precision >= 0.5


def test_envelope_estimate_survives_json_and_gives_the_same_pvalues():
    s, _ = gamma_mixture(5_000, 0.01, seed=2)
    est = estimate_share(s, n_boot=0, null="envelope")
    again = ShareEstimate(**json.loads(json.dumps(est.as_dict())))
    np.testing.assert_array_equal(null_pvalues(s, again), null_pvalues(s, est))
    assert again.method.startswith("tail excess over the IFR envelope") and again.null["family"] == "envelope"


def test_the_default_null_is_the_envelope():
    s, _ = gamma_mixture(3_000, 0.02, seed=5)
    assert DEFAULT_NULL == "envelope" and estimate_share(s, n_boot=0).null["family"] == "envelope"
    assert estimate_share(s, n_boot=0).as_dict() == estimate_share(s, n_boot=0, null="envelope").as_dict()


# ---- the envelope's deep tail: a handful of rows beyond every clean row ---------------------------------------

def _few_far(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n,) scores: Gamma(4) clean rows (an IFR tail) and k rows far beyond all of them (score 12: the clean
    tail puts ~1e-9 of its mass there); ``y`` flags those k."""
    gen = np.random.default_rng(seed)
    s = np.concatenate([gen.gamma(4.0, 0.25, n - k), np.full(k, 12.0) + gen.uniform(0, 0.1, k)])
    return s, np.arange(n) >= n - k


def test_deep_levels_count_a_handful_of_rows_no_other_level_can():
    s, y = _few_far(5_000, 5, seed=0)  # 0.1 %: at 2/n the bound expects 2 rows, and 5 is a z of about 2.1
    est = estimate_share(s, n_boot=0)
    assert est.lam is not None and est.lam * len(s) < 2  # read at a deep level
    assert est.n_estimated == 5 and est.z >= 3.0
    k = precision_cut(s, est)
    top = np.argsort(-s)[:k]
    assert y[top].sum() == 5 and y[top].mean() >= 0.5
    clean = estimate_share(s[~y], n_boot=0)  # the same clean rows alone: nothing, at any level
    assert clean.share == 0.0 and clean.lam is None


def test_deep_gate_is_the_exact_poisson_tail_and_opens_only_where_no_other_level_does():
    from scipy import stats

    from clipguard.detect.share import DEEP_ROWS, _excess, _lam_grid

    n = 5_000
    grid = _lam_grid(n, deep=True)
    d = len(DEEP_ROWS)
    assert np.allclose(grid[:d] * n, sorted(DEEP_ROWS)) and np.array_equal(grid[d:], _lam_grid(n))
    counts = np.zeros((1, len(grid)))
    counts[0, :d] = 5  # 5 rows beyond each deep level; the bound expects 0.05 ... 1 of them
    counts[0, d:] = grid[d:] * n + 3  # an excess of 3 above every other level: z <= 2.1 there
    share, lam, z, low = _excess(counts, np.array([float(n)]), grid, 3.0, 1.0, d)[0]
    tail = stats.poisson.sf(4, grid[:d] * n)  # P(X >= 5), by hand for each deep level
    assert lam * n in DEEP_ROWS and tail[list(grid[:d]).index(lam)] <= stats.norm.sf(3.0)
    assert share == pytest.approx((5 - lam * n) / (n * (1 - lam)))
    assert z == pytest.approx(stats.norm.isf(tail[tail <= stats.norm.sf(3.0)].min()))
    # 7 rows beyond every level: at 2/n (2 expected) that is a z of 3.5, so the reading stays there, where it was
    # without deep levels -- the deep levels' larger lower count (about 6.5 against 2.2) is not looked at
    counts[0, :] = np.r_[np.full(d, 7.0), grid[d:] * n + 5]
    with_deep = _excess(counts, np.array([float(n)]), grid, 3.0, 1.0, d)[0]
    without = _excess(counts[:, d:], np.array([float(n)]), grid[d:], 3.0, 1.0)[0]
    np.testing.assert_array_equal(with_deep, without)
    assert with_deep[1] * n == pytest.approx(2.0)
    # and fewer rows than the exact tail needs: closed
    counts[0, :] = np.r_[np.full(d, 1.0), grid[d:] * n]
    assert _excess(counts, np.array([float(n)]), grid, 3.0, 1.0, d)[0, 0] == 0.0
