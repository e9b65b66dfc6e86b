"""``slof``: the simplified local outlier factor, ``mean_o kdist(q) / kdist(o)`` over q's neighbours."""
from __future__ import annotations

import numpy as np

from clipguard.detect.detectors.base import DensityDetector
from clipguard.detect.detectors.registry import DETECTORS
from clipguard.detect.neighbours.stats import EPS, as_distances, check_neighbour_indices

__all__ = ["SLOF", "slof"]


def slof(D_q: np.ndarray, I_q: np.ndarray, kdist_ref: np.ndarray) -> np.ndarray:
    """Simplified local outlier factor: ``mean_o kdist(q) / kdist(o)`` over q's k neighbours o.

    Args:
        D_q: (n_q, k) query neighbour distances, ascending.
        I_q: (n_q, k) neighbour indices into the reference set.
        kdist_ref: (n_ref,) k-distances of the reference points
            (:func:`~clipguard.detect.neighbours.stats.neighbour_stats`).

    Returns:
        (n_q,) float64; both k-distances are clamped to ``>= EPS``. Higher = more suspicious.
    """
    D_q = as_distances(D_q)
    kdist_ref = np.asarray(kdist_ref, dtype=np.float64)
    I_q = check_neighbour_indices(D_q, I_q, len(kdist_ref))
    kq = np.maximum(D_q[:, -1], EPS)
    ko = np.maximum(kdist_ref[I_q], EPS)
    return np.mean(kq[:, None] / ko, axis=1)


@DETECTORS.register("slof")
class SLOF(DensityDetector):
    """Simplified LOF: mean of kdist(q) / kdist(o) over neighbours o. Higher = more suspicious."""

    @staticmethod
    def score_from_neighbours(D, I, kdist_ref, lid_ref) -> np.ndarray:  # noqa: D102
        return slof(D, I, kdist_ref)
