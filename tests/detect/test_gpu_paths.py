"""The CUDA kNN and scoring paths agree with the CPU paths (run where torch sees a GPU).

Skipped with a reason on machines without one (CI included); on a GPU machine run ``pytest -m gpu``.
Distances may differ in the last bits between the devices (another summation order), so distances
and scores are compared with tolerances and rankings by their overlap at the top.
"""
from __future__ import annotations

import numpy as np
import pytest

from clipguard.detect import Scan, ScanConfig
from clipguard.detect.neighbours import knn_bruteforce, knn_search, knn_self_groups, normalize
from clipguard.detect.reference import batch_partition
from score_fingerprint import fixed_data
from tests_helpers import gpu

pytestmark = gpu


def _clustered(n: int = 3000, d: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, d))
    return normalize(centres[rng.integers(0, 30, n)] + 0.5 * rng.normal(size=(n, d)))


@pytest.mark.parametrize("exclude_self", [False, True])
def test_blocked_knn_on_cuda_equals_cpu(exclude_self):
    x = _clustered()
    q = x if exclude_self else x[:700]
    D_cpu, I_cpu = knn_search(q, x, 16, exclude_self=exclude_self, block_size=512, device="cpu")
    D_gpu, I_gpu = knn_search(q, x, 16, exclude_self=exclude_self, block_size=512, device="cuda")
    np.testing.assert_allclose(D_gpu, D_cpu, atol=2e-6)
    assert np.mean(I_gpu == I_cpu) > 0.999  # only exact ties may swap
    D_ref, _ = knn_bruteforce(q, x, 16, exclude_self=exclude_self)
    np.testing.assert_allclose(D_gpu, D_ref, atol=2e-6)


def test_per_batch_groups_on_cuda_equal_cpu():
    x = _clustered()
    batches = batch_partition(len(x), 512, 16, seed=1)
    D_cpu, I_cpu = knn_self_groups(x, batches, 16, device="cpu")
    D_gpu, I_gpu = knn_self_groups(x, batches, 16, device="cuda")
    np.testing.assert_allclose(D_gpu, D_cpu, atol=2e-6)
    assert np.mean(I_gpu == I_cpu) > 0.999


@pytest.mark.parametrize("reference", ["global", "batch"])
def test_scan_scores_on_cuda_agree_with_cpu(reference):
    image, text, captions, poisoned = fixed_data()
    out = {}
    for device in ("cpu", "cuda"):
        scan = Scan(image, text, captions=captions, ground_truth=poisoned)
        scan.find_suspects(config=ScanConfig(k=8, seed=3, reference=reference, batch_size=200,
                                             device=device))
        out[device] = scan
    cpu, cuda = out["cpu"].scores, out["cuda"].scores
    assert out["cpu"].detectors == out["cuda"].detectors
    for det in out["cpu"].detectors:
        a, b = cpu[f"{det}_score"].to_numpy(), cuda[f"{det}_score"].to_numpy()
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=det)
        top_a = set(np.argsort(-a, kind="stable")[:40])
        top_b = set(np.argsort(-b, kind="stable")[:40])
        assert len(top_a & top_b) >= 38, det
        assert abs(out["cpu"].metrics[det]["auroc"] - out["cuda"].metrics[det]["auroc"]) < 1e-3
