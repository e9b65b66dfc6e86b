"""Exact kNN: blocked torch and faiss backends against a float64 brute force."""
import numpy as np
import pytest

from clipguard.detect import knn_bruteforce, knn_search, normalize
from clipguard.errors import ConfigError, EmbeddingError


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
    import clipguard.detect.knn as knn

    raw = np.random.default_rng(4).normal(size=(103, 6))
    whole = normalize(raw)
    monkeypatch.setattr(knn, "_NORMALIZE_BLOCK_VALUES", 6 * 10)  # blocks of 10 rows
    np.testing.assert_array_equal(normalize(raw), whole)
    np.testing.assert_allclose(whole, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-6)
    raw[57, 2] = np.nan
    raw[88] = 0
    with pytest.raises(EmbeddingError, match=r"1 of 103 .*NaN or inf \(first: row 57\)"):
        normalize(raw)
    raw[57, 2] = 1
    with pytest.raises(EmbeddingError, match=r"1 of 103 .*zeros \(first: row 88\)"):
        normalize(raw)
