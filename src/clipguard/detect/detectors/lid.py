"""``lid``: the maximum-likelihood local intrinsic dimensionality of a sample's neighbourhood."""
from __future__ import annotations

import numpy as np

from clipguard.detect.detectors.base import DensityDetector
from clipguard.detect.detectors.registry import DETECTORS
from clipguard.detect.neighbours.stats import lid_mle

__all__ = ["LID"]


@DETECTORS.register("lid")
class LID(DensityDetector):
    """Maximum-likelihood local intrinsic dimensionality. Higher = more suspicious."""

    @staticmethod
    def score_from_neighbours(D, I, kdist_ref, lid_ref) -> np.ndarray:  # noqa: D102
        return lid_mle(D)
