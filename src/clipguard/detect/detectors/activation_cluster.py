"""``activation_cluster``: activation clustering (Chen et al., 2018) inside caption concepts.

In the paper, the activations of each class are reduced to a few dimensions and split into two
clusters; a class whose smaller cluster is small (relative size well below one half) and well
separated holds poison, and that cluster is the poison. Here a "class" is a caption concept
(:mod:`clipguard.detect.detectors.concepts`) and the activations are the L2-normalised image
embeddings.

For a concept with images ``X_c`` (n_c, d):

1. centre them and project on their top ``n_components`` principal directions (the right
   singular vectors of ``X_c - mean``; PCA instead of the paper's ICA, deterministic);
2. 2-means on the projections (sklearn ``KMeans``, seeded, ``n_init`` = 3); ``S`` = the smaller
   cluster, ``rel = |S| / n_c`` in ``[0, 0.5]``;
3. the concept's weight ``w = max(0, 1 - rel / max_share)``: 0 for a balanced split (a single
   blob cut in two), up to 1 for a tiny cluster;
4. every sample ``i`` assigned to ``S`` (nearer to its centre) scores
   ``w * (b_i - a_i) / max(a_i, b_i)`` -- its simplified silhouette, with ``a_i`` and ``b_i``
   the distances to the centres of ``S`` and of the other cluster, in ``(0, 1]`` --; the
   samples of the larger cluster score 0.

So a score lies in ``[0, 1)``: how small the sample's cluster is relative to its concept times
how clearly it belongs to it (a continuous score, so AUROC is meaningful). The centroid
(simplified) silhouette costs O(n_c) instead of the O(n_c**2) of the pairwise one.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from clipguard.detect.detectors.concepts import DEFAULT_MIN_SIZE, ConceptDetector
from clipguard.detect.detectors.registry import DETECTORS
from clipguard.detect.options import DEFAULT_SEED
from clipguard.utils.validate import check_int, check_real

__all__ = ["ActivationCluster", "activation_cluster_scores"]

_N_INIT = 3


def _fit_split(x: np.ndarray, n_components: int, max_share: float,
               seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """``(mean, basis (d, p), centres (2, p) with the smaller cluster first, weight)``."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    x = np.asarray(x, dtype=np.float64)
    mu = x.mean(axis=0)
    _, sv, vt = np.linalg.svd(x - mu, full_matrices=False)
    basis = vt[:n_components].T
    if not sv[0] > 0:  # every image of the concept is the same: nothing to split
        return mu, basis, np.zeros((2, basis.shape[1])), 0.0
    z = (x - mu) @ basis
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        km = KMeans(n_clusters=2, n_init=_N_INIT, random_state=seed).fit(z)
    sizes = np.bincount(km.labels_, minlength=2)
    small = int(np.argmin(sizes))  # ties: cluster 0
    rel = sizes[small] / len(x)
    weight = max(0.0, 1.0 - rel / max_share)
    centres = km.cluster_centers_[[small, 1 - small]].astype(np.float64)
    return mu, basis, centres, float(weight)


def _apply_split(state: tuple[np.ndarray, np.ndarray, np.ndarray, float], x: np.ndarray) -> np.ndarray:
    mu, basis, centres, weight = state
    out = np.zeros(len(x), dtype=np.float64)
    if weight == 0:
        return out
    z = (np.asarray(x, dtype=np.float64) - mu) @ basis
    a = np.linalg.norm(z - centres[0], axis=1)
    b = np.linalg.norm(z - centres[1], axis=1)
    in_small = a < b
    out[in_small] = weight * (b[in_small] - a[in_small]) / b[in_small]
    return out


def activation_cluster_scores(x: np.ndarray, n_components: int = 10, max_share: float = 0.35,
                              seed: int = 0) -> np.ndarray:
    """Activation-clustering scores of one group of samples (module docstring).

    Args:
        x: (n, d) representations of one concept (used as given: not normalised here).
        n_components: principal directions kept before the 2-means.
        max_share: relative size of the smaller cluster from which the split counts as
            balanced (weight 0).
        seed: ``random_state`` of the 2-means.

    Returns:
        (n,) float64 in [0, 1); 0 for the larger cluster; higher = more suspicious.
    """
    return _apply_split(_fit_split(x, n_components, max_share, seed), x)


@DETECTORS.register("activation_cluster")
class ActivationCluster(ConceptDetector):
    """2-means split of the images inside each caption concept (Chen et al. 2018): a small, well separated cluster is suspicious. Needs caption embeddings.

    Args:
        n_components: principal directions kept before the 2-means (default 10).
        max_share: relative size of the smaller cluster at and above which the split scores 0
            (default 0.35).
        n_concepts: number of caption concepts (k-means on the caption embeddings); None =
            chosen by silhouette (:mod:`~clipguard.detect.detectors.concepts`).
        min_size: concepts with fewer samples are not tested; their samples score 0.
        seed: seed of the k-means runs.

    Fitted attributes: ``concepts_``, ``states_`` (``{concept: (mean, basis, centres,
    weight)}``), ``n_features_in_``.

    Scores: (N,) float64 in [0, 1): ``(1 - rel / max_share)+`` times the sample's simplified
    silhouette for the smaller cluster of its concept, 0 otherwise (module docstring). Higher =
    more suspicious.
    """

    def __init__(self, *, n_components: int = 10, max_share: float = 0.35,
                 n_concepts: int | None = None, min_size: int = DEFAULT_MIN_SIZE,
                 seed: int = DEFAULT_SEED) -> None:
        self.n_components = n_components
        self.max_share = max_share
        self.n_concepts = n_concepts
        self.min_size = min_size
        self.seed = seed

    def _check(self) -> None:
        check_int("n_components", self.n_components, minimum=1)
        check_real("max_share", self.max_share, low=0, high=0.5, low_open=True)

    def _fit_concept(self, x: np.ndarray) -> Any:
        return _fit_split(x, int(self.n_components), float(self.max_share), int(self.seed))

    def _score_concept(self, state: Any, x: np.ndarray) -> np.ndarray:
        return _apply_split(state, x)
