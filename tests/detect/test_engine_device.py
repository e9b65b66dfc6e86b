"""The engine's GPU path: a per-batch density scan on a GPU runs on the device and agrees with the CPU."""
from __future__ import annotations

import numpy as np
import pytest

from clipguard.detect.engine import score_embeddings


@pytest.mark.gpu
def test_batch_scan_on_the_gpu_runs_on_the_device_and_agrees():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(20, 64))[rng.integers(0, 20, 8000)] + 0.5 * rng.normal(size=(8000, 64))).astype(np.float32)
    names = ["kdist", "lid", "dao", "density_anomaly"]
    cpu, _ = score_embeddings(x, names, reference="batch", batch_size=1024, k=16, device="cpu")
    gpu, info = score_embeddings(x, names, reference="batch", batch_size=1024, k=16, device="cuda")
    assert info["references"][0]["on_device"].startswith("cuda")
    for name in names:
        np.testing.assert_allclose(np.log(gpu[name]) if name == "dao" else gpu[name],
                                   np.log(cpu[name]) if name == "dao" else cpu[name], rtol=1e-4, atol=1e-6)
