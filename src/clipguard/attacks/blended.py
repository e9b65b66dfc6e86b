"""Blended (Chen et al. 2017): x' = (1 - alpha) * x + alpha * n, with one fixed pattern n.

``pattern="noise"`` (CleanCLIP variant): n is U[0, 1) noise drawn once from ``pattern_seed`` at
the image's size; any other value is the path of a pattern image (DAO variant, e.g. a cartoon),
read once when the trigger is built and resized to each image. The trigger is global: every pixel
may change.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from clipguard.attacks.base import ATTACKS, Trigger
from clipguard.errors import ConfigError
from clipguard.utils.seeding import rng
from clipguard.utils.validate import check_int, check_real

__all__ = ["Blended"]

_MAX_SIZES = 16


@lru_cache(maxsize=16)
def _noise_pattern(pattern_seed: int, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float32 U[0, 1) noise, a pure function of its arguments."""
    return rng(pattern_seed, "blended-noise", h, w).random((h, w, 3)).astype(np.float32)


def _read_pattern(path: str) -> Image.Image:
    """The pattern image at ``path``, decoded now (so that later changes to the file do not leak in)."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except OSError as exc:
        raise ConfigError(f"blended: cannot read pattern image {path!r} ({exc}); pass pattern=noise or the path "
                          "of an image") from None


@ATTACKS.register("blended")
class Blended(Trigger):
    """Blended trigger: the whole image blended with one fixed noise or pattern image.

    Args:
        alpha: blend weight of the pattern, in (0, 1] (0.2 in the seeds).
        pattern: ``"noise"`` or the path of a pattern image (read when the trigger is built).
        pattern_seed: seed of the noise pattern (the same for every image: a fixed trigger).
    """

    def __init__(self, alpha: float = 0.2, pattern: str = "noise", pattern_seed: int = 0) -> None:
        self.alpha = check_real("blended alpha", alpha, low=0, high=1, low_open=True)
        self.pattern = str(pattern)
        self.pattern_seed = check_int("blended pattern_seed", pattern_seed)
        self._image = None if self.pattern == "noise" else _read_pattern(self.pattern)
        self._resized: dict[tuple[int, int], np.ndarray] = {}

    def pattern_array(self, h: int, w: int) -> np.ndarray:
        """(h, w, 3) float32 pattern in [0, 1]."""
        if self._image is None:
            return _noise_pattern(self.pattern_seed, h, w)
        if (h, w) not in self._resized:
            if len(self._resized) >= _MAX_SIZES:  # images of many sizes: keep the latest few
                self._resized.pop(next(iter(self._resized)))
            img = self._image.resize((w, h), Image.BILINEAR)
            self._resized[(h, w)] = np.asarray(img, dtype=np.float32) / 255.0
        return self._resized[(h, w)]

    def _apply(self, image: np.ndarray, *, seed: int, test: bool) -> np.ndarray:
        h, w = image.shape[:2]
        n = self.pattern_array(h, w)
        out = (1 - self.alpha) * (image.astype(np.float32) / 255.0) + self.alpha * n
        return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)
