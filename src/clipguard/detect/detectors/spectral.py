"""``spectral``: spectral signatures (Tran, Li and Madry, NeurIPS 2018) inside caption concepts.

In the paper, the learned representations of one class are centred and projected on their top
right singular vector; poisoned samples, a small sub-population that the network represents
along a shared direction, have the largest squared projections. Here a "class" is a caption
concept (:mod:`clipguard.detect.detectors.concepts`, a k-means cluster of the caption
embeddings) and the representations are the L2-normalised image embeddings.

For a concept with images ``X_c`` (n_c, d), mean ``mu`` and top right singular vector ``v`` of
``X_c - mu``, the projections ``p_i = (x_i - mu) . v`` give::

    score_i = p_i ** 2 / MAD(p) ** 2,    MAD(p) = median_{j in c} |p_j - median(p)|

``p_i ** 2`` is the paper's score. Dividing by the squared median absolute deviation of the
projections makes concepts of different spread comparable without discarding the size of an
outlier: in a concept with a poisoned sub-population ``v`` points at it, the clean majority
fixes the median and the MAD (a robust noise level along ``v``), and the poison scores far above
1; in a clean concept ``p`` is roughly symmetric and the scores follow a scaled chi-square(1)
(``p**2 / median(p**2)``). A rank within the concept would give the top of every clean concept
the same score as the poison; dividing by ``median(p**2)`` instead lets a large poison share
(10 % of the data in one concept) shift the clean projections away from 0 and inflate the
scale. A MAD of 0 falls back to the mean absolute deviation, and a concept whose images are all
equal scores 0.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from clipguard.detect.detectors.concepts import DEFAULT_MIN_SIZE, ConceptDetector
from clipguard.detect.detectors.registry import DETECTORS
from clipguard.detect.options import DEFAULT_SEED

__all__ = ["Spectral", "spectral_signature"]


def _fit_signature(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """``(mu, v, scale)`` of one concept's (n_c, d) rows (see the module docstring)."""
    x = np.asarray(x, dtype=np.float64)
    mu = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mu, full_matrices=False)
    v = vt[0]
    p = (x - mu) @ v
    dev = np.abs(p - np.median(p))
    mad = float(np.median(dev))
    if not mad > 0:
        mad = float(dev.mean())
    return mu, v, mad ** 2


def _apply_signature(state: tuple[np.ndarray, np.ndarray, float], x: np.ndarray) -> np.ndarray:
    mu, v, scale = state
    r = ((np.asarray(x, dtype=np.float64) - mu) @ v) ** 2
    return r / scale if scale > 0 else np.zeros_like(r)


def spectral_signature(x: np.ndarray) -> np.ndarray:
    """MAD-normalised spectral-signature scores of one group of samples (module docstring).

    Args:
        x: (n, d) representations of one concept (used as given: not normalised here).

    Returns:
        (n,) float64 ``p_i**2 / MAD(p)**2`` with ``p_i = (x_i - mean) . v``, ``v`` the top right
        singular vector of the centred ``x`` (module docstring); higher = more suspicious.
    """
    return _apply_signature(_fit_signature(x), x)


@DETECTORS.register("spectral")
class Spectral(ConceptDetector):
    """Spectral signature of the image inside its caption concept (Tran et al. 2018). Needs caption embeddings.

    Args:
        n_concepts: number of caption concepts (k-means on the caption embeddings); None =
            chosen by silhouette (:mod:`~clipguard.detect.detectors.concepts`).
        min_size: concepts with fewer samples are not tested; their samples score 0.
        seed: seed of the k-means.

    Fitted attributes: ``concepts_``, ``states_`` (``{concept: (mean (d,), v (d,), MAD**2)}``),
    ``n_features_in_``.

    Scores: (N,) float64 >= 0, the squared projection on the concept's top singular vector
    divided by the squared MAD of the concept's projections (module docstring). Higher = more suspicious.
    """

    def __init__(self, *, n_concepts: int | None = None, min_size: int = DEFAULT_MIN_SIZE,
                 seed: int = DEFAULT_SEED) -> None:
        self.n_concepts = n_concepts
        self.min_size = min_size
        self.seed = seed

    def _fit_concept(self, x: np.ndarray) -> Any:
        return _fit_signature(x)

    def _score_concept(self, state: Any, x: np.ndarray) -> np.ndarray:
        return _apply_signature(state, x)
