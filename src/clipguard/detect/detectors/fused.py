"""``fused``: one score combining image density with the pair and text signals.

Components: the image-density detectors ``image`` (default ``dao`` and ``density_anomaly``:
DAO catches poison that is sparse, as at low rates; the two-sided k-distance anomaly also
catches a poisoned cluster that is abnormally DENSE, as at high rates) plus every signal of
``signals`` (default ``clipscore``, ``caption_dup``, ``caption_disagreement``) whose inputs the
data has -- with image embeddings only, ``fused`` combines the image detectors alone.

Two-sided components (``two_sided``, default ``("caption_disagreement",)``)
    A component whose direction depends on the poisoning regime enters the fusion folded to
    ``|robust z of ln max(s, EPS)|`` within the scored set (:func:`fold_two_sided`), the same
    form as ``density_anomaly`` gives the k-distance. ``caption_disagreement`` needs this:
    at a LOW poison rate a poisoned image sits among clean images of its true class, so its
    target caption disagrees with theirs (high score); at a HIGH rate with templated target
    captions (BadNets poison captioned "a photo of a star.") the triggered images form their
    own dense cluster, each one's image-neighbours are other poisoned samples with the same
    few captions, and the disagreement is near 0 -- far BELOW any clean sample's, whose
    neighbours carry varied captions. The one-sided score then ranks the poison last
    (AUROC 0.000 on the 5% BadNets demo) and its mean rank dragged ``fused`` down (0.948
    with the auto reference there); folded, it is suspicious in both tails (AUROC 1.000
    there) and ``fused`` rose to 0.9995 (global reference: 0.812 -> 0.996). The log puts the near-zero tail on the same footing as the high tail:
    the disagreement is a non-negative, ratio-like quantity whose informative low values
    differ by orders of magnitude (0.002 for the poison vs a clean median of 0.24). No
    labels are used: the centre and scale are the median and MAD of the scored set, so the
    fold assumes the poison is a minority (< 50%) of that set. A standalone
    ``caption_disagreement`` keeps its one-sided definition.

Combination (``method``):

``"fisher"`` (default)
    Fisher's combination of empirical p-values: ``-mean(ln p)`` with ``p = (n - r + 1) / n``
    for a sample of ascending average rank r. Scale-free (a heavy-tailed score such as DAO,
    which reaches 1e300, cannot drown the others), and one component at the very top of its
    ranking counts more than several moderately high ones: an OR rather than an AND of the
    evidence. That is what poison at an unknown rate needs, because which signal flags it
    changes with the rate and the attack (DAO for sparse SIG/Blended poison at 0.1 %, the
    folded caption disagreement for a BadNets cluster at 1 %, image density at 5-10 %). On the
    rate sweep (``benchmarks/results/rate_sweep.md``, 15 cells with a learned backdoor, global
    reference) it had min AUROC 0.971 and mean 0.989 against 0.917 and 0.975 for ``"rank"``,
    for 0.9915-0.9971 instead of 0.9956-0.9988 at 5-10 % (BadNets, Blended, SIG); with the
    backdoor not learned (0.1 %, ASR < 0.8) ``"rank"`` did better (0.89-0.97 vs 0.84-0.93).
``"rank"``
    Mean of the components' percentile ranks within the scored set (average rank of ties
    divided by n, in (0, 1]): each component counts equally (an AND of the evidence; the
    default before 2026-11-22).
``"zsum"``
    Mean of robust z-scores ``(s - median) / (1.4826 * MAD)`` (MAD 0 -> standard deviation,
    0 -> the component is dropped as constant). Lets one component with a strong, isolated
    signal dominate; sensitive to heavy tails.
``"folded"`` (opt-in, issue 9: a fusion that an inverted component cannot drag down)
    The rule: every component is made two-sided, then Fisher's combination with equal
    weights. A one-sided component enters as ``|robust_z(s)|`` (distance from its median in
    robust standard deviations, both tails "high"); the components that are already two-sided
    enter unchanged (``density_anomaly``, a folded k-distance by definition, and those of
    ``two_sided``, folded by :func:`fold_two_sided` as for ``"fisher"``). No ground truth and
    no orientation is estimated: an INVERTED component (poison in its low tail, e.g.
    ``caption_dup`` when every clean caption is a template) then points at the poison like an
    informative one, at the price of also flagging the clean samples of the tail its design
    calls suspicious. Evidence (``benchmarks/results/fusion_robustness.md``), AUROC worst /
    mean: on synthetic score columns (4 rates x 3 seeds x with/without an inverted and a
    noise component, Gaussian and log-normal) 0.833 / 0.933 against Fisher's 0.730 / 0.887
    (gap to the informative input: worst -0.129, mean -0.031; Fisher -0.232 / -0.078); on the
    embedding sets of ``benchmarks/concept_signals.py`` it LOSES to Fisher (0.384 / 0.535
    against 0.381 / 0.601), and on the 5 % BadNets demo it gives 0.990 against 0.992. Rules
    that estimate an orientation and a weight per component from the scores (the tail whose
    robust-z mass is in excess, after a quartile-symmetrising power transform; agreement of
    normal scores with the leave-one-out consensus; max of oriented ranks) were measured too
    and rejected for their worst case: on real detector scores the natural skew (DAO's heavy
    upper tail) and the correlation of the kNN signals on CLEAN data outweigh the poison's
    excess, and a wrong flip cost up to 0.97 AUROC on the columns and 0.56 on the concept
    sets. ``info_`` records the per-component orientation (``"two-sided"``) and weight.

``"consensus"`` (opt-in, issue 9: agreement between signals)
    ``"folded"`` with unequal weights: ``w_j = max(0, rho_j)``, normalised, where ``rho_j`` is the
    Spearman correlation of component j's ``-ln p`` with the mean ``-ln p`` of the other
    components (:func:`consensus_weights`; equal weights when there are two components, since
    each has the same rho with the other, or when no rho is positive). A pure-noise component
    agrees with nothing and drops out (weight 0.000 on the synthetic columns at every rate);
    ``info_`` and ``run.json`` record the weights. Evidence: on the synthetic columns worst /
    mean 0.833 / 0.935 (Fisher 0.730 / 0.887); on the evaluation panel
    (``benchmarks/results/panel_cpu.md``, 17 learned cells, reference auto) worst / mean 0.168 /
    0.722 against Fisher's 0.152 / 0.699: better in every shapes cell (AUPRC 0.64 vs 0.40 on
    average) and in the long-tailed rare-target BadCLIP cells (0.361 / 0.541 vs 0.152 / 0.200),
    worse by 0.009-0.045 on the frequent target at 0.5-1 % and where every signal is at or
    below chance (rare target at 5 %: 0.17-0.38 vs 0.30-0.47) -- it amplifies whatever the
    components agree on, also when they agree that the poison is *typical*. On the 5 % BadNets
    demo 0.976 vs 0.992: the correlation is taken over all samples, so two caption signals that
    agree on the clean bulk (clipscore, caption_dup) outweigh a perfect but bulk-uncorrelated
    one (caption_disagreement, weight 0.10).

Why ``"fisher"`` stays the default (issue 9)
    The rule, fixed when only the panel's first 5 % cells were in: the default is the combination with the best
    worst-case AUROC over the panel's learned cells, ties within 0.01 broken by the mean, and
    it must not lose more than 0.01 on the demo. With captions, ``"consensus"`` has the best worst
    case (0.168 against Fisher's 0.152 and ``"folded"``'s 0.162) but loses 0.016 on the demo, so
    Fisher stays. Image-only, ``"folded"`` / ``"consensus"`` (equal with two components) reach
    0.208 against Fisher's 0.183: the rule would switch there, but every worst case is below 0.25
    -- worse than random -- and a second default per input kind was not worth a difference
    between failures. No rule measured keeps the default within 0.03 of its best part in every
    cell (``benchmarks/results/panel_notes.md`` lists the rules tried and what each cost). None can: on
    the poisoned model's embeddings the best single signal of each cell in EITHER orientation, picked with
    the labels, reaches only 0.695 at worst (``benchmarks/results/fusion_min_p.md``), so no label-free
    choice, weighting or orientation of these signals reaches the issue's 0.95.

Components are built with the scan's options and their own parameters: ``detector_params`` of
the scan for that detector, then those given to ``fused`` as ``"<component>__<param>"``
(``Fused(component_params={"caption_dup": {"threshold": 0.95}})``, or
``set_params(caption_dup__threshold=0.95)``).

Ranks and z-scores are taken within the set being scored (the whole dataset in a scan; the
query set in ``score_samples``). Higher = more suspicious.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from clipguard.detect.detectors.base import Detector, ScoreInputs, check_is_fitted
from clipguard.detect.detectors.registry import DETECTORS, make_detector
from clipguard.detect.neighbours.stats import EPS, robust_z
from clipguard.detect.options import DEFAULT_BACKEND, DEFAULT_BLOCK_SIZE, DEFAULT_K, DEFAULT_SEED
from clipguard.errors import ConfigError
from clipguard.utils.validate import check_choice

__all__ = ["Fused", "FUSE_METHODS", "FUSION_RULES", "combine", "consensus_weights", "fuse_components", "fuse_scores",
           "fold_two_sided", "percentile_rank", "robust_z", "upper_tail_log_p"]

FUSE_METHODS = ("rank", "fisher", "zsum", "folded", "consensus")
FUSION_RULES = {
    "fisher": "Fisher: mean -ln p of the rank p-values, components one-sided (caption_disagreement folded)",
    "rank": "mean percentile rank of the components",
    "zsum": "mean robust z-score of the components",
    "folded": "every component two-sided (|robust z|, or already two-sided), equal-weight Fisher",
    "consensus": ("every component two-sided, Fisher weighted by w_j = max(0, Spearman of its -ln p with the "
                  "mean -ln p of the others), normalised"),
}
"""The rule of each ``method``, in words (recorded in ``run.json``, ``detector_info.fused.rule``)."""
DEFAULT_IMAGE = ("dao", "density_anomaly")
DEFAULT_SIGNALS = ("clipscore", "caption_dup", "caption_disagreement")
DEFAULT_TWO_SIDED = ("caption_disagreement",)
ALREADY_TWO_SIDED = ("density_anomaly",)
"""Components whose score is two-sided by definition: ``"folded"`` does not fold them again."""


def percentile_rank(scores: np.ndarray) -> np.ndarray:
    """(n,) float64 ranks in (0, 1]: average rank of ties / n, ascending; NaN ranked lowest."""
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64)
    s = np.where(np.isnan(s), -np.inf, s)
    return rankdata(s, method="average") / max(len(s), 1)


def upper_tail_log_p(scores: np.ndarray) -> np.ndarray:
    """``-ln p`` with the empirical upper-tail p-value ``p = (n - r + 1) / n`` of each score
    (r = ascending average rank; NaN ranked lowest): 0 for the lowest score, ``ln n`` for the
    highest."""
    s = np.asarray(scores, dtype=np.float64)
    n = len(s)
    r = percentile_rank(s) * n
    return -np.log((n - r + 1) / n)


def fold_two_sided(scores: np.ndarray) -> np.ndarray:
    """``|robust_z(ln max(s, EPS))|``: distance of each (non-negative) score from the typical
    one, in robust standard deviations of its log; both tails become "high" (module
    docstring). NaN stays NaN (ranked lowest by :func:`percentile_rank`)."""
    s = np.asarray(scores, dtype=np.float64)
    out = np.full(s.shape, np.nan)
    ok = ~np.isnan(s)
    out[ok] = np.abs(robust_z(np.log(np.maximum(s[ok], EPS))))
    return out


def _fold_robust(scores: np.ndarray) -> np.ndarray:
    """``|robust_z(s)|``; NaN stays NaN (ranked lowest)."""
    s = np.asarray(scores, dtype=np.float64)
    out = np.full(s.shape, np.nan)
    ok = ~np.isnan(s)
    out[ok] = np.abs(robust_z(s[ok]))
    return out


def consensus_weights(log_p: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Weights of the ``"consensus"`` combination: ``w_j = max(0, rho_j)`` normalised to sum 1,
    with ``rho_j`` the Spearman correlation of component j's (n,) ``-ln p`` with the mean ``-ln p``
    of the OTHER components (equal weights with one component, or when every ``rho_j <= 0``)."""
    names = list(log_p)
    if len(names) == 1:
        return {names[0]: 1.0}
    ranks = np.column_stack([percentile_rank(log_p[n]) for n in names])
    total = np.column_stack([log_p[n] for n in names]).sum(axis=1)
    rho = []
    for j, name in enumerate(names):
        others = percentile_rank((total - log_p[name]) / (len(names) - 1))
        with np.errstate(divide="ignore", invalid="ignore"):  # a constant column: rho undefined -> 0
            c = np.corrcoef(ranks[:, j], others)[0, 1]
        rho.append(max(0.0, float(c)) if np.isfinite(c) else 0.0)
    w = np.asarray(rho)
    w = w / w.sum() if w.sum() > 0 else np.full(len(names), 1.0 / len(names))
    return dict(zip(names, w.tolist()))


def combine(components: Mapping[str, np.ndarray], method: str = "fisher",
            two_sided: Iterable[str] = ()) -> tuple[np.ndarray, dict[str, float]]:
    """:func:`fuse_scores` and the weight each component got: ``(fused (n,), {name: weight})``."""
    check_choice("fuse method", method, FUSE_METHODS)
    if not components:
        raise ConfigError("fuse_scores needs at least one component score")
    if method in ("folded", "consensus"):
        keep = set(two_sided)
        components = {name: s if name in keep else _fold_robust(s) for name, s in components.items()}
    f = {"rank": percentile_rank, "zsum": robust_z}.get(method, upper_tail_log_p)
    parts = {name: f(s) for name, s in components.items()}
    if method != "consensus":  # equal weights: the plain mean (bit-identical to the scores before weights)
        return np.mean(list(parts.values()), axis=0), {name: 1.0 / len(parts) for name in parts}
    weights = consensus_weights(parts)
    return np.sum([weights[name] * v for name, v in parts.items()], axis=0), weights


def fuse_scores(components: Mapping[str, np.ndarray], method: str = "fisher",
                two_sided: Iterable[str] = ()) -> np.ndarray:
    """Combine several (n,) scores (higher = more suspicious) into one (n,) float64 score.

    Args:
        components: ``{name: (n,) scores}``, at least one.
        method: ``"fisher"`` (mean ``-ln`` empirical p-value), ``"rank"`` (mean percentile
            rank), ``"zsum"`` (mean robust z-score), ``"folded"`` (``"fisher"`` of
            ``|robust_z(s)|`` of every component not named in ``two_sided``) or ``"consensus"``
            (``"folded"`` with the weights of :func:`consensus_weights` instead of equal ones).
        two_sided: components that are already two-sided (used by ``"folded"`` and ``"consensus"``).
    """
    return combine(components, method, two_sided)[0]


def _fold_and_combine(parts: Mapping[str, np.ndarray], method: str,
                      two_sided: Iterable[str]) -> tuple[np.ndarray, dict[str, float]]:
    """The components named in ``two_sided`` folded by :func:`fold_two_sided`, then :func:`combine`."""
    folded = [name for name in parts if name in set(two_sided)]
    return combine({name: fold_two_sided(s) if name in folded else np.asarray(s, dtype=np.float64)
                    for name, s in parts.items()}, method, two_sided=(*folded, *ALREADY_TWO_SIDED))


def fuse_components(parts: Mapping[str, np.ndarray], method: str = "fisher",
                    two_sided: Iterable[str] = DEFAULT_TWO_SIDED) -> np.ndarray:
    """(n,) what ``fused`` computes from its components' (n,) scores ``parts``: the components named
    in ``two_sided`` folded by :func:`fold_two_sided`, then :func:`fuse_scores` with ``method``.
    Lets a benchmark evaluate a combination on stored component scores."""
    return _fold_and_combine(parts, method, two_sided)[0]


@DETECTORS.register("fused")
class Fused(Detector):
    """Image density fused with the pair/text signals the data has (Fisher's combination of rank p-values; caption_disagreement two-sided). Higher = more suspicious.

    Args:
        image: the image-density component(s): registered kNN detector name(s), default
            ``("dao", "density_anomaly")``.
        signals: pair/text components used when their inputs are available.
        method: ``"fisher"`` (default), ``"rank"``, ``"zsum"``, ``"folded"`` (every
            component two-sided) or ``"consensus"`` (two-sided, weighted by agreement with
            the other components); module docstring.
        two_sided: components folded by :func:`fold_two_sided` before combining (default
            ``("caption_disagreement",)``, whose direction flips with the poison rate; see
            the module docstring). ``()`` fuses every component one-sided.
        component_params: ``{component: {param: value}}``, constructor parameters of the
            components (also set as ``set_params(<component>__<param>=value)``).
        k, backend, block_size, seed: passed to the components.

    Fitted attributes:
        components_: names of the components used.
        two_sided_: the components of ``components_`` that were folded.
        detectors_: the fitted component detectors.
        weights_: ``{component: weight}`` of the last combination (equal but for
            ``"consensus"``).
    """

    uses_neighbours = True
    reads_embeddings = False  # reads its components' scores only

    def __init__(self, *, image: str | Iterable[str] = DEFAULT_IMAGE,
                 signals: Iterable[str] = DEFAULT_SIGNALS,
                 method: str = "fisher", two_sided: Iterable[str] = DEFAULT_TWO_SIDED,
                 component_params: Mapping[str, Mapping[str, Any]] | None = None,
                 k: int = DEFAULT_K, backend: str = DEFAULT_BACKEND,
                 block_size: int = DEFAULT_BLOCK_SIZE, seed: int = DEFAULT_SEED) -> None:
        self.image = image
        self.signals = signals
        self.two_sided = two_sided
        self.method = method
        self.component_params = component_params
        self.k = k
        self.backend = backend
        self.block_size = block_size
        self.seed = seed

    # -- parameters of the components ---------------------------------------------------------------
    def _params_of(self, name: str) -> dict[str, Any]:
        return dict((self.component_params or {}).get(name, {}))

    def _set_component_param(self, component: str, param: str, value: Any) -> None:
        if component == "fused":
            raise ConfigError("fused cannot contain itself; fused__... is not a parameter of fused")
        make_detector(component, None, {param: value})  # ConfigError: unknown component/parameter
        params = {name: dict(p) for name, p in (self.component_params or {}).items()}
        params.setdefault(component, {})[param] = value
        self.component_params = params

    def _check_component_params(self) -> None:
        params = self.component_params or {}
        if not isinstance(params, Mapping):
            raise ConfigError("component_params of fused must map component names to dicts of "
                              f"parameters, got {type(params).__name__}")
        for name, p in params.items():
            if name == "fused":
                raise ConfigError("fused cannot contain itself")
            make_detector(name, None, p)  # ConfigError: unknown component/parameter

    def set_params(self, **params: Any) -> "Fused":  # noqa: D102
        super().set_params(**params)
        self._check_component_params()
        return self

    def get_params(self, deep: bool = True) -> dict[str, Any]:  # noqa: D102
        out = super().get_params(deep)
        if deep:
            out.update({f"{name}__{p}": v for name, ps in (self.component_params or {}).items()
                        for p, v in ps.items()})
        return out

    # -- the components ------------------------------------------------------------------------------
    def component_names(self, available: set[str]) -> list[str]:  # noqa: D102
        return self._components(available)

    def params_for_component(self, name: str) -> dict[str, Any]:  # noqa: D102
        return self._params_of(name)

    def _components(self, available: set[str]) -> list[str]:
        check_choice("fuse method", self.method, FUSE_METHODS)
        self._check_component_params()
        images = (self.image,) if isinstance(self.image, str) else tuple(self.image)
        if not images:
            raise ConfigError("fused needs at least one image component")
        for name in images:
            img = DETECTORS.get(name)
            if not img.uses_neighbours or img.requires != frozenset({"image"}) or name == "fused":
                raise ConfigError(f"fused image components must be image kNN detectors "
                                  f"(kdist, lid, slof, dao, density_anomaly), got {name!r}")
        names = list(dict.fromkeys(images))
        for s in self.signals:
            if s == "fused":
                raise ConfigError("fused cannot contain itself")
            if not DETECTORS.get(s).missing_inputs(available) and s not in names:
                names.append(s)
        folded = (self.two_sided,) if isinstance(self.two_sided, str) else tuple(self.two_sided)
        for t in folded:
            DETECTORS.get(t)  # ConfigError listing the known names
        self.two_sided_ = [n for n in names if n in folded]
        return names

    def _make(self, name: str) -> Detector:
        common = {"k": self.k, "backend": self.backend, "block_size": self.block_size, "seed": self.seed}
        return make_detector(name, common, self._params_of(name))

    def _fuse(self, parts: dict[str, np.ndarray]) -> np.ndarray:
        fused, self.weights_ = _fold_and_combine(parts, self.method, self.two_sided_)
        return fused

    def _rule_info(self) -> dict[str, Any]:
        """The combination rule, each component's orientation and its weight (for ``run.json``)."""
        two = set(self.two_sided_) | set(ALREADY_TWO_SIDED)
        every = self.method in ("folded", "consensus")
        return {"rule": FUSION_RULES[self.method],
                "orientation": {name: "two-sided" if every or name in two else "high" for name in self.components_},
                "weights": {name: round(w, 6) for name, w in self.weights_.items()}}

    @staticmethod
    def _available(text: Any, captions: Any) -> set[str]:
        return {"image"} | ({"text"} if text is not None else set()) | (
            {"captions"} if captions is not None else set())

    # -- the estimator API and the engine hook --------------------------------------------------------
    def fit(self, X: np.ndarray, *, text: np.ndarray | None = None, captions: Any = None) -> "Fused":
        """Fit every component on the reference (images X, and captions when given)."""
        self.components_ = self._components(self._available(text, captions))
        self.detectors_ = {name: self._make(name).fit(X, text=text, captions=captions)
                           for name in self.components_}
        return self

    def score_samples(self, X: np.ndarray, *, text: np.ndarray | None = None, captions: Any = None) -> np.ndarray:
        """(n_q,) fused score of queries (ranks/z-scores taken within the queries)."""
        check_is_fitted(self, "detectors_")
        return self._fuse({name: d.score_samples(X, text=text, captions=captions)
                           for name, d in self.detectors_.items()})

    def fit_score(self, X: np.ndarray, *, text: np.ndarray | None = None, captions: Any = None) -> np.ndarray:
        """Fit on the set and score it against itself (each component self-excluded)."""
        self.components_ = self._components(self._available(text, captions))
        self.detectors_ = {}
        parts = {}
        for name in self.components_:
            det = self._make(name)
            parts[name] = det.fit_score(X, text=text, captions=captions)
            self.detectors_[name] = det
        return self._fuse(parts)

    def score_draw(self, inputs: ScoreInputs) -> np.ndarray:  # noqa: D102
        self.components_ = self._components(inputs.available)
        fused = self._fuse({name: inputs.score(name, self._params_of(name)) for name in self.components_})
        self.info_ = {"components": self.components_, "method": self.method,
                      "two_sided": self.two_sided_, **self._rule_info()}
        return fused
