"""``dao``: dimensionality-aware outlierness, ``mean_o (kdist(q) / kdist(o)) ** LID(o)``.

DAO is evaluated in log space and capped at the largest finite float64 instead of overflowing
to inf (the other numerical conventions are those of :mod:`clipguard.detect.neighbours.stats`).

Defects of the published DAO reference code that we deliberately avoid:

* its neighbour indices were taken after removing the self column but then used to index the
  un-removed reference list (an off-by-one neighbour list) -- here ``I`` always indexes the
  reference set directly;
* its queries used their (k+1)-th distance while reference points used their k-th -- here
  both use the k-th distance of k neighbours that exclude the point itself;
* its reference LIDs included the zero self-distance -- here self is excluded by index before
  any statistic is computed.
"""
from __future__ import annotations

import numpy as np

from clipguard.detect.detectors.base import DensityDetector
from clipguard.detect.detectors.registry import DETECTORS
from clipguard.detect.neighbours.stats import EPS, as_distances, check_neighbour_indices
from clipguard.errors import ConfigError

__all__ = ["DAO", "dao"]

_LOG_FLOAT_MAX = float(np.log(np.finfo(np.float64).max))


def dao(
    D_q: np.ndarray, I_q: np.ndarray, kdist_ref: np.ndarray, lid_ref: np.ndarray
) -> np.ndarray:
    """Dimensionality-aware outlierness: ``mean_o (kdist(q) / kdist(o)) ** LID(o)``.

    Evaluated in float64 log space as
    ``exp(logsumexp_o(LID(o) * (ln kdist(q) - ln kdist(o))) - ln k)`` with k-distances clamped
    to ``>= EPS``; a result beyond the float64 range is capped near its largest finite value
    (about 1.8e308) instead of becoming inf.

    Args:
        D_q: (n_q, k) query neighbour distances, ascending.
        I_q: (n_q, k) neighbour indices into the reference set.
        kdist_ref: (n_ref,) k-distances of the reference points.
        lid_ref: (n_ref,) LIDs of the reference points.

    Returns:
        (n_q,) float64 (> 0). Higher = more suspicious.
    """
    D_q = as_distances(D_q)
    kdist_ref = np.asarray(kdist_ref, dtype=np.float64)
    lid_ref = np.asarray(lid_ref, dtype=np.float64)
    if kdist_ref.shape != lid_ref.shape:
        raise ConfigError(
            f"kdist_ref {kdist_ref.shape} and lid_ref {lid_ref.shape} must have the same shape"
        )
    I_q = check_neighbour_indices(D_q, I_q, len(kdist_ref))
    log_kq = np.log(np.maximum(D_q[:, -1], EPS))
    log_ko = np.log(np.maximum(kdist_ref[I_q], EPS))
    z = lid_ref[I_q] * (log_kq[:, None] - log_ko)  # (n_q, k), all finite
    if z.shape[0] == 0:
        return np.empty(0, dtype=np.float64)
    m = z.max(axis=1)
    log_mean = m + np.log(np.exp(z - m[:, None]).sum(axis=1)) - np.log(z.shape[1])
    return np.exp(np.minimum(log_mean, _LOG_FLOAT_MAX))


@DETECTORS.register("dao")
class DAO(DensityDetector):
    """Dimensionality-aware outlierness: mean of (kdist(q)/kdist(o))**LID(o). Higher = more suspicious."""

    @staticmethod
    def score_from_neighbours(D, I, kdist_ref, lid_ref) -> np.ndarray:  # noqa: D102
        return dao(D, I, kdist_ref, lid_ref)
