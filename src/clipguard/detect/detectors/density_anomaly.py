"""``density_anomaly``: a two-sided k-distance anomaly (unusually sparse OR unusually dense)."""
from __future__ import annotations

import numpy as np

from clipguard.detect.detectors.base import DensityDetector
from clipguard.detect.detectors.registry import DETECTORS
from clipguard.detect.neighbours.stats import EPS, kdistance

__all__ = ["DensityAnomaly"]


@DETECTORS.register("density_anomaly")
class DensityAnomaly(DensityDetector):
    """Two-sided k-distance anomaly: |robust z of ln kdist| against the reference's kdists. Higher = more suspicious.

    ``|ln kdist(q) - median_o ln kdist(o)| / (1.4826 * MAD_o ln kdist(o))`` over the reference
    points o (k-distances clamped to ``>= EPS``; MAD 0 -> standard deviation, 0 -> scale 1).
    Flags samples that are unusually SPARSE (the DAO paper's poison at low rates) and samples
    that are unusually DENSE: at high poison rates the triggered images collapse into a cluster
    that is tighter than any clean region, and every one-sided density score ranks them last.
    """

    row_local = False  # the median and MAD run over every reference row

    @staticmethod
    def score_from_neighbours(D, I, kdist_ref, lid_ref) -> np.ndarray:  # noqa: D102
        ref = np.asarray(kdist_ref, dtype=np.float64)
        ref = np.log(np.maximum(ref[~np.isnan(ref)], EPS))
        med = float(np.median(ref)) if ref.size else 0.0
        scale = 1.4826 * float(np.median(np.abs(ref - med))) if ref.size else 0.0
        if not scale > 0:
            scale = float(np.std(ref)) if ref.size else 0.0
        if not scale > 0:
            scale = 1.0
        return np.abs(np.log(np.maximum(kdistance(D), EPS)) - med) / scale
