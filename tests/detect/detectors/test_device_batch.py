"""The per-batch scan on a torch device (``batch_scores_on_device``) against the CPU engine's
``score_embeddings(reference="batch")``: the same batches, the same neighbours, the same scores.

On the CPU the float32 products are those of the engine, so the scores agree to float64
rounding. ``precision="tf32x3"`` sums its products in another order (as a GPU does), which moves
distances by float32 rounding; the tolerances of those comparisons are the ones a GPU reaches:
kdist ~1e-6 relative, LID ~1e-5, and DAO in log space (its relative error is the error of
``LID(o) * ln(kdist(q) / kdist(o))``, which grows with |ln DAO|). The CUDA tests at the end run
where torch sees a GPU (``pytest -m gpu``).
"""
from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from clipguard.detect import score_embeddings
from clipguard.detect.detectors.device_batch import DEVICE_BATCH_DETECTORS, batch_scores_on_device
from clipguard.detect.neighbours.stats import LID_MAX
from clipguard.detect.reference import batch_partition
from clipguard.errors import ConfigError, EmbeddingError
from tests_helpers import gpu

NAMES = list(DEVICE_BATCH_DETECTORS)


def _clustered(n: int = 3000, d: int = 48, seed: int = 0, dtype=np.float32) -> np.ndarray:
    """Raw (not normalised) Gaussian clusters around 30 centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, d))
    return (centres[rng.integers(0, 30, n)] + 0.5 * rng.normal(size=(n, d))).astype(dtype)


def _lattice(n: int = 1500, n_distinct: int = 30, seed: int = 0) -> np.ndarray:
    """Rows drawn (with repeats) from ``n_distinct`` unit vectors of R^8 whose entries are
    multiples of 1/4: every row has norm exactly 1 and every dot product is an exact multiple
    of 1/16 in float32, whatever the summation order. So duplicates (distance 0), ties at the
    k-th distance and rows with all k distances 0 (LID_MAX) are exact on every device."""
    rng = np.random.default_rng(seed)
    patterns = [(4,), (2, 2, 2, 2), (3, 2, 1, 1, 1), (2, 2, 2, 1, 1, 1, 1), (3, 1, 1, 1, 1, 1, 1, 1)]
    pool: set[tuple[int, ...]] = set()
    while len(pool) < n_distinct:
        p = np.zeros(8, dtype=int)
        pat = patterns[rng.integers(len(patterns))]
        p[: len(pat)] = pat
        pool.add(tuple(rng.permutation(p) * rng.choice([-1, 1], 8)))
    vecs = np.array(sorted(pool), dtype=np.float32) / 4
    return vecs[rng.integers(0, n_distinct, n)]


def _engine(x, names, B, k, seed):
    return score_embeddings(x, names, reference="batch", batch_size=B, k=k, seed=seed)[0]


def _device(x, names, B, k, seed, **kw):
    kw.setdefault("device", "cpu")
    return batch_scores_on_device(x, batch_partition(len(x), B, k, seed), k, names, **kw)


def _assert_close(got, ref, *, exact: bool) -> None:
    """float64-rounding agreement (``exact``), or the float32-rounding tolerances of a GPU."""
    for name in ref:
        a, b = got[name], ref[name]
        assert a.shape == b.shape and a.dtype == np.float64, name
        if exact:
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=name)
            continue
        assert spearmanr(a, b).statistic > 0.9999, name
        if name == "dao":  # log space: ln DAO = logsumexp(LID(o) * ln ratio) - ln k
            np.testing.assert_allclose(np.log(a), np.log(b), rtol=1e-4, atol=1e-4, err_msg=name)
        elif name == "density_anomaly":  # a robust z: 0 at the median
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=name)
        else:
            rtol = {"kdist": 1e-5, "slof": 1e-5, "lid": 1e-4}[name]
            np.testing.assert_allclose(a, b, rtol=rtol, err_msg=name)


# -- equality with the CPU engine ---------------------------------------------------------------------

@pytest.mark.parametrize("n, B", [(3000, 256), (256 * 5 + 4, 256)])  # two batch sizes; a merged last batch
def test_equals_the_cpu_engine_on_clustered_data(n, B):
    x = _clustered(n)
    ref = _engine(x, NAMES, B, 8, seed=1)
    got = _device(x, NAMES, B, 8, seed=1)
    assert list(got) == NAMES
    _assert_close(got, ref, exact=True)


def test_stacks_do_not_change_the_scores():
    x = _clustered(2000, d=32)
    one_per_stack = _device(x, NAMES, 256, 8, 2, max_floats=1)
    all_in_one = _device(x, NAMES, 256, 8, 2, max_floats=1 << 30)
    for name in NAMES:
        np.testing.assert_array_equal(one_per_stack[name], all_in_one[name])


def test_duplicates_and_ties_keep_the_lowest_rows():
    x = _lattice()
    ref = _engine(x, NAMES, 256, 8, seed=3)
    got = _device(x, NAMES, 256, 8, seed=3)
    _assert_close(got, ref, exact=True)
    assert (ref["kdist"] == 0).any() and (ref["lid"] == LID_MAX).any()  # the data has what it should
    # the DAO of a row reads the stats of its neighbours: a tie broken another way would change it
    assert len(np.unique(ref["kdist"])) > 3


def test_float16_rows_memory_maps_and_tensors(tmp_path):
    x16 = _clustered(2000, d=64, seed=4, dtype=np.float16)
    ref = _engine(x16, NAMES, 256, 8, seed=5)
    _assert_close(_device(x16, NAMES, 256, 8, seed=5), ref, exact=True)
    np.save(tmp_path / "x.npy", x16)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    with warnings.catch_warnings():  # a read-only map: no "not writable" warning
        warnings.simplefilter("error")
        from_map = _device(mm, NAMES, 256, 8, seed=5)
    _assert_close(from_map, ref, exact=True)
    _assert_close(_device(torch.from_numpy(x16), NAMES, 256, 8, seed=5), ref, exact=True)
    x64 = x16.astype(np.float64)  # uploaded as float64
    _assert_close(_device(x64, ["dao"], 256, 8, seed=5), {"dao": ref["dao"]}, exact=True)
    np.testing.assert_array_equal(x64, x16.astype(np.float64))  # the caller's rows are not touched
    _assert_close(_device(torch.from_numpy(x16).bfloat16(), ["kdist"], 256, 8, seed=5),
                  _engine(torch.from_numpy(x16).bfloat16().float().numpy(), ["kdist"], 256, 8, 5), exact=True)


def test_tf32x3_agrees_to_float32_rounding():
    x = _clustered(3000, d=64, seed=6)
    ref = _engine(x, NAMES, 256, 8, seed=7)
    got = _device(x, NAMES, 256, 8, seed=7, precision="tf32x3")
    _assert_close(got, ref, exact=False)
    assert not all(np.array_equal(got[n], ref[n]) for n in NAMES)  # another summation order
    # exact where the rows are exact in TF32 (hi = x, lo = 0)
    lat = _lattice(seed=8)
    _assert_close(_device(lat, NAMES, 256, 8, seed=9, precision="tf32x3"), _engine(lat, NAMES, 256, 8, 9),
                  exact=True)


def test_subsets_of_detectors_in_the_order_asked():
    x = _clustered(1000, d=32)
    full = _device(x, NAMES, 128, 8, seed=0)
    for names in (["dao"], ["density_anomaly", "kdist"], ["lid", "slof", "lid"]):
        got = _device(x, names, 128, 8, seed=0)
        assert list(got) == list(dict.fromkeys(names))
        for name in got:
            np.testing.assert_array_equal(got[name], full[name])


# -- errors -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("row, value, what", [(17, np.nan, "NaN or inf"), (3, np.inf, "NaN or inf"),
                                              (40, 0.0, "all zeros")])
def test_bad_rows_are_named(row, value, what):
    x = _clustered(600, d=16)
    x[row] = value
    with pytest.raises(EmbeddingError, match=rf"1 of 600 embedding rows .*{what}.*\(first: row {row}\)"):
        _device(x, ["dao"], 128, 8, seed=0)
    with pytest.raises(EmbeddingError, match=rf"first: shard 7, line {row}\)"):
        _device(x, ["dao"], 128, 8, seed=0, describe_row=lambda i: f"shard 7, line {i}")
    with pytest.raises(EmbeddingError, match="first: row"):  # the engine says the same
        _engine(x, ["dao"], 128, 8, seed=0)


def test_bad_arguments():
    x = _clustered(600, d=16)
    batches = batch_partition(600, 128, 8, 0)
    with pytest.raises(ConfigError, match="computes kdist, lid, slof, dao, density_anomaly"):
        batch_scores_on_device(x, batches, 8, ["iforest"], device="cpu")
    with pytest.raises(ConfigError, match="precision"):
        batch_scores_on_device(x, batches, 8, ["dao"], device="cpu", precision="bf16")
    with pytest.raises(ConfigError, match="partition"):
        batch_scores_on_device(x, batches[:-1], 8, ["dao"], device="cpu")
    repeated = [batches[0], np.concatenate([batches[1][:-1], batches[0][:1]])] + batches[2:]
    with pytest.raises(ConfigError, match="repeated or missing"):
        batch_scores_on_device(x, repeated, 8, ["dao"], device="cpu")
    with pytest.raises(ConfigError, match="more than 8 rows in every batch"):
        batch_scores_on_device(x, [np.arange(595), np.arange(595, 600)], 8, ["dao"], device="cpu")
    with pytest.raises(EmbeddingError, match="2-D"):
        batch_scores_on_device(x[0], batches, 8, ["dao"], device="cpu")


# -- on a GPU -----------------------------------------------------------------------------------------

@gpu
@pytest.mark.parametrize("precision, dtype", list(itertools.product(["fp32", "tf32x3"], [np.float32, np.float16])))
def test_cuda_equals_the_cpu_engine(precision, dtype):
    x = _clustered(5000, d=64, seed=10, dtype=dtype)
    ref = _engine(x, NAMES, 512, 16, seed=11)
    got = _device(x, NAMES, 512, 16, seed=11, device="cuda", precision=precision)
    _assert_close(got, ref, exact=False)
    lat = _lattice(seed=12)  # exact on the GPU too: ties broken by row
    _assert_close(_device(lat, NAMES, 256, 8, seed=13, device="cuda", precision=precision),
                  _engine(lat, NAMES, 256, 8, 13), exact=True)


@gpu
def test_cuda_keeps_float32_accuracy_when_the_caller_allows_tf32():
    x = _clustered(3000, d=64, seed=14)
    ref = _engine(x, NAMES, 512, 16, seed=15)
    xd = torch.from_numpy(x).cuda()  # already on the device: not copied
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        got = _device(xd, NAMES, 512, 16, seed=15, device="cuda")
        assert torch.get_float32_matmul_precision() == "high"  # restored
    finally:
        torch.set_float32_matmul_precision(before)
    _assert_close(got, ref, exact=False)
    with pytest.raises(EmbeddingError, match="first: row 9"):
        x[9] = np.nan
        _device(x, ["dao"], 512, 16, seed=15, device="cuda")
