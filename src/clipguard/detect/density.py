"""Local-density scores computed from kNN arrays (pure NumPy, float64).

Notation: a query q has neighbour distances ``d_1 <= ... <= d_k`` (one row of ``D``) to a
reference set, itself excluded; ``I`` holds the neighbours' row indices in the reference set.
For every reference point o, ``kdist(o)`` and ``LID(o)`` come from o's OWN k nearest
neighbours in the reference set, o itself excluded, defined exactly as for queries (same k).
Use :func:`neighbour_stats` on the reference self-kNN to get them.

Every score is "higher = more suspicious".

Numerical conventions (the only departures from the textbook formulas):

* distances are clamped to ``>= 0``, and to ``>= EPS = 1e-12`` before any log or division,
  so exact duplicates (distance 0) give finite scores;
* LID when all k distances are equal (the MLE denominator is 0, the limit is +inf) is the
  large finite :data:`LID_MAX`;
* DAO is evaluated in log space and capped at the largest finite float64 instead of
  overflowing to inf.

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

from typing import NamedTuple

import numpy as np

from clipguard.errors import ConfigError

EPS = 1e-12
"""Lower clamp of distances before logs and divisions."""

LID_MAX = 1e12
"""LID given when all k neighbour distances are equal (the MLE is +inf there). Larger than any
LID that float32 distances can produce otherwise (about ``1.7e7 * k``)."""

_LOG_FLOAT_MAX = float(np.log(np.finfo(np.float64).max))


class NeighbourStats(NamedTuple):
    """Per-point statistics of a reference set, each (n_ref,) float64."""

    kdist: np.ndarray
    lid: np.ndarray


def _as_dist(D: np.ndarray) -> np.ndarray:
    D = np.asarray(D, dtype=np.float64)
    if D.ndim != 2 or D.shape[1] < 1:
        raise ConfigError(f"neighbour distances must have shape (n, k) with k >= 1, got {D.shape}")
    if D.shape[0] and np.any(np.diff(D, axis=1) < 0):
        raise ConfigError("neighbour distances must be sorted ascending along each row")
    return np.maximum(D, 0.0)


def _check_indices(D: np.ndarray, I: np.ndarray, n_ref: int) -> np.ndarray:
    I = np.asarray(I)
    if I.shape != D.shape:
        raise ConfigError(f"neighbour indices have shape {I.shape} but distances {D.shape}")
    if I.size and (I.min() < 0 or I.max() >= n_ref):
        raise ConfigError(
            f"neighbour indices must lie in [0, {n_ref}) (rows of the reference set); "
            f"got range [{I.min()}, {I.max()}]"
        )
    return I


def kdistance(D: np.ndarray) -> np.ndarray:
    """k-distance: the distance to the k-th nearest neighbour.

    Args:
        D: (n, k) neighbour distances, ascending along each row.

    Returns:
        (n,) float64 ``d_k`` (clamped to >= 0). Higher = sparser = more suspicious.
    """
    return _as_dist(D)[:, -1].copy()


def lid_mle(D: np.ndarray) -> np.ndarray:
    """Local intrinsic dimensionality, maximum-likelihood estimate.

    ``LID = -1 / ((1/k) * sum_i ln(d_i / d_k))`` with distances clamped to ``>= EPS``.
    When all k distances are equal the denominator is 0 and LID is :data:`LID_MAX`.

    Args:
        D: (n, k) neighbour distances, ascending along each row.

    Returns:
        (n,) float64 LID (> 0). Higher = more suspicious.
    """
    d = np.maximum(_as_dist(D), EPS)
    mean_log = np.mean(np.log(d / d[:, -1:]), axis=1)  # <= 0
    out = np.full(len(d), LID_MAX)
    nz = mean_log < 0
    out[nz] = -1.0 / mean_log[nz]
    return out


def neighbour_stats(D: np.ndarray) -> NeighbourStats:
    """kdist and LID of every reference point from its own self-excluded kNN distances.

    Args:
        D: (n_ref, k) distances of each reference point to its k nearest OTHER reference
            points, ascending.

    Returns:
        ``NeighbourStats(kdist, lid)``, each (n_ref,) float64.
    """
    return NeighbourStats(kdistance(D), lid_mle(D))


def slof(D_q: np.ndarray, I_q: np.ndarray, kdist_ref: np.ndarray) -> np.ndarray:
    """Simplified local outlier factor: ``mean_o kdist(q) / kdist(o)`` over q's k neighbours o.

    Args:
        D_q: (n_q, k) query neighbour distances, ascending.
        I_q: (n_q, k) neighbour indices into the reference set.
        kdist_ref: (n_ref,) k-distances of the reference points (:func:`neighbour_stats`).

    Returns:
        (n_q,) float64; both k-distances are clamped to ``>= EPS``. Higher = more suspicious.
    """
    D_q = _as_dist(D_q)
    kdist_ref = np.asarray(kdist_ref, dtype=np.float64)
    I_q = _check_indices(D_q, I_q, len(kdist_ref))
    kq = np.maximum(D_q[:, -1], EPS)
    ko = np.maximum(kdist_ref[I_q], EPS)
    return np.mean(kq[:, None] / ko, axis=1)


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
    D_q = _as_dist(D_q)
    kdist_ref = np.asarray(kdist_ref, dtype=np.float64)
    lid_ref = np.asarray(lid_ref, dtype=np.float64)
    if kdist_ref.shape != lid_ref.shape:
        raise ConfigError(
            f"kdist_ref {kdist_ref.shape} and lid_ref {lid_ref.shape} must have the same shape"
        )
    I_q = _check_indices(D_q, I_q, len(kdist_ref))
    log_kq = np.log(np.maximum(D_q[:, -1], EPS))
    log_ko = np.log(np.maximum(kdist_ref[I_q], EPS))
    z = lid_ref[I_q] * (log_kq[:, None] - log_ko)  # (n_q, k), all finite
    if z.shape[0] == 0:
        return np.empty(0, dtype=np.float64)
    m = z.max(axis=1)
    log_mean = m + np.log(np.exp(z - m[:, None]).sum(axis=1)) - np.log(z.shape[1])
    return np.exp(np.minimum(log_mean, _LOG_FLOAT_MAX))
