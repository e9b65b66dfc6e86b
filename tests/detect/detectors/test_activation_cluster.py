"""``activation_cluster``: a planted small cluster gets the top scores, a single blob scores ~0."""
import numpy as np
import pytest

from clipguard.detect.detectors import DETECTORS
from clipguard.detect.detectors.activation_cluster import ActivationCluster, activation_cluster_scores
from clipguard.detect.metrics import detection_metrics
from clipguard.errors import ConfigError
from concept_signals import synthetic_world



def test_planted_small_cluster_gets_the_top_scores():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8))
    x[:12] += 6.0 * np.eye(8)[0]  # 6 % of the concept, far along e_0
    s = activation_cluster_scores(x, n_components=3, seed=0)
    assert set(np.argsort(-s)[:12]) == set(range(12))
    assert np.all(s[12:] == 0) and np.all((s[:12] > 0.3) & (s[:12] < 1))
    # the weight: 1 - (12 / 200) / 0.35, times the simplified silhouette (< 1)
    assert s.max() < 1 - (12 / 200) / 0.35


def test_single_blob_scores_near_zero():
    x = np.random.default_rng(1).normal(size=(400, 8))
    s = activation_cluster_scores(x, seed=0)
    assert s.max() <= 0.05  # a blob is cut in two halves: relative size >= max_share -> 0
    assert np.all(activation_cluster_scores(np.ones((30, 4))) == 0)  # identical rows


def test_detector_params_and_errors():
    x, t, y = synthetic_world(n=1500, rate=0.05, seed=2, dt=32, shuffle=False)
    det = ActivationCluster(n_components=5, seed=0)
    s = det.fit_score(x, text=t)
    assert s.shape == (1500,) and s.dtype == np.float64 and np.all((s >= 0) & (s < 1))
    np.testing.assert_array_equal(det.score_samples(x, text=t), s)
    np.testing.assert_array_equal(ActivationCluster(n_components=5, seed=0).fit_score(x, text=t), s)
    # seen when written: 0.99 at 5 % poison
    assert detection_metrics(y, s)["auroc"] >= 0.9
    with pytest.raises(ConfigError, match="max_share"):
        ActivationCluster(max_share=0.7).fit(x, text=t)
    with pytest.raises(ConfigError, match="n_components"):
        ActivationCluster(n_components=0).fit(x, text=t)
    assert DETECTORS.get("activation_cluster").requires == frozenset({"image", "text"})
