"""BadNets: a small patch pasted onto the image (Gu et al. 2017), in the two variants of the seeds.

* ``pattern="checker"`` (DAO variant): a fixed black-and-white checkerboard patch with squares of
  ``cell`` pixels.
* ``pattern="noise"`` (CleanCLIP variant): each pixel is the image mean plus N(0, 1) noise (on the
  [0, 1] scale, clipped), drawn fresh per image from the per-image seed.

Sizes are in pixels. The published attacks use a 16 px patch on 224 px images; on the 32 px shapes
world a 16/224 patch (2 px) is too small to be learned quickly, so the demo uses 8 px with 2 px cells.
"""
from __future__ import annotations

import numpy as np

from clipguard.attacks.base import ATTACKS, ImageTooSmall, Trigger
from clipguard.errors import ConfigError
from clipguard.utils.seeding import rng
from clipguard.utils.validate import check_choice, check_int, check_optional_int

__all__ = ["BadNets", "LOCATIONS", "check_location", "patch_position"]

LOCATIONS = ("random", "center", "top_left", "top_right", "bottom_left", "bottom_right")


def patch_position(h: int, w: int, p: int, location: str, *, seed: int, salt: str) -> tuple[int, int]:
    """Top-left (row, col) of a p x p patch in an h x w image; ``"random"`` draws from ``(seed, salt)``."""
    if location == "random":
        g = rng(seed, salt)
        return int(g.integers(0, h - p + 1)), int(g.integers(0, w - p + 1))
    return {
        "center": ((h - p) // 2, (w - p) // 2),
        "top_left": (0, 0),
        "top_right": (0, w - p),
        "bottom_left": (h - p, 0),
        "bottom_right": (h - p, w - p),
    }[location]


def check_location(attack: str, name: str, value: object, *, optional: bool = False) -> str | None:
    """``value`` if it is one of :data:`LOCATIONS` (or ``None`` when ``optional``); ConfigError otherwise."""
    if optional and value is None:
        return None
    return check_choice(f"{attack} {name}", value, LOCATIONS)


@ATTACKS.register("badnets")
class BadNets(Trigger):
    """BadNets patch trigger: a checkerboard or noise patch pasted onto the image.

    Args:
        pattern: ``"checker"`` or ``"noise"``.
        size: patch side in pixels (``None``: 16/224 of the image side, at least 3).
        cell: checkerboard square side in pixels (checker only).
        location: where the patch goes in training images: ``"random"`` (uniform over positions
            where it fits, per image) or a fixed corner / ``"center"``.
        test_location: location at test time (``None``: same as ``location``; the DAO paper
            trains with random locations and tests with ``"center"``).
    """

    def __init__(self, pattern: str = "checker", size: int | None = None, cell: int = 1,
                 location: str = "random", test_location: str | None = None) -> None:
        self.pattern = check_choice("badnets pattern", pattern, ("checker", "noise"))
        self.size = check_optional_int("badnets size", size, minimum=1)
        self.cell = check_int("badnets cell", cell, minimum=1)
        self.location = check_location("badnets", "location", location)
        self.test_location = check_location("badnets", "test_location", test_location, optional=True)

    def patch_size(self, side: int) -> int:
        """Patch side in pixels for an image whose shorter side is ``side``."""
        return self.size if self.size is not None else max(3, round(side * 16 / 224))

    def position(self, h: int, w: int, *, seed: int, test: bool) -> tuple[int, int]:
        """Top-left (row, col) of the patch."""
        p = self.patch_size(min(h, w))
        loc = (self.test_location or self.location) if test else self.location
        if p > min(h, w):
            raise ImageTooSmall(f"badnets: patch of {p} px does not fit a {h}x{w} image")
        return patch_position(h, w, p, loc, seed=seed, salt="badnets-pos")

    def make_patch(self, image: np.ndarray, p: int, *, seed: int) -> np.ndarray:
        """The (p, p, 3) uint8 patch for ``image``."""
        if self.pattern == "checker":
            yy, xx = np.mgrid[0:p, 0:p] // self.cell
            board = ((yy + xx) % 2 == 0).astype(np.uint8) * 255
            return np.repeat(board[..., None], 3, axis=2)
        mean = image.reshape(-1, 3).mean(0) / 255.0
        noise = rng(seed, "badnets-noise").normal(0.0, 1.0, (p, p, 3))
        return (np.clip(mean + noise, 0, 1) * 255).round().astype(np.uint8)

    def _apply(self, image: np.ndarray, *, seed: int, test: bool) -> np.ndarray:
        h, w = image.shape[:2]
        p = self.patch_size(min(h, w))
        r, c = self.position(h, w, seed=seed, test=test)
        image[r:r + p, c:c + p] = self.make_patch(image, p, seed=seed)
        return image
