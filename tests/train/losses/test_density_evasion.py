"""The adaptive attacker's density-evasion term: batch SLOF, exact on toy data, and the loss wrapper."""
import numpy as np
import pytest
import torch

from clipguard.errors import ConfigError
from clipguard.train.losses import batch_slof, density_evasion_loss


def slof_reference(x: np.ndarray, k: int) -> np.ndarray:
    """SLOF by brute force: mean over q's k nearest neighbours o (cosine distance, self excluded) of
    kdist(q) / kdist(o)."""
    d = 1 - x @ x.T
    np.fill_diagonal(d, np.inf)
    nn = np.argsort(d, axis=1, kind="stable")[:, :k]
    kdist = np.take_along_axis(d, nn, axis=1)[:, -1]
    return (kdist[:, None] / kdist[nn]).mean(1)


def test_batch_slof_equals_the_brute_force_slof():
    g = np.random.default_rng(0)
    x = g.normal(size=(60, 16)).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ours = batch_slof(torch.from_numpy(x), k=5).numpy()
    assert np.allclose(ours, slof_reference(x, 5), rtol=1e-6)


def test_batch_slof_hand_computed():
    # unit vectors at 0, 30, 100 and 200 degrees, k=1: the nearest neighbours are 30, 0, 30 and 100
    # degrees away, at cosine distance c(angle) = 1 - cos(angle) (no ties)
    a = np.deg2rad([0, 30, 100, 200])
    x = torch.tensor(np.stack([np.cos(a), np.sin(a)], 1))
    c = lambda deg: 1 - np.cos(np.deg2rad(deg))  # noqa: E731
    expected = [c(30) / c(30), c(30) / c(30), c(70) / c(30), c(100) / c(70)]
    assert batch_slof(x, k=1).numpy() == pytest.approx(expected)


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


def test_small_batches_and_bad_arguments():
    poisoned = np.array([True, True, False])
    loss_fn = density_evasion_loss(poisoned, k=8)
    one = torch.nn.functional.normalize(torch.ones(1, 4), dim=-1)
    assert loss_fn(one, one, torch.tensor([0])).item() == 0.0  # one sample: no neighbour to compare with
    with pytest.raises(ConfigError, match="too small for k=3"):
        batch_slof(torch.eye(3), k=3)
    with pytest.raises(ConfigError, match="adaptive k"):
        density_evasion_loss(poisoned, k=0)
    with pytest.raises(ConfigError, match="adaptive density weight"):
        density_evasion_loss(poisoned, weight=-1.0)
