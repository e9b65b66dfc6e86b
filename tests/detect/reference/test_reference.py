"""Reference modes: the plan ("auto"), the random reference search (flat / IVF / streamed),
multi_reference, and equality of the batched, blocked and FAISS neighbour paths."""
import numpy as np
import pytest

from clipguard.detect import DETECTORS, score_embeddings
from clipguard.detect.neighbours import knn_bruteforce, knn_search, knn_self_groups, normalize
from clipguard.detect.reference import (
    batch_partition,
    build_graph,
    plan_reference,
    sample_reference,
    search_reference,
)
from clipguard.errors import ConfigError
from detect_helpers import engine_scores

DENSITY = ["kdist", "lid", "slof", "dao", "density_anomaly"]


def _data(n=600, d=16, seed=0):
    return normalize(np.random.default_rng(seed).normal(size=(n, d)))


def _clustered(n=3000, d=16, n_clusters=20, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, d))
    return normalize(centers[rng.integers(0, n_clusters, n)] + 0.3 * rng.normal(size=(n, d)))


def _exact_against_reference(x, ref, k):
    """Float64 brute force: members of ``ref`` exclude themselves, the others do not."""
    D = np.empty((len(x), k))
    I = np.empty((len(x), k), dtype=np.int64)
    dist = np.maximum(1.0 - x.astype(np.float64) @ x[ref].astype(np.float64).T, 0.0)
    pos = {int(r): j for j, r in enumerate(ref)}
    for q in range(len(x)):
        row = dist[q].copy()
        if q in pos:
            row[pos[q]] = np.inf
        order = np.argsort(row, kind="stable")[:k]
        D[q], I[q] = row[order], ref[order]
    return D, I


# --- the plan ----------------------------------------------------------------------------------

def test_auto_rule_and_defaults():
    small = plan_reference(4096, "auto")
    assert small.mode == "global" and small.requested == "auto" and "N=4096" in small.reason
    edge = plan_reference(100_000, "auto")
    assert edge.mode == "global" and "rate_sweep" in edge.reason
    assert plan_reference(100_001, "auto").mode == "multi_reference"
    big = plan_reference(1_000_000, "auto")
    assert (big.mode, big.reference_size, big.n_references, big.index) == (
        "multi_reference", 2048, 8, "flat")
    assert "N=1000000 > 100000" in big.reason
    assert plan_reference(100_000_000, "auto").index == "ivf"  # N * M > 1e11
    ref = plan_reference(1_000_000, "reference")
    assert (ref.reference_size, ref.n_references) == (50_000, 1)
    assert plan_reference(300, "reference").reference_size == 300  # capped at N
    assert plan_reference(10_000, "multi_reference", reference_size=100, n_references=3,
                          index="ivf").as_dict()["n_references"] == 3


def test_plan_errors():
    with pytest.raises(ConfigError, match="reference mode"):
        plan_reference(100, "local")
    with pytest.raises(ConfigError, match="unknown index"):
        plan_reference(100, "reference", index="hnsw")
    with pytest.raises(ConfigError, match=r"k=16 needs at least 17 reference rows .* k <= 9"):
        plan_reference(1000, "reference", reference_size=10)
    with pytest.raises(ConfigError, match="n_references"):
        plan_reference(1000, "multi_reference", n_references=0)
    with pytest.raises(ConfigError, match="larger than k"):
        plan_reference(1000, "batch", batch_size=16)


def test_sample_reference_is_seeded_and_draws_differ():
    a = sample_reference(1000, 100, seed=3)
    assert len(a) == 100 and (np.diff(a) > 0).all()
    np.testing.assert_array_equal(a, sample_reference(1000, 100, seed=3, draw=0))
    assert not np.array_equal(a, sample_reference(1000, 100, seed=3, draw=1))
    np.testing.assert_array_equal(sample_reference(50, 100), np.arange(50))


# --- mode (c): one random reference --------------------------------------------------------------

@pytest.mark.parametrize("backend", ["faiss", "blocked"])
def test_flat_reference_equals_exact_knn_against_the_reference(backend):
    x = _data()
    ref = sample_reference(len(x), 150, seed=1)
    D, I, info = search_reference(x, ref, 7, backend=backend, block_size=64)
    De, Ie = _exact_against_reference(x, ref, 7)
    np.testing.assert_array_equal(I, Ie)
    np.testing.assert_allclose(D, De, atol=1e-5)
    assert info == {"index": "flat", "reference_size": 150, "recall_at_k": 1.0}
    members = np.isin(np.arange(len(x)), ref)
    assert not (I[members] == np.flatnonzero(members)[:, None]).any()  # self excluded
    # a non-member is not excluded from anything: its neighbours are just reference rows
    assert np.isin(I, ref).all()


def test_streamed_chunks_equal_one_shot():
    x = _data()
    ref = sample_reference(len(x), 200, seed=2)
    D1, I1, _ = search_reference(x, ref, 5)
    D2, I2, _ = search_reference(x, ref, 5, chunk_size=37)
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_array_equal(D1, D2)


def test_reference_of_everything_equals_global():
    x = _data(300)
    glob = engine_scores(x, DENSITY, k=8, backend="faiss")  # the reference modes search with FAISS
    ref = engine_scores(x, DENSITY, k=8, reference="reference", reference_size=300)
    for name in DENSITY:
        np.testing.assert_allclose(ref[name], glob[name], rtol=1e-9)


def test_reference_stats_come_from_members_only():
    x = _data(400)
    plan = plan_reference(400, "reference", k=6, reference_size=120)
    g = build_graph(x, 6, plan, seed=4)
    members = np.isin(np.arange(400), g.reference_rows)
    assert np.isnan(g.kdist[~members]).all() and np.isfinite(g.kdist[members]).all()
    # a member's kdist is its k-th distance to the OTHER members
    D, _ = knn_bruteforce(x[g.reference_rows], x[g.reference_rows], 6, exclude_self=True)
    np.testing.assert_allclose(g.kdist[g.reference_rows], D[:, -1], atol=1e-5)
    # DAO of every sample from the graph = the formula on the reference stats
    s = engine_scores(x, ["dao"], k=6, reference="reference", reference_size=120, seed=4)["dao"]
    np.testing.assert_array_equal(s, DETECTORS.get("dao").score_from_neighbours(g.D, g.I, g.kdist, g.lid))


def test_ivf_recall_is_measured_and_high_on_clustered_data():
    x = _clustered()
    ref = sample_reference(len(x), 2000, seed=0)
    D, I, info = search_reference(x, ref, 10, index="ivf", nlist=20, nprobe=4, n_recall=500)
    assert info["index"] == "ivf" and info["nlist"] == 20 and info["nprobe"] == 4
    assert info["recall_sample"] == 500
    assert info["recall_at_k"] >= 0.9, info
    _, Ie, _ = search_reference(x, ref, 10)
    direct = np.mean([len(np.intersect1d(a, b)) for a, b in zip(I, Ie)]) / 10
    assert abs(direct - info["recall_at_k"]) < 0.05  # the sample estimates the full recall
    assert (np.diff(D, axis=1) >= 0).all() and np.isin(I, ref).all()
    # run.json gets the recall through score_embeddings
    _, sinfo = score_embeddings(x, ["kdist"], k=10, reference="reference", reference_size=2000,
                                index="ivf", nlist=20, nprobe=4)
    assert sinfo["recall_at_k"] >= 0.9 and sinfo["references"][0]["nprobe"] == 4


# --- mode (d): several references --------------------------------------------------------------

def test_multi_reference_with_one_draw_equals_reference():
    x = _data(500)
    names = DENSITY + ["iforest", "fused"]
    one = engine_scores(x, names, k=8, reference="reference", reference_size=100, seed=5)
    multi = engine_scores(x, names, k=8, reference="multi_reference", reference_size=100,
                      n_references=1, seed=5)
    for name in names:
        np.testing.assert_array_equal(multi[name], one[name])


def test_multi_reference_averages_the_draws():
    x = _data(500)
    multi = engine_scores(x, ["kdist"], k=8, reference="multi_reference", reference_size=100,
                      n_references=3, seed=5)["kdist"]
    draws = []
    for r in range(3):
        ref = sample_reference(500, 100, seed=5, draw=r)
        D, _, _ = search_reference(x, ref, 8)
        draws.append(D[:, -1].astype(np.float64))
    np.testing.assert_allclose(multi, np.mean(draws, axis=0), rtol=1e-12)


def test_k_not_below_the_reference_size_is_a_clear_error():
    x = _data(200)
    with pytest.raises(ConfigError, match=r"k=16 needs at least 17 reference rows"):
        engine_scores(x, ["dao"], reference="reference", reference_size=16)
    with pytest.raises(ConfigError, match=r"use k <= 199"):
        engine_scores(x, ["dao"], k=200)


# --- batch mode: the grouped path equals per-batch search --------------------------------------

def test_grouped_batches_equal_blocked_and_faiss_per_batch():
    x = _data(1000)
    batches = batch_partition(1000, 128, k=8, seed=3)  # 7 x 128 + 1 x 104
    D, I = knn_self_groups(x, batches, 8, max_floats=3 * 128 * 128)  # stacks of 3
    for backend in ("blocked", "faiss"):
        for b in batches:
            Db, Ib = knn_search(x[b], x[b], 8, exclude_self=True, backend=backend, block_size=50)
            np.testing.assert_array_equal(I[b], b[Ib])
            np.testing.assert_allclose(D[b], Db, atol=1e-6)


def test_grouped_batches_errors():
    x = _data(100)
    with pytest.raises(ConfigError, match="partition"):
        knn_self_groups(x, [np.arange(50)], 4)
    with pytest.raises(ConfigError, match="more than 4 rows in every group"):
        knn_self_groups(x, [np.arange(96), np.arange(96, 100)], 4)


def test_ivf_nprobe_is_tuned_to_the_target_recall():
    x = _clustered(seed=1)
    ref = sample_reference(len(x), 2000, seed=0)
    _, _, low = search_reference(x, ref, 10, index="ivf", nlist=40, nprobe=1, n_recall=300)
    assert "nprobe_tuning" not in low and low["nprobe"] == 1
    _, _, tuned = search_reference(x, ref, 10, index="ivf", nlist=40, target_recall=0.97,
                                   n_recall=300)
    trail = tuned["nprobe_tuning"]
    # ceil(40 / 16) = 3, doubled each step, capped at nlist
    assert [p for p, _ in trail] == [min(3 * 2 ** i, 40) for i in range(len(trail))]
    assert trail[-1][1] >= 0.97 or trail[-1][0] == 40
    assert all(r < 0.97 for _, r in trail[:-1])  # stopped at the first nprobe that reached it
    assert tuned["nprobe"] == trail[-1][0] and tuned["target_recall"] == 0.97
    assert tuned["recall_at_k"] >= 0.93 and tuned["recall_at_k"] > low["recall_at_k"]


def test_reference_free_detectors_are_the_same_in_every_mode():
    rng = np.random.default_rng(2)
    x, t = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    caps = [f"c{i % 11}" for i in range(300)]
    names = ["iforest", "clipscore", "caption_dup"]
    glob = engine_scores(x, names, k=4, text=t, captions=caps)
    for kw in (dict(reference="batch", batch_size=64),
               dict(reference="multi_reference", reference_size=50, n_references=3)):
        other = engine_scores(x, names, k=4, text=t, captions=caps, **kw)
        for name in names:
            np.testing.assert_array_equal(other[name], glob[name])
