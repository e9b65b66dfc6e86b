"""Detectors, the engine's scores, the batched reference, and a detection-quality floor."""
import numpy as np
import pytest

from clipguard.detect import DETECTORS
from clipguard.detect.detectors.dao import dao
from clipguard.detect.metrics import detection_metrics
from clipguard.detect.neighbours import knn_search, knn_self_groups, neighbour_stats, normalize
from clipguard.detect.reference import batch_partition
from clipguard.errors import ConfigError
from detect_helpers import ALL, engine_scores

NAMES = ["kdist", "lid", "slof", "dao"]


def _data(n=300, d=16, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def _poisoned_mixture(seed=0, n_clean=2000, n_poison=10, d=32, n_clusters=8):
    """Clean points from Gaussian clusters plus a tight poison cluster in a random direction."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, d))
    clean = centers[rng.integers(0, n_clusters, n_clean)] + 0.6 * rng.normal(size=(n_clean, d))
    poison = rng.normal(size=d) + 0.05 * rng.normal(size=(n_poison, d))
    x = np.vstack([clean, poison]).astype(np.float32)
    y = np.r_[np.zeros(n_clean, bool), np.ones(n_poison, bool)]
    perm = rng.permutation(len(x))
    return x[perm], y[perm]


def test_registry():
    assert DETECTORS.names() == ALL
    det = DETECTORS.get("dao")(k=5)
    assert det.k == 5 and not hasattr(det, "reference_")  # constructor only stores params
    with pytest.raises(TypeError):
        DETECTORS.get("dao")(5)  # keyword-only
    with pytest.raises(ConfigError, match="kdist, lid, slof, dao, density_anomaly, iforest"):
        DETECTORS.get("lof")


def test_fit_sets_attributes_and_fit_score_equals_the_engine():
    x = _data()
    all_scores = engine_scores(x, NAMES, k=8)
    for name in NAMES:
        det = DETECTORS.get(name)(k=8)
        s = det.fit_score(x)
        assert s.shape == (300,) and s.dtype == np.float64
        np.testing.assert_array_equal(s, all_scores[name])
        assert det.reference_.shape == (300, 16) and det.reference_.dtype == np.float32
        assert det.kdist_.shape == det.lid_.shape == (300,)


def test_score_samples_against_reference():
    ref, q = _data(), _data(40, seed=1)
    ref[:, 0] += 4  # the reference lies in a cone around e_0 ...
    q[:, 0] += 4
    q[0] = 0
    q[0, 0] = -1  # ... and this query points the opposite way
    det = DETECTORS.get("dao")(k=8).fit(ref)
    s = det.score_samples(q)
    D, I = knn_search(normalize(q), normalize(ref), 8)  # no self exclusion for new queries
    kd, lid = neighbour_stats(knn_search(normalize(ref), normalize(ref), 8, exclude_self=True)[0])
    np.testing.assert_allclose(s, dao(D, I, kd, lid), rtol=1e-12)
    assert int(np.argmax(s)) == 0


def test_errors():
    with pytest.raises(ConfigError, match="not fitted"):
        DETECTORS.get("slof")().score_samples(_data())
    det = DETECTORS.get("slof")(k=4).fit(_data(50))
    with pytest.raises(ConfigError, match="dimensions"):
        det.score_samples(_data(5, d=8))
    with pytest.raises(ConfigError, match="unknown detector"):
        engine_scores(_data(), ["kdist", "knn"])
    with pytest.raises(ConfigError, match="reference mode"):
        engine_scores(_data(), reference="local")
    with pytest.raises(ConfigError, match="larger than k"):
        engine_scores(_data(), k=16, reference="batch", batch_size=16)


# --- batch mode --------------------------------------------------------------------------

def test_batch_partition_sizes_and_merge():
    parts = batch_partition(1000, 300, k=16, seed=0)
    assert [len(p) for p in parts] == [300, 300, 300, 100]
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(1000))
    # a last batch of <= k rows is merged into the previous one
    assert [len(p) for p in batch_partition(616, 300, k=16)] == [300, 316]
    assert [len(p) for p in batch_partition(617, 300, k=16)] == [300, 300, 17]
    assert [len(p) for p in batch_partition(10, 300, k=16)] == [10]


def test_batch_neighbours_come_from_own_batch():
    x = normalize(_data(1000))
    D, I = knn_self_groups(x, batch_partition(1000, 300, k=8, seed=4), 8)
    batch_of = np.empty(1000, int)
    for b, idx in enumerate(batch_partition(1000, 300, k=8, seed=4)):
        batch_of[idx] = b
    assert (batch_of[I] == batch_of[:, None]).all()
    assert not (I == np.arange(1000)[:, None]).any()


def test_batch_mode_with_one_batch_equals_global():
    x = _data(400)
    glob = engine_scores(x, k=8, reference="global")
    one = engine_scores(x, k=8, reference="batch", batch_size=400, seed=3)
    big = engine_scores(x, k=8, reference="batch", batch_size=5000, seed=9)
    for name in NAMES:
        np.testing.assert_array_equal(one[name], glob[name])
        np.testing.assert_array_equal(big[name], glob[name])


def test_batch_mode_is_seeded():
    x = _data(600)
    a = engine_scores(x, k=8, reference="batch", batch_size=128, seed=1)
    b = engine_scores(x, k=8, reference="batch", batch_size=128, seed=1)
    c = engine_scores(x, k=8, reference="batch", batch_size=128, seed=2)
    for name in NAMES:
        np.testing.assert_array_equal(a[name], b[name])
        assert not np.array_equal(a[name], c[name])


def test_faiss_backend_gives_same_scores():
    x = _data(500)
    a = engine_scores(x, k=8, reference="batch", batch_size=200)
    b = engine_scores(x, k=8, reference="batch", batch_size=200, backend="faiss")
    for name in NAMES:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4)


# --- quality floor -------------------------------------------------------------------------

def test_quality_floor_small_tight_poison_cluster():
    """2000 clean points (8 Gaussian clusters, 32-D) + 10 tightly clustered poisoned points.

    Seen when written: batch B=512, k=16: AUROC kdist 1.0, slof 1.0, dao 1.0 (lid 0.0: the
    poison's few very close neighbours make its LID *low*).
    """
    x, y = _poisoned_mixture()
    scores = engine_scores(x, k=16, reference="batch", batch_size=512, seed=0)
    auroc = {name: detection_metrics(y, s)["auroc"] for name, s in scores.items()}
    print("quality floor AUROC:", auroc)
    for name in ("kdist", "slof", "dao"):
        assert auroc[name] >= 0.95, auroc


def test_batches_help_against_a_large_poison_cluster():
    """80 poisoned points (> k): in the global reference they are each other's neighbours and
    look dense; small random batches break the cluster up (the DAO paper's argument).

    Seen when written: kdist AUROC global 0.0, batch B=128 0.67.
    """
    x, y = _poisoned_mixture(n_poison=80)
    glob = engine_scores(x, ["kdist"], k=16)["kdist"]
    batch = engine_scores(x, ["kdist"], k=16, reference="batch", batch_size=128)["kdist"]
    a_glob = detection_metrics(y, glob)["auroc"]
    a_batch = detection_metrics(y, batch)["auroc"]
    print("large cluster kdist AUROC: global", a_glob, "batch(128)", a_batch)
    assert a_batch > a_glob + 0.3
