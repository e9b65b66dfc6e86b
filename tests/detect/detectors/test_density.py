"""Density scores: exact values on a hand-made example, and the numerical guards."""
from math import exp, log

import numpy as np
import pytest

from clipguard.detect import DETECTORS
from clipguard.detect.detectors.dao import dao
from clipguard.detect.detectors.slof import slof
from clipguard.detect.neighbours import kdistance, knn_search, lid_mle, neighbour_stats
from clipguard.detect.neighbours.stats import EPS, LID_MAX
from clipguard.errors import ConfigError
from detect_helpers import engine_scores

# --- The hand-made example -------------------------------------------------------------
# Six unit vectors in 5-D with coordinates in multiples of 1/4 (the squared integer entries
# of every row sum to 16). They are exact in float32 and every dot product is an exact
# multiple of 1/16, so the float32 kNN returns the exact distances and the scores can be
# compared to 1e-9. (Points on a 2-D unit circle cannot do that: cos/sin of any non-axis
# angle are rounded in float32, which moves the cosine distances by ~1e-8.)
HAND = np.array([
    [-1, -1, -1, -2, -3],  # P0
    [-1, -2, +1, -3, -1],  # P1
    [-1, -2, -1, -1, -3],  # P2
    [-1, +2, -1, +3, +1],  # P3: the outlier, far from everybody
    [+1, -1, -3, -2, -1],  # P4
    [+1, -1, -1, -2, -3],  # P5
], dtype=np.float64) / 4
K = 2
# Integer dots of the rows above (x4 each), and cosine distances 1 - <a,b> = (16 - dot)/16:
#          dot: P0  P1  P2  P3  P4  P5      16*distance: P0  P1  P2  P3  P4  P5
#   P0          16  11  15  -9  10  14                    0   5   1  25   6   2
#   P1          11  16  10 -14   5   9                    5   0   6  30  11   7
#   P2          15  10  16  -8   9  13                    1   6   0  24   7   3
#   P3          -9 -14  -8  16  -7 -11                   25  30  24   0  23  27
#   P4          10   5   9  -7  16  12                    6  11   7  23   0   4
#   P5          14   9  13 -11  12  16                    2   7   3  27   4   0
# k = 2 nearest neighbours, self excluded (16*d1, 16*d2; the 3rd is strictly farther, so the
# neighbour sets are unique):
#   P0: P2 (1), P5 (2)    [3rd: P1, 5]        P3: P4 (23), P2 (24)  [3rd: P0, 25]
#   P1: P0 (5), P2 (6)    [3rd: P5, 7]        P4: P5 (4),  P0 (6)   [3rd: P2, 7]
#   P2: P0 (1), P5 (3)    [3rd: P1, 6]        P5: P0 (2),  P2 (3)   [3rd: P4, 4]
# Not symmetric: P3's neighbours P4, P2 do not have P3 as a neighbour; nor do P0, P2 have P1;
# nor does P5 have P4.
HAND_NN = np.array([[2, 5], [0, 2], [0, 5], [4, 2], [5, 0], [0, 2]])
HAND_D16 = np.array([[1, 2], [5, 6], [1, 3], [23, 24], [4, 6], [2, 3]])

# kdist = d2:   [2, 6, 3, 24, 6, 3] / 16
KDIST = np.array([2, 6, 3, 24, 6, 3]) / 16
# LID with k = 2: -1 / ((ln(d1/d2) + ln(d2/d2)) / 2) = 2 / ln(d2/d1)
LID = np.array([2 / log(2), 2 / log(6 / 5), 2 / log(3), 2 / log(24 / 23), 2 / log(3 / 2),
                2 / log(3 / 2)])
# SLOF = mean over the 2 neighbours o of kdist(q) / kdist(o)   (kdists in 1/16):
#   P0: (2/3 + 2/3)/2 = 2/3         P3: (24/6 + 24/3)/2 = (4 + 8)/2 = 6
#   P1: (6/2 + 6/3)/2 = 5/2         P4: (6/3 + 6/2)/2 = 5/2
#   P2: (3/2 + 3/3)/2 = 5/4         P5: (3/2 + 3/3)/2 = 5/4
SLOF = np.array([2 / 3, 5 / 2, 5 / 4, 6, 5 / 2, 5 / 4])
# DAO = mean over o of (kdist(q)/kdist(o)) ** LID(o):
#   P0: o = P2 (LID 2/ln3), P5 (LID 2/ln1.5): ((2/3)**(2/ln3) + (2/3)**(2/ln1.5)) / 2,
#       and (2/3)**(2/ln1.5) = exp(2 ln(2/3) / ln(3/2)) = exp(-2)
#   P1: o = P0, P2: (3**(2/ln2) + 2**(2/ln3)) / 2
#   P2: o = P0, P5: ((3/2)**(2/ln2) + 1) / 2
#   P3: o = P4, P2: (4**(2/ln1.5) + 8**(2/ln3)) / 2
#   P4: o = P5, P0: (2**(2/ln1.5) + 3**(2/ln2)) / 2
#   P5: o = P0, P2: ((3/2)**(2/ln2) + 1) / 2
DAO = np.array([
    ((2 / 3) ** (2 / log(3)) + exp(-2)) / 2,
    (3 ** (2 / log(2)) + 2 ** (2 / log(3))) / 2,
    ((3 / 2) ** (2 / log(2)) + 1) / 2,
    (4 ** (2 / log(3 / 2)) + 8 ** (2 / log(3))) / 2,
    (2 ** (2 / log(3 / 2)) + 3 ** (2 / log(2))) / 2,
    ((3 / 2) ** (2 / log(2)) + 1) / 2,
])
EXPECTED = {"kdist": KDIST, "lid": LID, "slof": SLOF, "dao": DAO}


def test_hand_example_neighbours_are_exact():
    D, I = knn_search(HAND, HAND, K, exclude_self=True)
    np.testing.assert_array_equal(I, HAND_NN)
    np.testing.assert_array_equal(D.astype(np.float64), HAND_D16 / 16)  # exact, not approx


@pytest.mark.parametrize("name", ["kdist", "lid", "slof", "dao"])
def test_hand_example_detectors(name):
    got = DETECTORS.get(name)(k=K).fit_score(HAND)
    np.testing.assert_allclose(got, EXPECTED[name], rtol=0, atol=1e-9)
    # the outlier P3 is the most suspicious for every detector
    assert int(np.argmax(got)) == 3


@pytest.mark.parametrize("backend", ["blocked", "faiss"])
def test_hand_example_engine_scores(backend):
    got = engine_scores(HAND, k=K, backend=backend)
    assert list(got) == ["kdist", "lid", "slof", "dao"]
    for name, want in EXPECTED.items():
        assert got[name].dtype == np.float64
        np.testing.assert_allclose(got[name], want, rtol=0, atol=1e-9)


def test_hand_example_pure_functions():
    D = HAND_D16 / 16
    kd, lid = neighbour_stats(D)
    np.testing.assert_allclose(kd, KDIST, rtol=0, atol=1e-12)
    np.testing.assert_allclose(lid, LID, rtol=0, atol=1e-9)
    np.testing.assert_allclose(slof(D, HAND_NN, kd), SLOF, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dao(D, HAND_NN, kd, lid), DAO, rtol=0, atol=1e-9)


def test_hand_example_detects_wrong_neighbour_lists():
    """The example is sensitive to the published code's indexing defect."""
    D = HAND_D16 / 16
    kd, lid = neighbour_stats(D)
    # defect: indices computed with the self column removed, used on the un-removed list
    shifted = HAND_NN - (HAND_NN > np.arange(6)[:, None])
    assert abs(slof(D, shifted, kd)[3] - SLOF[3]) > 0.1
    assert abs(dao(D, shifted, kd, lid)[3] - DAO[3]) > 0.1
    # defect: reference stats with the zero self-distance included (k-th distance is then d_{k-1})
    with_self = np.hstack([np.zeros((6, 1)), D])[:, :K]
    kd_bad, lid_bad = neighbour_stats(with_self)
    assert not np.allclose(slof(D, HAND_NN, kd_bad), SLOF)
    assert not np.allclose(lid_bad, LID)


def _published_neighbour_lists(x, k):
    """The published detector's neighbour lists, restated in NumPy to reproduce its defect: the
    self column is deleted from each row of the distance matrix, the shortened row is sorted,
    and the resulting positions are then used to index the FULL reference list."""
    dist = 1.0 - x @ x.T
    no_self = np.array([np.delete(dist[i], i) for i in range(len(x))])  # (n, n - 1)
    return np.argsort(no_self, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("kwargs", [
    dict(reference="global", backend="blocked"),
    dict(reference="global", backend="faiss"),
    dict(reference="batch", batch_size=6),  # one batch holding everything
    dict(reference="reference", reference_size=6),  # a reference of everything (FAISS)
    dict(reference="multi_reference", reference_size=6, n_references=2),
])
def test_published_index_defect_reproduced_and_ours_unaffected(kwargs):
    D = HAND_D16 / 16
    kd, lid = neighbour_stats(D)
    bad = _published_neighbour_lists(HAND, K)
    # the defect on the toy example: 5 of the 6 lists are wrong, and P1, P3, P4 even list
    # themselves (P3: [P3, P2] instead of [P4, P2])
    np.testing.assert_array_equal(bad[3], [3, 2])
    assert (bad != HAND_NN).any(axis=1).sum() == 5
    assert [i for i in range(6) if i in bad[i]] == [1, 3, 4]
    assert abs(slof(D, bad, kd)[3] - SLOF[3]) > 1 and abs(dao(D, bad, kd, lid)[3] - DAO[3]) > 1
    # every neighbour path of ours gives the exact hand-computed values
    got = engine_scores(HAND, ["kdist", "lid", "slof", "dao"], k=K, **kwargs)
    for name, want in EXPECTED.items():
        np.testing.assert_allclose(got[name], want, rtol=0, atol=1e-9)


# --- guards and conventions --------------------------------------------------------------

def test_lid_all_equal_distances_is_large_finite():
    D = np.array([[0.3, 0.3, 0.3], [0.0, 0.0, 0.0], [0.1, 0.2, 0.4]])
    lid = lid_mle(D)
    assert lid[0] == LID_MAX and lid[1] == LID_MAX
    # third row: -1 / ((ln(1/4) + ln(1/2) + 0) / 3) = 3 / ln 8
    assert lid[2] == pytest.approx(3 / log(8), abs=1e-12)


def test_duplicates_give_finite_scores():
    # a query whose neighbours are exact duplicates (distance 0) and a reference point with
    # zero k-distance: distances are clamped to EPS before logs and divisions
    D = np.array([[0.0, 0.0], [0.0, 0.5], [0.2, 0.5]])
    I = np.array([[1, 2], [0, 2], [0, 1]])
    kd, lid = neighbour_stats(np.array([[0.0, 0.0], [0.0, 0.5], [0.2, 0.5]]))
    assert kd[0] == 0.0
    for s in (lid_mle(D), slof(D, I, kd), dao(D, I, kd, lid)):
        assert np.isfinite(s).all()
    assert slof(D, I, kd)[1] == pytest.approx((0.5 / EPS + 0.5 / 0.5) / 2)


def test_dao_is_capped_not_inf():
    D = np.array([[0.1, 2.0]])
    got = dao(D, np.array([[0, 0]]), np.array([1e-12]), np.array([1e6]))
    assert np.isfinite(got).all() and got[0] > 1e308


def test_dao_matches_direct_formula_on_random_data():
    rng = np.random.default_rng(0)
    D = np.sort(rng.uniform(0.1, 0.9, size=(50, 5)), axis=1)
    I = rng.integers(0, 30, size=(50, 5))
    kd = rng.uniform(0.2, 0.8, size=30)
    lid = rng.uniform(1, 10, size=30)
    direct = np.mean((D[:, -1:] / kd[I]) ** lid[I], axis=1)
    np.testing.assert_allclose(dao(D, I, kd, lid), direct, rtol=1e-12)
    np.testing.assert_allclose(slof(D, I, kd), np.mean(D[:, -1:] / kd[I], axis=1), rtol=1e-12)
    np.testing.assert_array_equal(kdistance(D), D[:, -1])


def test_input_validation():
    with pytest.raises(ConfigError, match="sorted ascending"):
        kdistance(np.array([[0.5, 0.1]]))
    with pytest.raises(ConfigError, match="shape"):
        lid_mle(np.array([0.1, 0.2]))
    with pytest.raises(ConfigError, match=r"\[0, 3\)"):
        slof(np.array([[0.1, 0.2]]), np.array([[0, 3]]), np.ones(3))
    with pytest.raises(ConfigError, match="same shape"):
        dao(np.array([[0.1, 0.2]]), np.array([[0, 1]]), np.ones(3), np.ones(2))
