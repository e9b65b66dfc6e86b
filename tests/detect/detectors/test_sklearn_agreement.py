"""Agreement with scikit-learn's LocalOutlierFactor (and PyOD's KNN when installed) where the
definitions coincide: the self-excluded neighbour lists, the k-distances, and LOF itself
rebuilt from our neighbour arrays. (SLOF is not LOF -- it has no reachability distance -- so
the detectors are compared through the quantities both are built from.)"""
import numpy as np
import pytest

from clipguard.detect import DETECTORS
from clipguard.detect.neighbours import knn_search, normalize
from detect_helpers import engine_scores

K = 8


def _data(n=400, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(5, d))
    return normalize(centers[rng.integers(0, 5, n)] + 0.5 * rng.normal(size=(n, d)))


def _lof(x, **kw):
    from sklearn.neighbors import LocalOutlierFactor

    return LocalOutlierFactor(n_neighbors=K, metric="cosine", algorithm="brute", **kw)


@pytest.mark.parametrize("backend", ["blocked", "faiss"])
def test_neighbours_and_kdist_equal_sklearn_lof(backend):
    x = _data()
    lof = _lof(x).fit(x)
    dist_sk, ind_sk = lof.kneighbors()  # the training points, each without itself
    D, I = knn_search(x, x, K, exclude_self=True, backend=backend)
    np.testing.assert_array_equal(I, ind_sk)
    np.testing.assert_allclose(D, dist_sk, atol=2e-6)
    kdist = DETECTORS.get("kdist")(k=K, backend=backend).fit_score(x)
    np.testing.assert_allclose(kdist, lof._distances_fit_X_[:, -1], atol=2e-6)


def test_lof_rebuilt_from_our_arrays_equals_sklearn():
    x = _data(seed=1)
    lof = _lof(x).fit(x)
    D, I = knn_search(x, x, K, exclude_self=True)
    D, kd = D.astype(np.float64), D[:, -1].astype(np.float64)
    reach = np.maximum(D, kd[I])  # reach-dist_k(q, o) = max(d(q, o), kdist(o))
    lrd = 1.0 / (reach.mean(axis=1) + 1e-10)
    ours = np.mean(lrd[I] / lrd[:, None], axis=1)
    np.testing.assert_allclose(-ours, lof.negative_outlier_factor_, rtol=1e-4)


def test_query_neighbours_equal_sklearn_novelty_mode():
    x, q = _data(), _data(60, seed=7)
    lof = _lof(x, novelty=True).fit(x)
    dist_sk, ind_sk = lof.kneighbors(q)  # new queries: nothing excluded
    det = DETECTORS.get("kdist")(k=K).fit(x)
    np.testing.assert_allclose(det.score_samples(q), dist_sk[:, -1], atol=2e-6)
    D, I = det._query_knn(q)
    np.testing.assert_array_equal(I, ind_sk)


def test_kdist_equals_pyod_knn():
    from pyod.models.knn import KNN  # a test dependency (pyproject [test] extra)

    x = _data(seed=2)
    det = KNN(n_neighbors=K, method="largest", metric="cosine", algorithm="brute").fit(x)
    np.testing.assert_allclose(engine_scores(x, ["kdist"], k=K)["kdist"], det.decision_scores_,
                               atol=2e-6)
