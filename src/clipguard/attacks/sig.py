"""SIG (Barni et al. 2019): a horizontal sinusoidal signal over the whole image.

s(j) = amplitude * sin(2 pi * frequency * j / W) for column j; x' = clip(x + s) on the [0, 1]
scale (additive, as in the original), or with ``alpha`` set, x' = (1 - alpha) x + alpha (0.5 + s)
(the blended form some CLIP papers use). Defaults from the seeds: amplitude 60/255, 6 periods.
"""
from __future__ import annotations

import numpy as np

from clipguard.attacks.base import ATTACKS, Trigger
from clipguard.utils.validate import check_real

__all__ = ["SIG"]


@ATTACKS.register("sig")
class SIG(Trigger):
    """SIG trigger: a horizontal sinusoidal signal added to (or blended with) the whole image.

    Args:
        amplitude: peak amplitude on the [0, 1] scale (60/255 in the seeds).
        frequency: number of periods across the image width (6).
        alpha: ``None`` for the additive form, or the blend weight in (0, 1].
    """

    def __init__(self, amplitude: float = 60 / 255, frequency: float = 6, alpha: float | None = None) -> None:
        self.amplitude = check_real("sig amplitude", amplitude, low=0, low_open=True)
        self.frequency = check_real("sig frequency", frequency, low=0, low_open=True)
        self.alpha = None if alpha is None else check_real("sig alpha", alpha, low=0, high=1, low_open=True)

    def signal(self, w: int) -> np.ndarray:
        """(w,) float32 signal over the columns."""
        j = np.arange(w, dtype=np.float32)
        return (self.amplitude * np.sin(2 * np.pi * self.frequency * j / w)).astype(np.float32)

    def _apply(self, image: np.ndarray, *, seed: int, test: bool) -> np.ndarray:
        x = image.astype(np.float32) / 255.0
        s = self.signal(image.shape[1])[None, :, None]
        out = x + s if self.alpha is None else (1 - self.alpha) * x + self.alpha * (0.5 + s)
        return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)
