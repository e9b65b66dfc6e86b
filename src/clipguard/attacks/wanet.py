"""WaNet (Nguyen & Tran 2021): a fixed, smooth, imperceptible warp of the whole image.

A random (2, k, k) control grid in [-1, 1] (drawn once from ``field_seed``) is normalised by its
mean absolute value, upsampled bicubically to (2, H, W), scaled by ``strength / H`` and added to
the identity sampling grid; the image is resampled with ``torch.nn.functional.grid_sample``
(bilinear, border padding). Same field for every image: a fixed trigger.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from clipguard.attacks.base import ATTACKS, Trigger
from clipguard.utils.seeding import derive_seed
from clipguard.utils.validate import check_int, check_real

__all__ = ["WaNet", "warp_grid"]


@lru_cache(maxsize=16)
def warp_grid(k: int, strength: float, field_seed: int, h: int, w: int) -> torch.Tensor:
    """(1, H, W, 2) sampling grid in [-1, 1] for ``grid_sample``."""
    g = torch.Generator().manual_seed(derive_seed(field_seed, "wanet", k))
    ins = torch.rand(1, 2, k, k, generator=g) * 2 - 1
    ins = ins / ins.abs().mean()
    noise = F.interpolate(ins, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    identity = torch.stack((xs, ys), dim=2)[None]
    return torch.clamp(identity + strength * noise / h, -1, 1)


@ATTACKS.register("wanet")
class WaNet(Trigger):
    """WaNet trigger: one fixed, smooth, imperceptible warp of the whole image.

    Args:
        k: control grid size (4 in WaNet).
        strength: warp strength s (1 in the seeds' CLIP setting; 0.5 in WaNet on CIFAR).
        field_seed: seed of the fixed warp field.
    """

    def __init__(self, k: int = 4, strength: float = 1.0, field_seed: int = 0) -> None:
        self.k = check_int("wanet k", k, minimum=2)
        self.strength = check_real("wanet strength", strength, low=0, low_open=True)
        self.field_seed = check_int("wanet field_seed", field_seed)

    def _apply(self, image: np.ndarray, *, seed: int, test: bool) -> np.ndarray:
        h, w = image.shape[:2]
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        y = F.grid_sample(x, warp_grid(self.k, self.strength, self.field_seed, h, w), mode="bilinear",
                          padding_mode="border", align_corners=True)
        return y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
