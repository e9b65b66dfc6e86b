"""The detector contract (PyOD / scikit-learn style), the kNN density base class, and what the
scoring engine hands a detector for one reference draw.

The contract of :class:`Detector`:

* the constructor only stores its keyword parameters (nothing is computed, nothing validated);
* ``fit(X_ref)`` learns from a reference set and sets attributes ending in ``_``;
* ``score_samples(X)`` scores new queries against the fitted reference (no self-exclusion);
* ``fit_score(X)`` fits on a set and scores it against itself (each sample's own row excluded);
* every score is a float64 array with "higher = more suspicious";
* ``get_params()`` / ``set_params(**params)`` read and change the constructor parameters; an
  unknown name is a :class:`~clipguard.errors.ConfigError` that lists the valid ones, and
  ``"<component>__<param>"`` reaches the parameters of a detector's components (``fused``);
* :func:`check_is_fitted` is the one fitted check.

Detectors that also use the captions take them as keyword arguments (``text=`` caption
embeddings, ``captions=`` strings) and say so in their ``requires`` class attribute; the one
detectors of a per-row record (:mod:`~clipguard.detect.detectors.records`) take its values the
same way: ``learning_speed`` takes ``dynamics=`` (one learning speed per sample), ``perturbation``
takes ``stability=`` (one noise stability per sample).

In a scan the engine (:func:`clipguard.detect.engine.score_embeddings`) does not call ``fit``: it
builds one neighbour graph per reference draw and calls each detector's hook
:meth:`Detector.score_draw` with the shared :class:`ScoreInputs`.
"""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Mapping

import numpy as np

from clipguard.detect.neighbours.base import knn_search
from clipguard.detect.neighbours.normalize import normalize
from clipguard.detect.neighbours.stats import neighbour_stats
from clipguard.detect.options import DEFAULT_BACKEND, DEFAULT_BLOCK_SIZE, DEFAULT_K
from clipguard.detect.reference.graph import NeighbourGraph
from clipguard.errors import ConfigError
from clipguard.utils.validate import check_known_keys

__all__ = ["Detector", "DensityDetector", "ScoreInputs", "check_is_fitted", "require_input"]


def require_input(value: Any, what: str, name: str) -> Any:
    """``value``, or a ConfigError saying that detector ``name`` needs ``what`` when it is None."""
    if value is None:
        raise ConfigError(f"{name} needs {what}; pass it as a keyword argument")
    return value


def check_is_fitted(detector: "Detector", attributes: str | Iterable[str] | None = None) -> None:
    """ConfigError unless ``detector`` is fitted.

    Args:
        detector: any detector.
        attributes: fitted attribute(s) that must exist; None = at least one attribute whose
            name ends in ``_`` (the scikit-learn convention).
    """
    names = [attributes] if isinstance(attributes, str) else list(attributes or ())
    if names:
        fitted = all(hasattr(detector, a) for a in names)
    else:
        fitted = any(a.endswith("_") and not a.startswith("_") for a in vars(detector))
    if not fitted:
        raise ConfigError(f"{type(detector).__name__} is not fitted; call {detector.fit_hint} first")


class Detector(ABC):
    """Base class of every registered detector.

    Class attributes:
        name: the registry name (set by ``DETECTORS.register``).
        requires: inputs the detector needs, from ``"image"`` (image embeddings), ``"text"``
            (caption embeddings, ``text_emb/``), ``"captions"`` (caption strings, the
            metadata column ``caption``) and the per-row records
            (:data:`~clipguard.detect.detectors.records.RECORD_KINDS`): ``"dynamics"`` (the
            learning speed of each sample, from a training-dynamics record) and ``"stability"``
            (its noise stability, from a perturbation-stability record); an entry ``"a|b"``
            needs either of them.
        uses_neighbours: whether :meth:`score_draw` reads the kNN graph.
        fit_hint: how to fit it, for the "not fitted" error.
        in_default_scan: whether a scan that names no detectors runs it (False: opt-in, run only
            when named, e.g. ``--detector spectral``).
        row_local: the score of a row depends only on that row's own inputs, its row of the
            neighbour graph and the statistics/inputs of its neighbours (kdist, LID, DAO, SLOF,
            clipscore, caption_disagreement), so a sharded scan computes it shard by shard
            (:mod:`clipguard.detect.sharded`); False for scores that need the whole set (robust z
            over all rows, rank fusion, caption groups, a fitted forest).
        reads_embeddings: :meth:`score_draw` reads the VALUES of ``inputs.image`` (not only its
            length); a sharded scan's reduce step loads the image embeddings only for such a
            detector.
    """

    name: ClassVar[str] = "base"
    requires: ClassVar[frozenset[str]] = frozenset({"image"})
    uses_neighbours: ClassVar[bool] = False
    fit_hint: ClassVar[str] = "fit(X_ref)"
    in_default_scan: ClassVar[bool] = True
    row_local: ClassVar[bool] = False
    reads_embeddings: ClassVar[bool] = True

    @classmethod
    def missing_inputs(cls, available: Iterable[str]) -> list[str]:
        """The entries of ``requires`` not satisfied by the ``available`` input names."""
        have = set(available)
        return sorted(r for r in cls.requires if not set(r.split("|")) & have)

    # -- parameters ------------------------------------------------------------------------------
    @classmethod
    def param_names(cls) -> tuple[str, ...]:
        """The constructor's keyword parameters, in declaration order."""
        params = inspect.signature(cls.__init__).parameters.values()
        return tuple(p.name for p in params if p.name != "self"
                     and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """``{name: value}`` of the constructor parameters (``deep`` adds the components' ones as
        ``"<component>__<param>"`` where a detector has components)."""
        return {p: getattr(self, p) for p in self.param_names()}

    def set_params(self, **params: Any) -> "Detector":
        """Set constructor parameters; ``"<component>__<param>"`` sets a component's parameter.

        Returns:
            self.

        Raises:
            ConfigError: an unknown parameter (the message lists the valid ones), or a
                ``"__"`` name on a detector without components.
        """
        plain = {k: v for k, v in params.items() if "__" not in k}
        check_known_keys(f"parameter of detector {self.name!r}", plain, self.param_names())
        for key, value in params.items():
            if key in plain:
                setattr(self, key, value)
            else:
                component, _, sub = key.partition("__")
                self._set_component_param(component, sub, value)
        return self

    def _set_component_param(self, component: str, param: str, value: Any) -> None:
        key = f"{component}__{param}"
        raise ConfigError(f"detector {self.name!r} has no components, so {key!r} is not a parameter; "
                          f"valid: {', '.join(sorted(self.param_names())) or '(none)'}")

    # -- the estimator API -------------------------------------------------------------------------
    @abstractmethod
    def fit(self, X: Any, *, text: Any = None, captions: Any = None) -> "Detector":
        """Learn from the reference set (X: (n_ref, d) image embeddings); returns self."""

    @abstractmethod
    def score_samples(self, X: Any, *, text: Any = None, captions: Any = None) -> np.ndarray:
        """(n_q,) float64 scores of new queries against the fitted reference; higher = more suspicious."""

    @abstractmethod
    def fit_score(self, X: Any, *, text: Any = None, captions: Any = None) -> np.ndarray:
        """Fit on the set and score it against itself (self excluded): (n,) float64."""

    def _normalized_queries(self, X: Any, fitted: str) -> np.ndarray:
        """Queries X (n_q, d) L2-normalised, after the fitted check (attribute ``fitted``) and a check
        that d is the dimension the detector was fitted on (``n_features_in_``)."""
        check_is_fitted(self, fitted)
        xq = normalize(X)
        if xq.shape[1] != self.n_features_in_:
            raise ConfigError(
                f"queries have {xq.shape[1]} dimensions but the detector was fitted on "
                f"{self.n_features_in_}; embed both with the same model"
            )
        return xq

    # -- the engine hook ----------------------------------------------------------------------------
    def score_draw(self, inputs: "ScoreInputs") -> np.ndarray:
        """Engine hook: (N,) float64 scores of every sample of the scanned set for one reference
        draw, from the shared :class:`ScoreInputs` (embeddings + the neighbour graph of the
        chosen reference mode). Higher = more suspicious."""
        raise NotImplementedError(f"detector {self.name!r} cannot run in a scan: it has no score_draw")

    def component_names(self, available: set[str]) -> list[str]:
        """The detectors whose scores :meth:`score_draw` combines on data with the ``available``
        inputs (``fused``'s components); ``[]`` for a detector that scores on its own."""
        return []

    def params_for_component(self, name: str) -> dict[str, Any]:
        """The constructor parameters this detector gives its component ``name`` (``{}``)."""
        return {}

    def reference_free(self, inputs: "ScoreInputs") -> bool:
        """True when :meth:`score_draw` does not depend on the reference draw, so
        ``"multi_reference"`` computes it once instead of once per draw."""
        return False

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.endswith("_"))
        return f"{type(self).__name__}({params})"


@dataclass
class ScoreInputs:
    """Everything a detector may read to score a whole set (one reference draw).

    Attributes:
        image: (N, d) L2-normalised float32 image embeddings.
        graph: the :class:`~clipguard.detect.reference.graph.NeighbourGraph` of this draw.
        k: neighbours per sample.
        text: (N, d_t) L2-normalised float32 caption embeddings, or None.
        captions: (N,) normalised caption keys
            (:func:`~clipguard.detect.detectors.caption_dup.caption_keys`), or None.
        seed: seed for randomised detectors.
        make: ``make(name, params) -> Detector``: builds a detector that is not among
            ``detectors`` (a component of ``fused``) with the scan's options and ``params``.
        detectors: the scan's own detectors, by name (reused when a component is one of them).
        cache: scores already computed on these inputs (fused reuses its components' scores).
        records: the per-row records by input name (``"dynamics"``, ``"stability"``: a key of
            :data:`~clipguard.detect.detectors.records.RECORD_KINDS`) -> (N,) float64 values joined
            by id (:func:`~clipguard.detect.detectors.records.join_record`), NaN where a sample
            has no record. ``"dynamics"``: the learning speed (:func:`~clipguard.train.learning_speed`,
            in (0, 1], higher = fitted earlier); ``"stability"``: the noise stability (cosine).
    """

    image: np.ndarray
    graph: NeighbourGraph
    k: int
    text: np.ndarray | None = None
    captions: np.ndarray | None = None
    seed: int = 0
    make: Callable[[str, Mapping[str, Any]], Detector] | None = None
    detectors: dict[str, Detector] = field(default_factory=dict)
    cache: dict[str, np.ndarray] = field(default_factory=dict)
    records: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def dynamics(self) -> np.ndarray | None:
        """(N,) learning speeds: ``records["dynamics"]``, or None without a training-dynamics record."""
        return self.records.get("dynamics")

    @property
    def available(self) -> set[str]:
        """Input names present: ``"image"`` and maybe ``"text"``, ``"captions"`` and the names of
        the ``records`` (``"dynamics"``, ``"stability"``)."""
        out = {"image"}
        if self.text is not None:
            out.add("text")
        if self.captions is not None:
            out.add("captions")
        out.update(name for name, v in self.records.items() if v is not None)
        return out

    def score(self, name: str, params: Mapping[str, Any] | None = None) -> np.ndarray:
        """(N,) float64 scores of detector ``name`` on these inputs, computed once and cached.

        ``params`` (constructor parameters, e.g. a component's parameters given to ``fused``)
        build a detector of their own; without them the scan's detector ``name`` is reused.
        """
        key = f"{name} {sorted(params.items())!r}" if params else name
        if key not in self.cache:
            det = None if params else self.detectors.get(name)
            if det is None:
                if self.make is None:
                    raise ConfigError(f"detector {name!r} is not part of this scan")
                det = self.make(name, dict(params or {}))
            self.cache[key] = np.asarray(det.score_draw(self), dtype=np.float64)
        return self.cache[key]


class DensityDetector(Detector):
    """Base class (the kNN mixin): a kNN density score of queries relative to a reference set.

    Subclasses give only their formula, :meth:`score_from_neighbours`; fitting, querying and
    the engine hook are shared.

    Args:
        k: number of nearest neighbours (default 16).
        backend: kNN backend, ``"blocked"`` or ``"faiss"``.
        block_size: tile size of the blocked kNN backend.

    Fitted attributes:
        reference_: (n_ref, d) float32 L2-normalised reference.
        neighbours_: ``(D, I)`` self-excluded kNN of the reference, each (n_ref, k).
        kdist_: (n_ref,) float64 k-distance of every reference point.
        lid_: (n_ref,) float64 LID of every reference point.
        n_features_in_: embedding dimension.
    """

    uses_neighbours = True
    row_local = True
    reads_embeddings = False

    def __init__(self, *, k: int = DEFAULT_K, backend: str = DEFAULT_BACKEND,
                 block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        self.k = k
        self.backend = backend
        self.block_size = block_size

    @staticmethod
    def score_from_neighbours(
        D: np.ndarray, I: np.ndarray, kdist_ref: np.ndarray, lid_ref: np.ndarray
    ) -> np.ndarray:
        """(n_q,) float64 scores from query kNN ``D``/``I`` (n_q, k) and reference stats."""
        raise NotImplementedError

    def score_draw(self, inputs: ScoreInputs) -> np.ndarray:  # noqa: D102
        g = inputs.graph
        return self.score_from_neighbours(g.D, g.I, g.kdist, g.lid)

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

    def _query_knn(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xq = self._normalized_queries(X, "reference_")
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

    def fit_score(self, X: np.ndarray, *, text: Any = None, captions: Any = None) -> np.ndarray:
        """Fit on X (n, d) and score every row against the others (self excluded).

        Returns:
            (n,) float64 scores, higher = more suspicious.
        """
        self.fit(X)
        D, I = self.neighbours_
        return self.score_from_neighbours(D, I, self.kdist_, self.lid_)
