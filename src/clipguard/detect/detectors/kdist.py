"""``kdist``: the distance to the k-th nearest neighbour."""
from __future__ import annotations

import numpy as np

from clipguard.detect.detectors.base import DensityDetector
from clipguard.detect.detectors.registry import DETECTORS
from clipguard.detect.neighbours.stats import kdistance

__all__ = ["KDistance"]


@DETECTORS.register("kdist")
class KDistance(DensityDetector):
    """Distance to the k-th nearest neighbour. Higher = more isolated = more suspicious."""

    @staticmethod
    def score_from_neighbours(D, I, kdist_ref, lid_ref) -> np.ndarray:  # noqa: D102
        return kdistance(D)
