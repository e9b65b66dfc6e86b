"""Nashville: an Instagram-style colour filter as a trigger (a global, natural-looking change).

Our own implementation of the CSSgram definition that the ``pilgram`` package also follows:
sepia(0.2), contrast(1.2), brightness(1.05), saturate(1.2), then a 'darken' blend with
rgb(247, 176, 153) at opacity 0.56 and a 'lighten' blend with rgb(0, 70, 150) at opacity 0.4.
``strength`` in (0, 1] mixes the filtered image with the original (1 = the full filter).
"""
from __future__ import annotations

import numpy as np

from clipguard.attacks.base import ATTACKS, Trigger
from clipguard.utils.validate import check_real

__all__ = ["Nashville", "nashville"]

_SEPIA = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], dtype=np.float32)
_LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)


def _sepia(x: np.ndarray, amount: float) -> np.ndarray:
    m = (1 - amount) * np.eye(3, dtype=np.float32) + amount * _SEPIA
    return x @ m.T


def _saturate(x: np.ndarray, amount: float) -> np.ndarray:
    grey = (x @ _LUMA)[..., None]
    return grey + amount * (x - grey)


def nashville(x: np.ndarray) -> np.ndarray:
    """Apply the Nashville filter to (H, W, 3) float32 in [0, 1]; returns the same shape in [0, 1]."""
    y = np.clip(_sepia(x, 0.2), 0, 1)
    y = np.clip((y - 0.5) * 1.2 + 0.5, 0, 1)  # contrast
    y = np.clip(y * 1.05, 0, 1)  # brightness
    y = np.clip(_saturate(y, 1.2), 0, 1)
    dark = np.array([247, 176, 153], dtype=np.float32) / 255
    y = 0.44 * y + 0.56 * np.minimum(y, dark)
    light = np.array([0, 70, 150], dtype=np.float32) / 255
    y = 0.6 * y + 0.4 * np.maximum(y, light)
    return y


@ATTACKS.register("nashville")
class Nashville(Trigger):
    """Instagram 'Nashville' colour filter.

    Args:
        strength: share of the filtered image in the output, in (0, 1].
    """

    def __init__(self, strength: float = 1.0) -> None:
        self.strength = check_real("nashville strength", strength, low=0, high=1, low_open=True)

    def _apply(self, image: np.ndarray, *, seed: int, test: bool) -> np.ndarray:
        x = image.astype(np.float32) / 255.0
        y = (1 - self.strength) * x + self.strength * nashville(x)
        return np.clip(np.round(y * 255.0), 0, 255).astype(np.uint8)
