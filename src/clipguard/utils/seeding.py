"""Seeding helpers: the same command with the same seed gives the same numbers, without hidden state.

Randomness is drawn from generators made for the purpose (:func:`rng` for NumPy, ``torch.Generator``
seeded with :func:`derive_seed` for torch), never from seeded global generators. The one exception is
code that draws from torch's global generators and takes no generator argument (open_clip builds its
weights that way; a dropout layer in a forward pass): :func:`seeded_torch_rng` seeds those generators
for the length of a block and restores the caller's state afterwards.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

__all__ = ["derive_seed", "rng", "seeded_torch_rng"]


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any printable parts, e.g. ``derive_seed(seed, "trigger", index)``.

    Unlike ``hash()``, the result does not change between Python processes.
    """
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def rng(*parts: object) -> np.random.Generator:
    """A NumPy generator seeded from ``derive_seed(*parts)``."""
    return np.random.default_rng(derive_seed(*parts))


@contextmanager
def seeded_torch_rng(seed: int, device: Any = None) -> Iterator[None]:
    """Inside the block, torch's global CPU generator (and that of ``device`` when it is a CUDA device)
    is seeded with ``seed``; on exit the caller's generator states are restored.

    The draws inside the block are the ones ``torch.manual_seed(seed)`` would give, so results are
    unchanged, but nothing outside the block sees the seed: the global state is not hidden state.

    Args:
        seed: the seed (e.g. from :func:`derive_seed`).
        device: the torch device the block computes on (``None``: the CPU only).
    """
    import torch

    dev = torch.device("cpu") if device is None else torch.device(device)
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield
