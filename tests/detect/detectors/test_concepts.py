"""Caption concepts: seeded k-means, the choice of k, min_size."""
import numpy as np

from clipguard.detect.detectors.concepts import candidate_n_concepts, fit_concepts
from clipguard.detect.detectors.spectral import Spectral


def _captions(n=600, c=6, seed=0):
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, c, n)
    return rng.normal(size=(c, 16))[lab] + 0.1 * rng.normal(size=(n, 16)), lab


def test_seeded_and_deterministic():
    t, lab = _captions()
    a, b = fit_concepts(t, seed=3), fit_concepts(t, seed=3)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centres, b.centres)
    # the silhouette picks the 6 true concepts; they match the labels up to renaming
    assert len(a.sizes) == 6 and a.sizes.sum() == 600
    pairs = set(zip(lab.tolist(), a.labels.tolist()))
    assert len(pairs) == 6
    np.testing.assert_array_equal(a.assign(t), a.labels)


def test_candidates_and_fixed_k():
    assert candidate_n_concepts(4) == [1]
    assert candidate_n_concepts(600) == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 16]
    assert max(candidate_n_concepts(10**7)) == 91
    t, _ = _captions()
    assert len(fit_concepts(t, n_concepts=3).sizes) == 3
    assert len(fit_concepts(np.ones((50, 4)), n_concepts=5).sizes) == 1  # one distinct caption


def test_min_size():
    t, lab = _captions(n=300, c=3)
    t = np.vstack([t, np.full((10, 16), 9.0) + 0.01 * np.random.default_rng(1).normal(size=(10, 16))])
    x = np.random.default_rng(2).normal(size=(310, 8))
    det = Spectral(n_concepts=4, min_size=20, seed=0)
    s = det.fit_score(x, text=t)
    small = int(np.argmin(det.concepts_.sizes))
    assert det.concepts_.sizes[small] == 10 and small not in det.states_
    assert np.all(s[300:] == 0) and np.all(s[:300] > 0)
    assert len(det.states_) == 3
