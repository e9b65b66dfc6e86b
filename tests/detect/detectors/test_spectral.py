"""``spectral``: the hand-computed signature of a toy concept, a quality floor on synthetic
poison inside a frequent caption concept, and the detector inside a scan."""
import math

import numpy as np
import pytest

from clipguard.detect import Scan
from clipguard.detect.detectors import DETECTORS
from clipguard.detect.detectors.spectral import Spectral, spectral_signature
from clipguard.detect.engine import select_detectors
from clipguard.detect.metrics import detection_metrics
from clipguard.errors import ConfigError
from concept_signals import synthetic_world


def concept_world(n=3000, rate=0.05, seed=0):
    """10 caption concepts with Zipf-like frequencies and ``rate * n`` poisoned samples inside the
    most frequent one, sharing a trigger direction of length 2 (4 noise standard deviations along
    it, small against the 64-D spread): benchmarks/concept_signals.py's world, 32-D captions."""
    return synthetic_world(n=n, rate=rate, seed=seed, dt=32, shuffle=False)


def test_hand_computed_signature():
    # x = (2,2), (0,0), (1,0), (1,2): mean (1,1); centred rows (1,1), (-1,-1), (0,-1), (0,1).
    # X^T X = [[2, 2], [2, 4]]: eigenvalues 3 +- sqrt(5); the top one's vector v ~ (2, 1 + sqrt5),
    # |.|^2 = 10 + 2 sqrt5 = s^2. Projections p = (a, -a, -b, b), a = (3 + sqrt5)/s, b = (1 + sqrt5)/s.
    # median(p) = 0, MAD = (a + b)/2 = (2 + sqrt5)/s.  Scores p^2 / MAD^2:
    #   (3 + sqrt5)^2 / (2 + sqrt5)^2 = (14 + 6 sqrt5)(9 - 4 sqrt5) = 6 - 2 sqrt5
    #   (1 + sqrt5)^2 / (2 + sqrt5)^2 = (6 + 2 sqrt5)(9 - 4 sqrt5) = 14 - 6 sqrt5
    x = np.array([[2.0, 2.0], [0.0, 0.0], [1.0, 0.0], [1.0, 2.0]])
    r5 = math.sqrt(5)
    expected = np.array([6 - 2 * r5, 6 - 2 * r5, 14 - 6 * r5, 14 - 6 * r5])
    np.testing.assert_allclose(spectral_signature(x), expected, rtol=0, atol=1e-12)
    # the paper's unnormalised score p^2 sums to the top eigenvalue 3 + sqrt5
    np.testing.assert_allclose((spectral_signature(x) * ((2 + r5) ** 2 / (10 + 2 * r5))).sum(),
                               3 + r5, atol=1e-12)


def test_one_concept_detector_equals_the_function_on_normalised_rows():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 5)) + 3.0
    text = np.ones((40, 3))  # one caption: one concept
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = Spectral(min_size=10).fit_score(x, text=text)
    assert s.dtype == np.float64 and s.shape == (40,)
    np.testing.assert_allclose(s, spectral_signature(xn.astype(np.float32).astype(np.float64)),
                               rtol=1e-9, atol=1e-12)
    # score_samples with the fitted concept reproduces fit_score (no self-exclusion)
    det = Spectral(min_size=10).fit(x, text=text)
    np.testing.assert_allclose(det.score_samples(x, text=text), s, rtol=1e-12)


def test_small_concepts_score_zero_and_bad_params():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, 4))
    s = Spectral(min_size=31).fit_score(x, text=np.ones((30, 2)))
    assert np.all(s == 0)
    with pytest.raises(ConfigError, match="caption embeddings"):
        Spectral().fit_score(x)
    with pytest.raises(ConfigError, match="min_size"):
        Spectral(min_size=1).fit_score(x, text=np.ones((30, 2)))
    with pytest.raises(ConfigError, match="row-aligned"):
        Spectral().fit_score(x, text=np.ones((29, 2)))
    with pytest.raises(ConfigError, match="not fitted"):
        Spectral().score_samples(x, text=np.ones((30, 2)))


def test_quality_floor_on_poison_inside_a_frequent_concept():
    # seen when written: spectral 0.97, dao 0.55, iforest 0.2
    x, t, y = concept_world()
    s = DETECTORS.get("spectral")(seed=0).fit_score(x, text=t)
    assert detection_metrics(y, s)["auroc"] >= 0.9


def test_in_a_scan_when_named_and_refused_without_text():
    x, t, y = concept_world(n=1500, rate=0.05, seed=1)
    caps = [f"c{i % 7}" for i in range(len(x))]
    scan = Scan(x, t, captions=caps, ground_truth=y).find_suspects(["spectral", "activation_cluster", "dao"],
                                                                   k=8)
    assert scan.detectors == ["spectral", "activation_cluster", "dao"]
    assert scan.info["detector_info"]["spectral"]["n_concepts"] >= 2
    assert scan.metrics["spectral"]["auroc"] >= 0.9
    # multi_reference: computed once (reference-free), equal to the global scores
    multi = Scan(x, t).find_suspects(["spectral"], k=8, reference="multi_reference",
                                     reference_size=256, n_references=2)
    np.testing.assert_array_equal(multi.scores["spectral_score"], scan.scores["spectral_score"])
    _, runnable, skipped = select_detectors(None, {"image", "text", "captions"})  # a default scan
    assert not {"spectral", "activation_cluster"} & (set(runnable) | set(skipped))  # opt-in
    with pytest.raises(ConfigError, match="spectral"):
        Scan(x).find_suspects(["spectral"], k=8)
