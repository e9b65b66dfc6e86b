"""The detector base classes, the density detectors (k-distance, LID, SLOF, DAO), the registry,
and the all-in-one scorer :func:`score_all`.

Detectors follow the PyOD / scikit-learn convention: the constructor only stores parameters,
``fit(X_ref)`` sets attributes ending in ``_``, ``score_samples(X)`` scores new queries against
the fitted reference, and ``fit_score(X)`` scores a set against itself (self excluded).
All scores are float64 with "higher = more suspicious". Detectors that also use the captions
take them as keyword arguments (``text=`` caption embeddings, ``captions=`` strings) and say
so in their ``requires`` class attribute.

Registered detectors: ``kdist``, ``lid``, ``slof``, ``dao``, ``density_anomaly`` (here), ``iforest``
(:mod:`~clipguard.detect.iforest`), ``clipscore``, ``caption_dup``, ``caption_disagreement``
(:mod:`~clipguard.detect.pair`) and ``fused`` (:mod:`~clipguard.detect.fused`).

Example::

    det = DETECTORS.get("dao")(k=16)
    scores = det.fit_score(embeddings)          # (N,)
    scores = score_all(embeddings, reference="batch", batch_size=2048)   # {name: (N,)}
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from clipguard.detect.density import dao, kdistance, lid_mle, neighbour_stats, slof
from clipguard.detect.knn import knn_search, knn_self_groups, normalize
from clipguard.detect.reference import REFERENCE_MODES, batch_partition
from clipguard.errors import ConfigError
from clipguard.registry import Registry

if TYPE_CHECKING:
    from clipguard.detect.scoring import ScoreInputs

__all__ = ["DETECTORS", "REFERENCE_MODES", "Detector", "DensityDetector", "KDistance", "LID",
           "SLOF", "DAO", "DensityAnomaly", "batch_partition", "self_knn", "score_all"]

DETECTORS: Registry[type["Detector"]] = Registry("detector")


class Detector:
    """Base class of every registered detector.

    Class attributes:
        name: the registry name (set by ``DETECTORS.register``).
        requires: inputs the detector needs, from ``"image"`` (image embeddings), ``"text"``
            (caption embeddings, ``text_emb/``) and ``"captions"`` (caption strings, the
            metadata column ``caption``); an entry ``"a|b"`` needs either of them.
        uses_neighbours: whether :meth:`score_inputs` reads the kNN graph.
    """

    name: str = "base"
    requires: frozenset[str] = frozenset({"image"})
    uses_neighbours: bool = False

    @classmethod
    def missing_inputs(cls, available: Iterable[str]) -> list[str]:
        """The entries of ``requires`` not satisfied by the ``available`` input names."""
        have = set(available)
        return sorted(r for r in cls.requires if not set(r.split("|")) & have)

    def score_inputs(self, inputs: "ScoreInputs") -> np.ndarray:
        """(N,) float64 scores of every sample of a whole set, from the shared
        :class:`~clipguard.detect.scoring.ScoreInputs` (embeddings + neighbour graph of the
        chosen reference mode). Used by :func:`score_all` and the scan."""
        raise NotImplementedError

    def reference_free(self, inputs: "ScoreInputs") -> bool:
        """True when :meth:`score_inputs` does not depend on the reference draw, so
        ``"multi_reference"`` computes it once instead of once per draw."""
        return False

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.endswith("_"))
        return f"{type(self).__name__}({params})"


class DensityDetector(Detector):
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

    uses_neighbours = True

    def __init__(self, *, k: int = 16, backend: str = "blocked", block_size: int = 2048) -> None:
        self.k = k
        self.backend = backend
        self.block_size = block_size

    # -- the score, from neighbour arrays -------------------------------------------------
    @staticmethod
    def score_from_neighbours(
        D: np.ndarray, I: np.ndarray, kdist_ref: np.ndarray, lid_ref: np.ndarray
    ) -> np.ndarray:
        """(n_q,) float64 scores from query kNN ``D``/``I`` (n_q, k) and reference stats."""
        raise NotImplementedError

    def score_inputs(self, inputs: "ScoreInputs") -> np.ndarray:  # noqa: D102
        g = inputs.graph
        return self.score_from_neighbours(g.D, g.I, g.kdist, g.lid)

    # -- estimator API ------------------------------------------------------------------
    def fit(self, X_ref: np.ndarray, *, text: Any = None, captions: Any = None) -> "DensityDetector":
        """Store the normalised reference (n_ref, d) and its per-point kdist and LID.

        ``text`` and ``captions`` are accepted for a uniform API and ignored.
        """
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

    def _query_knn(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._check_fitted()
        xq = normalize(X)
        if xq.shape[1] != self.n_features_in_:
            raise ConfigError(
                f"queries have {xq.shape[1]} dimensions but the detector was fitted on "
                f"{self.n_features_in_}; embed both with the same model"
            )
        return knn_search(xq, self.reference_, self.k, backend=self.backend,
                          block_size=self.block_size)

    def score_samples(self, X: np.ndarray, *, text: Any = None, captions: Any = None) -> np.ndarray:
        """Scores (n_q,) float64 of queries X (n_q, d) against the fitted reference.

        Queries are not excluded from the reference: a query that is also a reference row
        finds itself at distance 0. Use :meth:`fit_score` to score a set against itself.
        Higher = more suspicious.
        """
        D, I = self._query_knn(X)
        return self.score_from_neighbours(D, I, self.kdist_, self.lid_)

    decision_function = score_samples

    def fit_score(self, X: np.ndarray, *, text: Any = None, captions: Any = None) -> np.ndarray:
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


@DETECTORS.register("density_anomaly")
class DensityAnomaly(DensityDetector):
    """Two-sided k-distance anomaly: |robust z of ln kdist| against the reference's kdists. Higher = more suspicious.

    ``|ln kdist(q) - median_o ln kdist(o)| / (1.4826 * MAD_o ln kdist(o))`` over the reference
    points o (k-distances clamped to ``>= EPS``; MAD 0 -> standard deviation, 0 -> scale 1).
    Flags samples that are unusually SPARSE (the DAO paper's poison at low rates) and samples
    that are unusually DENSE: at high poison rates the triggered images collapse into a cluster
    that is tighter than any clean region, and every one-sided density score ranks them last.
    """

    @staticmethod
    def score_from_neighbours(D, I, kdist_ref, lid_ref):  # noqa: D102
        from clipguard.detect.density import EPS

        ref = np.asarray(kdist_ref, dtype=np.float64)
        ref = np.log(np.maximum(ref[~np.isnan(ref)], EPS))
        med = float(np.median(ref)) if ref.size else 0.0
        scale = 1.4826 * float(np.median(np.abs(ref - med))) if ref.size else 0.0
        if not scale > 0:
            scale = float(np.std(ref)) if ref.size else 0.0
        if not scale > 0:
            scale = 1.0
        return np.abs(np.log(np.maximum(kdistance(D), EPS)) - med) / scale


# -- scoring a whole dataset at once -----------------------------------------------------

def self_knn(
    X: np.ndarray,
    k: int = 16,
    *,
    reference: str = "global",
    batch_size: int = 2048,
    seed: int = 0,
    backend: str = "blocked",
    block_size: int = 2048,
) -> tuple[np.ndarray, np.ndarray]:
    """Self-excluded kNN of every row of X within its reference set.

    Args:
        X: (N, d) L2-normalised float32 embeddings.
        reference: ``"global"`` (all other rows) or ``"batch"`` (the other rows of the
            sample's random batch, see :func:`batch_partition`; searched by
            :func:`~clipguard.detect.knn.knn_self_groups`, ``backend`` is not used).

    Returns:
        ``(D, I)``: D (N, k) float32 ascending cosine distances, I (N, k) int64 GLOBAL row
        indices. In batch mode every neighbour of a row lies in that row's batch, so
        per-point statistics computed from these arrays are the per-batch ones.
    """
    if reference not in ("global", "batch"):
        raise ConfigError(
            f"self_knn supports the reference modes 'global' and 'batch', got {reference!r}; "
            "use score_all for the other modes"
        )
    X = np.ascontiguousarray(X, dtype=np.float32)
    if reference == "global":
        return knn_search(X, X, k, exclude_self=True, backend=backend, block_size=block_size)
    return knn_self_groups(X, batch_partition(X.shape[0], batch_size, k, seed), k)


def score_all(
    X: np.ndarray,
    detectors: Iterable[str] = ("kdist", "lid", "slof", "dao"),
    *,
    k: int = 16,
    reference: str = "global",
    batch_size: int = 2048,
    seed: int = 0,
    backend: str = "blocked",
    block_size: int = 2048,
    text: np.ndarray | None = None,
    captions: Any = None,
    **options: Any,
) -> dict[str, np.ndarray]:
    """Score every row of X against its reference set with several detectors at once.

    The self-excluded kNN is computed once per reference draw and every requested score is
    derived from it; ``"global"`` gives the same numbers as
    ``DETECTORS.get(name)(k=k).fit_score(X)``. A thin wrapper of
    :func:`clipguard.detect.scoring.score_embeddings` (which also returns what was done).

    Args:
        X: (N, d) image embeddings (normalised here; NaN/inf or zero rows raise EmbeddingError).
        detectors: registered detector names.
        k: neighbours per sample.
        reference: a mode of :mod:`clipguard.detect.reference` (``"global"``, ``"batch"``,
            ``"reference"``, ``"multi_reference"``, ``"auto"``).
        batch_size: batch size of ``"batch"`` mode.
        seed: seed of the batch permutation / random references / IVF / Isolation Forest.
        backend: kNN backend of ``"global"`` mode, ``"blocked"`` or ``"faiss"``.
        block_size: tile size of the blocked backend.
        text: (N, d_t) caption embeddings, for the detectors that need them.
        captions: (N,) caption strings, for ``caption_dup``.
        **options: ``reference_size``, ``n_references``, ``index``, ``nlist``, ``nprobe``,
            ``n_recall``, ``detector_params`` of ``score_embeddings``.

    Returns:
        ``{name: (N,) float64 scores}`` in the order requested; higher = more suspicious.
    """
    from clipguard.detect.scoring import score_embeddings

    scores, _ = score_embeddings(X, detectors, k=k, reference=reference, batch_size=batch_size,
                                 seed=seed, backend=backend, block_size=block_size, text=text,
                                 captions=captions, **options)
    return scores
