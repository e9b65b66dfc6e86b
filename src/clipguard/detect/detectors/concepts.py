"""Caption concepts: groups of samples whose captions say the same thing, found without labels.

The sub-population detectors (``spectral``, ``activation_cluster``) test the images of each
concept for a small, coherent sub-group -- poison that joins a frequent concept (a target class
that clean captions also name) hides in the density of that concept's images, but it is a
distinct direction among them.

A concept is a k-means cluster of the L2-normalised caption embeddings (sklearn ``KMeans``,
seeded, ``n_init`` fixed). Exact caption strings are too fine for templated captions
(``"a photo of a star"`` and ``"a drawing of a star"`` are one concept), and caption strings
alone cannot be embedded here, so the detectors require caption embeddings (``"text"``).

The number of concepts, when not given, is chosen from the data: k-means is run for every k of
the grid :func:`candidate_n_concepts` (2, 3, ..., 12, 16, 23, 32, ... up to ``round(sqrt(N / 2))``,
capped at ``MAX_CONCEPTS``; one k-means init each, on a seeded subsample of at most 5,000 rows)
and the k with the largest silhouette (Euclidean, on the normalised caption embeddings, on at
most 2,000 of those rows) is fitted on all samples (``n_init`` = 3); a set of
fewer than 5 samples is one concept. Why not simply the largest k: splitting a true concept into
many small clusters leaves too few samples per cluster for a direction to stand out of the noise
of d-dimensional embeddings (a sample covariance's top eigenvalue grows like
``(1 + sqrt(d / n_c))**2``), and merging two concepts makes the difference between them the
dominant direction; the silhouette finds the grouping the captions themselves have.

Concepts smaller than ``min_size`` are not tested: a direction or a 2-way split fitted on a few
points is noise. Their samples get score 0, the least suspicious value of both detectors (a
poison set that forms its own, small caption concept is the job of the density detectors).
"""
from __future__ import annotations

import math
import warnings
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from clipguard.detect.detectors.base import Detector, ScoreInputs, require_input
from clipguard.detect.neighbours.normalize import normalize
from clipguard.detect.options import DEFAULT_SEED
from clipguard.errors import ConfigError
from clipguard.utils.validate import check_int, check_optional_int

__all__ = ["CaptionConcepts", "ConceptDetector", "fit_concepts", "candidate_n_concepts", "DEFAULT_MIN_SIZE"]

MAX_CONCEPTS = 100
"""Upper bound of :func:`candidate_n_concepts`."""

DEFAULT_MIN_SIZE = 20
"""Concepts with fewer samples are not tested (their samples score 0)."""

_N_INIT = 3


_SILHOUETTE_SAMPLE = 2000
_SELECT_SAMPLE = 5000


def candidate_n_concepts(n: int) -> list[int]:
    """The k tried when ``n_concepts`` is None: 2, 3, ..., 12, then ``round(sqrt(2) ** j)`` (16,
    23, 32, 45, 64, 91), up to ``round(sqrt(n / 2))`` capped at ``MAX_CONCEPTS``; ``[1]`` when
    that bound is below 2."""
    top = int(min(MAX_CONCEPTS, round(math.sqrt(n / 2))))
    if top < 2:
        return [1]
    ks = sorted(set(range(2, 13)) | {int(round(math.sqrt(2) ** j)) for j in range(8, 40)})
    return [k for k in ks if k <= top]


@dataclass
class CaptionConcepts:
    """The caption concepts of a set.

    Attributes:
        centres: (C, d_t) float64 k-means centres of the normalised caption embeddings.
        labels: (N,) int64 concept of every sample of the fitted set.
        sizes: (C,) int64 number of fitted samples per concept.
    """

    centres: np.ndarray
    labels: np.ndarray
    sizes: np.ndarray

    def assign(self, text: np.ndarray) -> np.ndarray:
        """(n_q,) int64 nearest concept centre of each query caption embedding (n_q, d_t)."""
        t = normalize(text).astype(np.float64)
        d2 = (t * t).sum(1)[:, None] - 2 * t @ self.centres.T + (self.centres ** 2).sum(1)[None, :]
        return np.argmin(d2, axis=1).astype(np.int64)

    def tested(self, min_size: int) -> list[int]:
        """Ids of the concepts with at least ``min_size`` fitted samples, ascending."""
        return [int(c) for c in np.flatnonzero(self.sizes >= min_size)]

    def members(self, concept: int, labels: np.ndarray | None = None) -> np.ndarray:
        """Row indices (ascending) of ``labels`` (default: the fitted set's) in ``concept``."""
        return np.flatnonzero((self.labels if labels is None else labels) == concept)


def _kmeans(t: np.ndarray, k: int, seed: int, n_init: int = _N_INIT) -> Any:
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(t)


def _choose_k(t: np.ndarray, ks: list[int], seed: int) -> int:
    """The k in ``ks`` whose k-means (one init, on a seeded subsample of at most
    ``_SELECT_SAMPLE`` rows) has the largest silhouette (on at most ``_SILHOUETTE_SAMPLE``)."""
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(seed)
    sub = t
    if t.shape[0] > _SELECT_SAMPLE:
        sub = t[np.sort(rng.choice(t.shape[0], _SELECT_SAMPLE, replace=False))]
    best_k, best_s = ks[0], -np.inf
    for k in ks:
        labels = _kmeans(sub, k, seed, n_init=1).labels_
        if not 2 <= len(np.unique(labels)) < sub.shape[0]:
            continue
        s = silhouette_score(sub, labels, sample_size=min(_SILHOUETTE_SAMPLE, sub.shape[0]),
                             random_state=seed)
        if s > best_s:
            best_k, best_s = k, s
    return best_k


def fit_concepts(text: np.ndarray, n_concepts: int | None = None, seed: int = 0) -> CaptionConcepts:
    """Cluster caption embeddings into concepts (k-means, seeded).

    Args:
        text: (N, d_t) caption embeddings (normalised here).
        n_concepts: number of clusters; None = the k of :func:`candidate_n_concepts` (N) with the
            largest silhouette (module docstring). Capped at the number of distinct rows.
        seed: ``random_state`` of k-means and of the subsamples of the choice of k.

    Returns:
        :class:`CaptionConcepts`; an empty cluster (possible with duplicate captions) gets size 0.
    """
    t = normalize(text).astype(np.float64)
    n = t.shape[0]
    c = check_optional_int("n_concepts", n_concepts, minimum=1)
    seed = check_int("seed", seed)
    distinct = len(np.unique(t, axis=0))
    ks = candidate_n_concepts(n) if c is None else [c]
    ks = sorted({min(k, distinct) for k in ks})
    k = ks[0] if len(ks) == 1 else _choose_k(t, ks, seed)
    if k == 1:
        labels = np.zeros(n, dtype=np.int64)
        return CaptionConcepts(t.mean(0, keepdims=True), labels, np.array([n], dtype=np.int64))
    km = _kmeans(t, k, seed)
    labels = km.labels_.astype(np.int64)
    return CaptionConcepts(km.cluster_centers_.astype(np.float64), labels,
                           np.bincount(labels, minlength=k).astype(np.int64))


class ConceptDetector(Detector):
    """Base class of the detectors that test the images of each caption concept on their own.

    A subclass gives :meth:`_fit_concept` (learn from one concept's (n_c, d) image embeddings)
    and :meth:`_score_concept` (score rows of that concept); concepts, fitting, querying and the
    engine hook are shared. Samples of untested concepts (fewer than ``min_size`` fitted
    samples) score 0.

    Args (every subclass):
        n_concepts: number of caption concepts; None = chosen by silhouette (module docstring).
        min_size: smallest concept that is tested (default 20).
        seed: seed of the k-means runs.

    Fitted attributes:
        concepts_: the :class:`CaptionConcepts` of the fitted set.
        states_: ``{concept id: what _fit_concept learned}`` of the tested concepts.
        n_features_in_: image embedding dimension.

    In a scan the detector is fitted on the whole set whatever the reference mode (a concept
    is a property of the whole set; batches or reference draws would cut it into pieces) and
    scores every sample without self-exclusion: a sample belongs to the concept it is tested
    in, as in the papers. The scores do not depend on the reference draw.
    """

    requires = frozenset({"image", "text"})
    fit_hint = "fit(X, text=...)"
    # Opt-in until the evaluation panel of issue 9 decides: worst synthetic AUROC 0.38 (spectral) and
    # 0.49 (activation_cluster) in benchmarks/results/concept_signals.md, and a k-means search per scan.
    in_default_scan = False

    def __init__(self, *, n_concepts: int | None = None, min_size: int = DEFAULT_MIN_SIZE,
                 seed: int = DEFAULT_SEED) -> None:
        self.n_concepts = n_concepts
        self.min_size = min_size
        self.seed = seed

    @abstractmethod
    def _fit_concept(self, x: np.ndarray) -> Any:
        """What to keep of one concept's (n_c, d) float64 unit-norm image embeddings."""

    @abstractmethod
    def _score_concept(self, state: Any, x: np.ndarray) -> np.ndarray:
        """(n,) float64 scores of (n, d) rows of a concept, from its ``state``."""

    def _check(self) -> None:
        """Subclasses check their own parameters here (ConfigError)."""

    def _pair(self, X: Any, text: Any) -> tuple[np.ndarray, np.ndarray]:
        t = require_input(text, "caption embeddings (text=)", self.name)
        x = normalize(X)
        if np.shape(t)[0] != x.shape[0]:
            raise ConfigError(f"{np.shape(t)[0]} caption embeddings for {x.shape[0]} images; they "
                              "must be row-aligned")
        return x.astype(np.float64), t

    def fit(self, X: np.ndarray, *, text: np.ndarray | None = None, captions: Any = None) -> "ConceptDetector":
        """Find the caption concepts of ``text`` (n, d_t) and fit every tested concept's images
        (rows of X, (n, d); normalised here). ``captions`` is accepted and ignored."""
        return self._fit(*self._pair(X, text))

    def _fit(self, x: np.ndarray, t: np.ndarray) -> "ConceptDetector":
        min_size = check_int("min_size", self.min_size, minimum=3)
        self._check()
        self.concepts_ = fit_concepts(t, self.n_concepts, self.seed)
        self.states_ = {c: self._fit_concept(x[self.concepts_.members(c)])
                        for c in self.concepts_.tested(min_size)}
        self.n_features_in_ = x.shape[1]
        return self

    def _score(self, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
        out = np.zeros(x.shape[0], dtype=np.float64)
        for c, state in self.states_.items():
            rows = np.flatnonzero(labels == c)
            if len(rows):
                out[rows] = self._score_concept(state, x[rows])
        return out

    def score_samples(self, X: np.ndarray, *, text: np.ndarray | None = None, captions: Any = None) -> np.ndarray:
        """(n_q,) float64 scores of queries (images X (n_q, d), captions ``text`` (n_q, d_t)):
        each query is scored in the fitted concept nearest to its caption. Higher = more
        suspicious."""
        xq = self._normalized_queries(X, "states_").astype(np.float64)
        _, t = self._pair(xq, text)
        return self._score(xq, self.concepts_.assign(t))

    def fit_score(self, X: np.ndarray, *, text: np.ndarray | None = None, captions: Any = None) -> np.ndarray:
        """Fit on the set (X (n, d), ``text`` (n, d_t)) and score it: (n,) float64."""
        x, t = self._pair(X, text)
        return self._fit(x, t)._score(x, self.concepts_.labels)

    def reference_free(self, inputs: ScoreInputs) -> bool:  # noqa: D102
        return True

    def score_draw(self, inputs: ScoreInputs) -> np.ndarray:  # noqa: D102
        scores = self.fit_score(inputs.image, text=inputs.text)
        sizes = self.concepts_.sizes
        tested = list(self.states_)
        self.info_ = {"n_concepts": int(len(sizes)), "n_tested": len(tested),
                      "tested_share": float(sizes[tested].sum() / max(1, sizes.sum()))}
        return scores
