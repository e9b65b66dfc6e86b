import numpy as np
import torch

from clipguard.attacks.adaptive import batch_slof, density_evasion_loss
from clipguard.detect.detectors import score_all


def test_batch_slof_equals_the_detector_slof():
    g = np.random.default_rng(0)
    x = g.normal(size=(60, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ours = batch_slof(torch.from_numpy(x), k=5).numpy()
    ref = score_all(x, ("slof",), k=5, reference="global")["slof"]
    assert np.allclose(ours, ref, rtol=1e-4)


def test_loss_only_counts_poisoned_rows_and_has_gradient():
    g = torch.Generator().manual_seed(0)
    f = torch.nn.functional.normalize(torch.randn(32, 8, generator=g), dim=-1).requires_grad_(True)
    poisoned = torch.zeros(100, dtype=torch.bool)
    poisoned[[3, 7]] = True
    loss_fn = density_evasion_loss(poisoned, k=4, weight=2.0)
    rows = torch.arange(32)
    loss = loss_fn(f, f, rows)
    expected = 2.0 * batch_slof(f, 4)[[3, 7]].mean()
    assert torch.allclose(loss, expected)
    loss.backward()
    assert f.grad.abs().sum() > 0
    assert loss_fn(f, f, torch.arange(40, 72)).item() == 0.0
