"""Targeted data poisoning (TDPA, Carlini & Terzis 2022): no trigger at all.

One chosen image (whose caption does not name the target) is added many times, each copy with a
real caption from the dataset that names the target. The attack succeeds if that one image is
classified as the target. The poisoner handles it (see :func:`clipguard.attacks.poison_dataset`);
as a trigger it is the identity, so evaluation runs on the untouched target image.
"""
from __future__ import annotations

import numpy as np

from clipguard.attacks.base import ATTACKS, Trigger
from clipguard.errors import ConfigError

__all__ = ["TargetedPoison"]


@ATTACKS.register("tdpa")
class TargetedPoison(Trigger):
    """Targeted data poisoning: duplicates of one image with captions naming the target.

    Args:
        source_id: id of the image to duplicate (``None``: a seeded random non-target row). Ids
            are strings; a number (``--param source_id=17``) is read as its text.
    """

    def __init__(self, source_id: str | None = None) -> None:
        if isinstance(source_id, bool) or not isinstance(source_id, (str, int, type(None))):
            raise ConfigError(f"tdpa source_id must be a row id of the manifest (a string), got {source_id!r}")
        self.source_id = None if source_id is None else str(source_id)

    def _apply(self, image: np.ndarray, *, seed: int, test: bool) -> np.ndarray:
        return image
