"""Seeding helpers: the same command with the same seed gives the same numbers."""
from __future__ import annotations

import hashlib
import random

import numpy as np


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any printable parts, e.g. ``derive_seed(seed, "trigger", index)``.

    Unlike ``hash()``, the result does not change between Python processes.
    """
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def rng(*parts: object) -> np.random.Generator:
    """A NumPy generator seeded from ``derive_seed(*parts)``."""
    return np.random.default_rng(derive_seed(*parts))
