"""Seeded random subsets of the rows: the batches of ``"batch"`` and the references of
``"reference"`` / ``"multi_reference"`` (:mod:`clipguard.detect.reference.plan`)."""
from __future__ import annotations

import numpy as np

from clipguard.detect.options import DEFAULT_SEED
from clipguard.detect.reference.plan import check_batch_size

__all__ = ["batch_partition", "sample_reference"]


def batch_partition(n: int, batch_size: int, k: int, seed: int = DEFAULT_SEED) -> list[np.ndarray]:
    """Split rows 0..n-1 into random batches, as in the DAO paper's batched reference.

    A permutation seeded by ``seed`` is cut into consecutive batches of ``batch_size`` (the last
    one smaller); if the last batch would hold ``<= k`` rows it is merged into the previous one.
    Each batch's indices are returned sorted ascending.

    Returns:
        List of int64 index arrays that together partition ``range(n)``.

    Raises:
        ConfigError: ``batch_size`` is not an integer larger than ``k``.
    """
    check_batch_size(batch_size, k)
    perm = np.random.default_rng(seed).permutation(n)
    batches = [perm[s:s + batch_size] for s in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) <= k:
        last = batches.pop()
        batches[-1] = np.concatenate([batches[-1], last])
    return [np.sort(b).astype(np.int64) for b in batches]


def sample_reference(n: int, size: int, seed: int = DEFAULT_SEED, draw: int = 0) -> np.ndarray:
    """Seeded random reference: ``min(size, n)`` distinct rows of ``range(n)``, sorted (int64).

    Draw ``r`` of seed ``s`` uses ``np.random.default_rng([s, r])``, so ``"reference"`` (draw 0)
    and the first draw of ``"multi_reference"`` are the same rows.
    """
    size = min(int(size), n)
    if size == n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng([int(seed), int(draw)])
    return np.sort(rng.choice(n, size, replace=False)).astype(np.int64)
