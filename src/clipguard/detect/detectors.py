"""Density detectors (k-distance, LID, SLOF, DAO) and the all-in-one scorer :func:`score_all`.

Detectors follow the PyOD / scikit-learn convention: the constructor only stores parameters,
``fit(X_ref)`` sets attributes ending in ``_``, ``score_samples(X)`` scores new queries against
the fitted reference, and ``fit_score(X)`` scores a set against itself (self excluded).
All scores are float64 with "higher = more suspicious".

Example::

    det = DETECTORS.get("dao")(k=16)
    scores = det.fit_score(embeddings)          # (N,)
    scores = score_all(embeddings, reference="batch", batch_size=2048)   # {name: (N,)}
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from clipguard.detect.density import dao, kdistance, lid_mle, neighbour_stats, slof
from clipguard.detect.knn import knn_search, normalize
from clipguard.errors import ConfigError
from clipguard.registry import Registry

DETECTORS: Registry[type["DensityDetector"]] = Registry("detector")
REFERENCE_MODES = ("global", "batch")


class DensityDetector:
    """Base class: a kNN density score of queries relative to a reference set.

    Args:
        k: number of nearest neighbours (default 16).
        backend: kNN backend, ``"blocked"`` or ``"faiss"``.
        block_size: tile size of the blocked kNN backend.

    Fitted attributes:
        reference_: (n_ref, d) float32 L2-normalised reference.
        neighbours_: ``(D, I)`` self-excluded kNN of the reference, each (n_ref, k).
        kdist_: (n_ref,) float64 k-distance of every reference point.
        lid_: (n_ref,) float64 LID of every reference point.
    """

    name: str = "base"

    def __init__(self, *, k: int = 16, backend: str = "blocked", block_size: int = 4096) -> None:
        self.k = k
        self.backend = backend
        self.block_size = block_size

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k={self.k!r}, backend={self.backend!r}, block_size={self.block_size!r})"

    # -- the score, from neighbour arrays -------------------------------------------------
    @staticmethod
    def score_from_neighbours(
        D: np.ndarray, I: np.ndarray, kdist_ref: np.ndarray, lid_ref: np.ndarray
    ) -> np.ndarray:
        """(n_q,) float64 scores from query kNN ``D``/``I`` (n_q, k) and reference stats."""
        raise NotImplementedError

    # -- estimator API ------------------------------------------------------------------
    def fit(self, X_ref: np.ndarray) -> "DensityDetector":
        """Store the normalised reference (n_ref, d) and its per-point kdist and LID."""
        ref = normalize(X_ref)
        # Reference stats come from each point's own k neighbours with the point itself removed
        # by index; unlike the published DAO code, no zero self-distance enters kdist_/lid_ and
        # the indices in I address `ref` directly (no shift from a removed self column).
        D, I = knn_search(ref, ref, self.k, exclude_self=True, backend=self.backend,
                          block_size=self.block_size)
        self.reference_ = ref
        self.neighbours_ = (D, I)
        self.kdist_, self.lid_ = neighbour_stats(D)
        self.n_features_in_ = ref.shape[1]
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "reference_"):
            raise ConfigError(f"{type(self).__name__} is not fitted; call fit(X_ref) first")

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """Scores (n_q,) float64 of queries X (n_q, d) against the fitted reference.

        Queries are not excluded from the reference: a query that is also a reference row
        finds itself at distance 0. Use :meth:`fit_score` to score a set against itself.
        Higher = more suspicious.
        """
        self._check_fitted()
        xq = normalize(X)
        if xq.shape[1] != self.n_features_in_:
            raise ConfigError(
                f"queries have {xq.shape[1]} dimensions but the detector was fitted on "
                f"{self.n_features_in_}; embed both with the same model"
            )
        D, I = knn_search(xq, self.reference_, self.k, backend=self.backend,
                          block_size=self.block_size)
        return self.score_from_neighbours(D, I, self.kdist_, self.lid_)

    decision_function = score_samples

    def fit_score(self, X: np.ndarray) -> np.ndarray:
        """Fit on X (n, d) and score every row against the others (self excluded).

        Returns:
            (n,) float64 scores, higher = more suspicious.
        """
        self.fit(X)
        D, I = self.neighbours_
        return self.score_from_neighbours(D, I, self.kdist_, self.lid_)


@DETECTORS.register("kdist")
class KDistance(DensityDetector):
    """Distance to the k-th nearest neighbour. Higher = more isolated = more suspicious."""

    @staticmethod
    def score_from_neighbours(D, I, kdist_ref, lid_ref):  # noqa: D102
        return kdistance(D)


@DETECTORS.register("lid")
class LID(DensityDetector):
    """Maximum-likelihood local intrinsic dimensionality. Higher = more suspicious."""

    @staticmethod
    def score_from_neighbours(D, I, kdist_ref, lid_ref):  # noqa: D102
        return lid_mle(D)


@DETECTORS.register("slof")
class SLOF(DensityDetector):
    """Simplified LOF: mean of kdist(q) / kdist(o) over neighbours o. Higher = more suspicious."""

    @staticmethod
    def score_from_neighbours(D, I, kdist_ref, lid_ref):  # noqa: D102
        return slof(D, I, kdist_ref)


@DETECTORS.register("dao")
class DAO(DensityDetector):
    """Dimensionality-aware outlierness: mean of (kdist(q)/kdist(o))**LID(o). Higher = more suspicious."""

    @staticmethod
    def score_from_neighbours(D, I, kdist_ref, lid_ref):  # noqa: D102
        return dao(D, I, kdist_ref, lid_ref)


# -- scoring a whole dataset at once -----------------------------------------------------

def batch_partition(n: int, batch_size: int, k: int, seed: int = 0) -> list[np.ndarray]:
    """Split rows 0..n-1 into random batches, as in the DAO paper's batched reference.

    A permutation seeded by ``seed`` is cut into consecutive batches of ``batch_size`` (the last
    one smaller); if the last batch would hold ``<= k`` rows it is merged into the previous one.
    Each batch's indices are returned sorted ascending.

    Returns:
        List of int64 index arrays that together partition ``range(n)``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= k:
        raise ConfigError(
            f"batch_size must be an integer larger than k={k} (each sample needs k neighbours "
            f"in its batch), got {batch_size!r}"
        )
    perm = np.random.default_rng(seed).permutation(n)
    batches = [perm[s:s + batch_size] for s in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) <= k:
        last = batches.pop()
        batches[-1] = np.concatenate([batches[-1], last])
    return [np.sort(b).astype(np.int64) for b in batches]


def self_knn(
    X: np.ndarray,
    k: int = 16,
    *,
    reference: str = "global",
    batch_size: int = 2048,
    seed: int = 0,
    backend: str = "blocked",
    block_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Self-excluded kNN of every row of X within its reference set.

    Args:
        X: (N, d) L2-normalised float32 embeddings.
        reference: ``"global"`` (all other rows) or ``"batch"`` (the other rows of the
            sample's random batch, see :func:`batch_partition`).

    Returns:
        ``(D, I)``: D (N, k) float32 ascending cosine distances, I (N, k) int64 GLOBAL row
        indices. In batch mode every neighbour of a row lies in that row's batch, so
        per-point statistics computed from these arrays are the per-batch ones.
    """
    if reference not in REFERENCE_MODES:
        raise ConfigError(
            f"unknown reference mode {reference!r}; choose one of: {', '.join(REFERENCE_MODES)}"
        )
    X = np.ascontiguousarray(X, dtype=np.float32)
    if reference == "global":
        return knn_search(X, X, k, exclude_self=True, backend=backend, block_size=block_size)
    n = X.shape[0]
    D = np.empty((n, k), dtype=np.float32)
    I = np.empty((n, k), dtype=np.int64)
    for idx in batch_partition(n, batch_size, k, seed):
        xb = np.ascontiguousarray(X[idx])
        Db, Ib = knn_search(xb, xb, k, exclude_self=True, backend=backend, block_size=block_size)
        D[idx] = Db
        I[idx] = idx[Ib]
    return D, I


def score_all(
    X: np.ndarray,
    detectors: Iterable[str] = ("kdist", "lid", "slof", "dao"),
    *,
    k: int = 16,
    reference: str = "global",
    batch_size: int = 2048,
    seed: int = 0,
    backend: str = "blocked",
    block_size: int = 4096,
) -> dict[str, np.ndarray]:
    """Score every row of X against its reference set with several detectors at once.

    The self-excluded kNN is computed once (per batch in ``"batch"`` mode) and every requested
    score is derived from it; ``"global"`` gives the same numbers as
    ``DETECTORS.get(name)(k=k).fit_score(X)``.

    Args:
        X: (N, d) embeddings (normalised here; NaN/inf or zero rows raise EmbeddingError).
        detectors: registered detector names.
        k: neighbours per sample.
        reference: ``"global"`` or ``"batch"``.
        batch_size: batch size of ``"batch"`` mode.
        seed: seed of the batch permutation.
        backend: kNN backend, ``"blocked"`` or ``"faiss"``.
        block_size: tile size of the blocked backend.

    Returns:
        ``{name: (N,) float64 scores}`` in the order requested; higher = more suspicious.
    """
    names = list(dict.fromkeys(detectors))
    if not names:
        raise ConfigError("no detectors requested; choose from: " + ", ".join(DETECTORS.names()))
    classes = {name: DETECTORS.get(name) for name in names}
    x = normalize(X)
    D, I = self_knn(x, k, reference=reference, batch_size=batch_size, seed=seed,
                    backend=backend, block_size=block_size)
    kdist_ref, lid_ref = neighbour_stats(D)
    return {name: cls.score_from_neighbours(D, I, kdist_ref, lid_ref) for name, cls in classes.items()}
