"""Exact kNN: blocked torch and faiss backends and the per-group search against a float64 brute
force; the backend interface; the device option."""
import importlib

import numpy as np
import pytest

from clipguard.detect.neighbours import (
    NEIGHBOUR_BACKENDS,
    NeighbourBackend,
    knn_bruteforce,
    knn_search,
    knn_self_groups,
    normalize,
)
from clipguard.detect.options import BACKENDS
from clipguard.errors import ConfigError, EmbeddingError
from tests_helpers import no_gpu

# the modules (``clipguard.detect.neighbours.normalize`` as an attribute is the function)
normalize_module = importlib.import_module("clipguard.detect.neighbours.normalize")
groups_module = importlib.import_module("clipguard.detect.neighbours.groups")


def _data(n=700, d=32, seed=0):
    return normalize(np.random.default_rng(seed).normal(size=(n, d)))


@pytest.mark.parametrize("exclude_self", [False, True])
def test_blocked_equals_bruteforce(exclude_self):
    x = _data()
    D, I = knn_search(x, x, 10, exclude_self=exclude_self, block_size=64)  # 11 x 11 tiles
    Dr, Ir = knn_bruteforce(x, x, 10, exclude_self=exclude_self)
    assert D.dtype == np.float32 and I.dtype == np.int64 and D.shape == (700, 10)
    np.testing.assert_array_equal(I, Ir)
    np.testing.assert_allclose(D, Dr, atol=1e-5)
    assert (np.diff(D, axis=1) >= 0).all()
    if exclude_self:
        assert not (I == np.arange(700)[:, None]).any()
    else:
        np.testing.assert_array_equal(I[:, 0], np.arange(700))  # self is the nearest


def test_blocked_queries_against_other_reference():
    xb, xq = _data(500), _data(130, seed=1)
    D, I = knn_search(xq, xb, 7, block_size=48)
    Dr, Ir = knn_bruteforce(xq, xb, 7)
    np.testing.assert_array_equal(I, Ir)
    np.testing.assert_allclose(D, Dr, atol=1e-5)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_faiss_equals_blocked(exclude_self):
    x = _data()
    D, I = knn_search(x, x, 10, exclude_self=exclude_self, block_size=64)
    Df, If = knn_search(x, x, 10, exclude_self=exclude_self, backend="faiss")
    assert Df.dtype == np.float32 and If.dtype == np.int64
    np.testing.assert_array_equal(I, If)
    np.testing.assert_allclose(D, Df, atol=1e-5)


@pytest.mark.parametrize("backend", ["blocked", "faiss"])
def test_self_is_removed_by_index_so_duplicates_count(backend):
    base = _data(40, 8, seed=2)
    # row 40 duplicates row 3; rows 41..46 are six copies of row 7
    x = np.vstack([base, base[[3]], np.repeat(base[[7]], 6, axis=0)])
    D, I = knn_search(x, x, 4, exclude_self=True, backend=backend, block_size=16)
    assert not (I == np.arange(len(x))[:, None]).any()
    assert I[3, 0] == 40 and I[40, 0] == 3 and D[3, 0] == pytest.approx(0, abs=1e-6)
    # a copy of row 7 has 6 others at distance 0: its 4 neighbours are all copies
    copies = {7, 41, 42, 43, 44, 45, 46}
    for r in (7, 41, 46):
        assert set(I[r]) <= copies - {r}
        np.testing.assert_allclose(D[r], 0, atol=1e-6)


# --- the backend interface ---------------------------------------------------------------------

def test_backends_are_registered_in_the_order_of_the_options():
    assert NEIGHBOUR_BACKENDS.names() == list(BACKENDS)
    for name in BACKENDS:
        assert issubclass(NEIGHBOUR_BACKENDS.get(name), NeighbourBackend)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("exclude_self", [False, True])
def test_every_backend_gives_the_bruteforce_distances_on_a_toy_set(name, exclude_self):
    x = _data(50, 6, seed=7)
    Dr, _ = knn_bruteforce(x, x, 5, exclude_self=exclude_self)
    D, I = NEIGHBOUR_BACKENDS.get(name)(block_size=16).search(x, x, 5, exclude_self=exclude_self)
    assert D.dtype == np.float32 and I.dtype == np.int64 and D.shape == I.shape == (50, 5)
    np.testing.assert_allclose(D, Dr, atol=1e-6)
    np.testing.assert_allclose(knn_search(x, x, 5, exclude_self=exclude_self, backend=name)[0], Dr, atol=1e-6)
    xq = _data(9, 6, seed=8)
    Dq, _ = NEIGHBOUR_BACKENDS.get(name)(block_size=4).search(xq, x, 5)
    np.testing.assert_allclose(Dq, knn_bruteforce(xq, x, 5)[0], atol=1e-6)


def test_k_limits():
    x = _data(20, 4)
    knn_search(x, x, 19, exclude_self=True)
    knn_search(x, x, 20)
    with pytest.raises(ConfigError, match="k <= 19"):
        knn_search(x, x, 20, exclude_self=True)
    with pytest.raises(ConfigError, match="k <= 20"):
        knn_search(x, x, 21)
    with pytest.raises(ConfigError, match="k >= 1"):
        knn_search(x, x, 0)


def test_argument_errors():
    x = _data(20, 4)
    with pytest.raises(ConfigError, match="exclude_self"):
        knn_search(x, _data(20, 4, seed=5), 3, exclude_self=True)
    knn_search(x, x.copy(), 3, exclude_self=True)  # equal rows are fine
    with pytest.raises(ConfigError, match="backend"):
        knn_search(x, x, 3, backend="annoy")
    with pytest.raises(ConfigError, match="dimensions"):
        knn_search(x, _data(20, 5), 3)
    with pytest.raises(ConfigError, match="block_size"):
        knn_search(x, x, 3, block_size=0)


def test_normalize():
    raw = np.random.default_rng(3).normal(size=(10, 6)).astype(np.float16)
    x = normalize(raw)
    assert x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-6)


def test_normalize_in_place_equals_a_copy(monkeypatch):
    """``out=x`` writes the same bits as a fresh result, over several blocks and threads."""
    monkeypatch.setattr(normalize_module, "_NORMALIZE_BLOCK_VALUES", 64)  # 10 rows per block of d=6
    x = np.random.default_rng(4).normal(size=(95, 6)).astype(np.float32)
    want = normalize(x)
    got = normalize(x, out=x)
    assert got is x
    np.testing.assert_array_equal(got, want)
    with pytest.raises(EmbeddingError, match="out="):
        normalize(x, out=np.empty((95, 6), dtype=np.float64))


def test_normalize_rejects_bad_rows():
    x = np.ones((8, 3), dtype=np.float32)
    x[5, 1] = np.nan
    x[6, 0] = np.inf
    with pytest.raises(EmbeddingError, match=r"2 of 8 .*NaN or inf \(first: row 5\)"):
        normalize(x)
    z = np.ones((8, 3))
    z[4] = 0
    with pytest.raises(EmbeddingError, match=r"1 of 8 .*zeros \(first: row 4\)"):
        normalize(z)
    with pytest.raises(EmbeddingError, match="shard 9 row 4"):
        normalize(z, describe_row=lambda i: f"shard 9 row {i}")


def test_normalize_in_blocks_equals_one_block(monkeypatch):
    raw = np.random.default_rng(4).normal(size=(103, 6))
    whole = normalize(raw)
    monkeypatch.setattr(normalize_module, "_NORMALIZE_BLOCK_VALUES", 6 * 10)  # blocks of 10 rows
    np.testing.assert_array_equal(normalize(raw), whole)
    np.testing.assert_allclose(whole, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-6)
    raw[57, 2] = np.nan
    raw[88] = 0
    with pytest.raises(EmbeddingError, match=r"1 of 103 .*NaN or inf \(first: row 57\)"):
        normalize(raw)
    raw[57, 2] = 1
    with pytest.raises(EmbeddingError, match=r"1 of 103 .*zeros \(first: row 88\)"):
        normalize(raw)


# --- per-group self-kNN (the per-batch reference): tiled CPU path and stacked (GPU) path ------

def _dyadic(n, d=8, seed=0):
    """Unit rows with four entries of +-0.5: every product is exact in float32 whatever the
    summation order, so equal distances are exactly equal (ties everywhere, also at the k-th
    distance) in float32 as in the float64 brute force."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, d), dtype=np.float32)
    for r in range(n):
        x[r, rng.choice(d, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    return x


def _groups_equal_bruteforce(x, groups, k, D, I):
    for g in groups:
        Dr, Ir = knn_bruteforce(x[g], x[g], k, exclude_self=True)
        np.testing.assert_array_equal(I[g], g[Ir])
        np.testing.assert_allclose(D[g], Dr, atol=1e-6)


@pytest.mark.parametrize("path", ["cpu_tiles", "stacked"])
def test_self_groups_equal_bruteforce_including_ties(monkeypatch, path):
    import torch

    monkeypatch.setattr(groups_module, "_SELF_TILE", 16)  # 75 rows -> 5 row blocks of 15, 30 -> 2
    rng = np.random.default_rng(1)
    # group 0: exact ties (duplicates included: rows 3 and 40 equal row 9); group 1: generic
    # rows, interleaved so that groups are not contiguous
    tied = _dyadic(75)
    tied[[3, 40]] = tied[9]
    x = np.empty((105, 8), dtype=np.float32)
    g0 = np.sort(rng.choice(105, 75, replace=False))
    g1 = np.setdiff1d(np.arange(105), g0)
    x[g0], x[g1] = tied, _data(30, 8, seed=2)
    groups = [g0, g1]
    for k in (1, 5, 14):
        if path == "cpu_tiles":
            D, I = knn_self_groups(x, groups, k)
        else:
            D, I = groups_module._groups_stacked(x, groups, k, torch.device("cpu"), max_floats=1 << 20)
        assert D.dtype == np.float32 and I.dtype == np.int64 and D.shape == (105, k)
        _groups_equal_bruteforce(x, groups, k, D, I)


def test_self_groups_duplicates_in_other_tiles_keep_lowest_index(monkeypatch):
    monkeypatch.setattr(groups_module, "_SELF_TILE", 32)
    base = _data(120, 64, seed=3)
    # seven copies of one row spread over the four row blocks: each has six at distance 0, so
    # k=4 cuts through them and the four lowest indices must be kept
    copies = [5, 33, 47, 70, 71, 100, 119]
    base[copies] = base[5]
    D, I = knn_self_groups(base, [np.arange(120)], 4)
    for r in copies:
        assert list(I[r]) == [c for c in copies if c != r][:4]
        np.testing.assert_allclose(D[r], 0, atol=1e-6)
    _groups_equal_bruteforce(base, [np.arange(120)], 4, D, I)


def test_finish_topk_orders_ties_by_column_and_redoes_only_tied_rows():
    import torch

    _finish_topk = groups_module._finish_topk

    full = torch.tensor([[-np.inf, 0.5, 0.9, 0.5, 0.1],     # tie at the k-th (k=2): 1 < 3
                         [0.2, -np.inf, 0.3, 0.8, 0.7]])   # no tie
    sims, cols = torch.topk(full, 3, dim=1)
    cols[0] = torch.tensor([2, 3, 1])  # a heap may return the tied columns in either order
    asked = []

    def rows(r):
        asked.append(r.tolist())
        return full[r]

    D, I = _finish_topk(sims, cols, 2, rows)
    assert asked == [[0]]
    assert I.tolist() == [[2, 1], [3, 4]]
    np.testing.assert_allclose(D.numpy(), [[0.1, 0.5], [0.2, 0.3]], atol=1e-6)


# --- device ------------------------------------------------------------------------------------

def test_device_cpu_gives_identical_results():
    import torch

    x, xq = _data(300, 16), _data(50, 16, seed=1)
    groups = [np.arange(0, 300, 2), np.arange(1, 300, 2)]
    devices = ["cpu", torch.device("cpu")] + ([] if torch.cuda.is_available() else ["auto"])
    for dev in devices:
        for args, kw in (((x, x, 7), dict(exclude_self=True, block_size=64)),
                         ((xq, x, 7), dict(block_size=64))):
            D0, I0 = knn_search(*args, **kw)
            D1, I1 = knn_search(*args, device=dev, **kw)
            np.testing.assert_array_equal(I1, I0)
            np.testing.assert_array_equal(D1, D0)
        D0, I0 = knn_self_groups(x, groups, 6)
        D1, I1 = knn_self_groups(x, groups, 6, device=dev)
        np.testing.assert_array_equal(I1, I0)
        np.testing.assert_array_equal(D1, D0)


@no_gpu
def test_unavailable_device_raises_config_error():
    x = _data(40, 8)
    for call in (lambda: knn_search(x, x, 3, device="cuda"),
                 lambda: knn_search(x, x, 3, backend="faiss", device="cuda"),
                 lambda: knn_self_groups(x, [np.arange(40)], 3, device="cuda")):
        with pytest.raises(ConfigError, match="--device cpu"):
            call()
    with pytest.raises(ConfigError, match="device"):
        knn_search(x, x, 3, device="tpu")
