"""Blended (Chen et al. 2017): x' = (1 - alpha) * x + alpha * n, with one fixed pattern n.

``pattern="noise"`` (CleanCLIP variant): n is U[0, 1) noise drawn once from ``pattern_seed`` at
the image's size; any other value is the path of a pattern image (DAO variant, e.g. a cartoon),
resized to the image. The trigger is global: every pixel may change.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from clipguard.attacks.base import ATTACKS, Trigger
from clipguard.errors import ConfigError
from clipguard.utils.seeding import rng


@lru_cache(maxsize=16)
def _pattern(pattern: str, pattern_seed: int, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float32 pattern in [0, 1]."""
    if pattern == "noise":
        return rng(pattern_seed, "blended-noise", h, w).random((h, w, 3)).astype(np.float32)
    try:
        with Image.open(pattern) as im:
            img = im.convert("RGB").resize((w, h), Image.BILINEAR)
    except OSError as exc:
        raise ConfigError(f"blended: cannot read pattern image {pattern!r} ({exc})") from None
    return np.asarray(img, dtype=np.float32) / 255.0


@ATTACKS.register("blended")
class Blended(Trigger):
    """Global blend with a fixed pattern.

    Args:
        alpha: blend weight of the pattern, in (0, 1] (0.2 in the seeds).
        pattern: ``"noise"`` or the path of a pattern image.
        pattern_seed: seed of the noise pattern (the same for every image: a fixed trigger).
    """

    def __init__(self, alpha: float = 0.2, pattern: str = "noise", pattern_seed: int = 0) -> None:
        if not 0 < alpha <= 1:
            raise ConfigError(f"blended: alpha must be in (0, 1], got {alpha}")
        self.alpha, self.pattern, self.pattern_seed = alpha, pattern, pattern_seed

    def _apply(self, image: np.ndarray, *, seed: int, test: bool) -> np.ndarray:
        h, w = image.shape[:2]
        n = _pattern(self.pattern, self.pattern_seed, h, w)
        out = (1 - self.alpha) * (image.astype(np.float32) / 255.0) + self.alpha * n
        return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)
