"""Per-point statistics of kNN distances: the k-distance and the local intrinsic dimensionality.

Notation: a query q has neighbour distances ``d_1 <= ... <= d_k`` (one row of ``D``) to a
reference set, itself excluded; ``I`` holds the neighbours' row indices in the reference set.
For every reference point o, ``kdist(o)`` and ``LID(o)`` come from o's OWN k nearest
neighbours in the reference set, o itself excluded, defined exactly as for queries (same k):
:func:`neighbour_stats` on the reference self-kNN gives them. The density scores built on them
(SLOF, DAO, ...) live with their detectors in :mod:`clipguard.detect.detectors`.

Numerical conventions (the only departures from the textbook formulas):

* distances are clamped to ``>= 0``, and to ``>= EPS = 1e-12`` before any log or division,
  so exact duplicates (distance 0) give finite scores;
* LID when all k distances are equal (the MLE denominator is 0, the limit is +inf) is the
  large finite :data:`LID_MAX`.

Everything is pure NumPy in float64; "higher = more suspicious" for every score.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from clipguard.errors import ConfigError

__all__ = ["EPS", "LID_MAX", "NeighbourStats", "robust_center_scale", "robust_z", "kdistance", "lid_mle", "neighbour_stats", "as_distances",
           "check_neighbour_indices"]

EPS = 1e-12
"""Lower clamp of distances before logs and divisions."""

LID_MAX = 1e12
"""LID given when all k neighbour distances are equal (the MLE is +inf there). Larger than any
LID that float32 distances can produce otherwise (about ``1.7e7 * k``)."""


class NeighbourStats(NamedTuple):
    """Per-point statistics of a reference set, each (n_ref,) float64."""

    kdist: np.ndarray
    lid: np.ndarray


def as_distances(D: np.ndarray) -> np.ndarray:
    """``D`` (n, k), checked to be sorted ascending along each row, as float64 clamped to ``>= 0``.

    Raises:
        ConfigError: not 2-D with k >= 1, or a row not sorted ascending.
    """
    D = np.asarray(D, dtype=np.float64)
    if D.ndim != 2 or D.shape[1] < 1:
        raise ConfigError(f"neighbour distances must have shape (n, k) with k >= 1, got {D.shape}")
    if D.shape[0] and np.any(np.diff(D, axis=1) < 0):
        raise ConfigError("neighbour distances must be sorted ascending along each row")
    return np.maximum(D, 0.0)


def check_neighbour_indices(D: np.ndarray, I: np.ndarray, n_ref: int) -> np.ndarray:
    """``I`` (same shape as ``D``), checked to address rows ``[0, n_ref)`` of the reference set.

    Raises:
        ConfigError: a shape mismatch or an index out of range.
    """
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
    return as_distances(D)[:, -1].copy()


def lid_mle(D: np.ndarray) -> np.ndarray:
    """Local intrinsic dimensionality, maximum-likelihood estimate.

    ``LID = -1 / ((1/k) * sum_i ln(d_i / d_k))`` with distances clamped to ``>= EPS``.
    When all k distances are equal the denominator is 0 and LID is :data:`LID_MAX`.

    Args:
        D: (n, k) neighbour distances, ascending along each row.

    Returns:
        (n,) float64 LID (> 0). Higher = more suspicious.
    """
    d = np.maximum(as_distances(D), EPS)
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


def robust_center_scale(values: np.ndarray) -> tuple[float, float]:
    """The median and robust scale (``1.4826 * MAD``, the standard deviation when MAD is 0) of
    finite (n,) ``values``; the scale is 0.0 for a constant (or empty) set."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return 0.0, 0.0
    med = float(np.median(v))
    scale = 1.4826 * float(np.median(np.abs(v - med)))
    if scale == 0 or not np.isfinite(scale):
        scale = float(np.std(v))
    return med, (scale if np.isfinite(scale) else 0.0)


def robust_z(scores: np.ndarray) -> np.ndarray:
    """``(s - median) / (1.4826 * MAD)`` (:func:`robust_center_scale`); zeros for a constant score.
    Non-finite values are clipped to the finite range."""
    s = np.asarray(scores, dtype=np.float64)
    finite = s[np.isfinite(s)]
    if finite.size == 0:
        return np.zeros_like(s)
    s = np.clip(np.nan_to_num(s, nan=finite.min(), posinf=finite.max(), neginf=finite.min()),
                finite.min(), finite.max())
    med, scale = robust_center_scale(s)
    if scale == 0:
        return np.zeros_like(s)
    return (s - med) / scale
