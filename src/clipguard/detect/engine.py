"""The scoring engine: resolve the reference mode, build the neighbour graph of each reference draw
once, let every requested detector score the whole set from it (:meth:`Detector.score_draw
<clipguard.detect.detectors.base.Detector.score_draw>`), and average over the draws of
``"multi_reference"``. :class:`~clipguard.detect.facade.Scan` and ``run_scan`` run on it.

Example::

    cfg = ScanConfig(reference="multi_reference", reference_size=4096, n_references=8)
    scores, info = score_embeddings(image, ["dao", "clipscore", "fused"], cfg, text=text)
    info["reference_plan"]["mode"], info["recall_at_k"]
    scores, _ = score_embeddings(image, ["learning_speed"], dynamics=speed)   # speed: (N,), NaN = no record
    scores, _ = score_embeddings(image, ["perturbation"], records={"stability": noise})   # (N,), NaN = no record
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from clipguard.detect.config import ScanConfig
from clipguard.detect.detectors.base import Detector, ScoreInputs
from clipguard.detect.detectors.caption_dup import caption_keys
from clipguard.detect.detectors.device_batch import DEVICE_BATCH_DETECTORS, batch_scores_on_device
from clipguard.detect.detectors.records import as_records
from clipguard.detect.detectors.registry import DETECTORS, make_detector
from clipguard.detect.neighbours.normalize import normalize
from clipguard.detect.reference.graph import NeighbourGraph, build_graph
from clipguard.detect.reference.plan import ReferencePlan, plan_reference
from clipguard.detect.reference.sampling import batch_partition
from clipguard.utils.device import resolve_device
from clipguard.errors import ConfigError
from clipguard.utils.progress import progress_bar

__all__ = ["score_embeddings", "select_detectors", "split_by_inputs", "describe_requirement", "INPUT_NAMES",
           "ON_REQUEST_INPUTS", "prepare_inputs", "detector_factory", "score_draws", "scan_info"]

log = logging.getLogger("clipguard")

INPUT_NAMES = ("image", "text", "captions", "dynamics", "stability")
ON_REQUEST_INPUTS = frozenset({"dynamics", "stability"})
"""Inputs that no embedding folder holds: a scan has them only when the user supplies them (the
per-row records of :data:`~clipguard.detect.detectors.records.RECORD_KINDS`: the training-dynamics
record, ``--dynamics MODEL_DIR``; any record, ``--record PATH``). A default detector that needs one
runs when it is given and is left out of a default scan, without a warning or a
``skipped_detectors`` entry, when it is not."""
_INPUT_TEXT = {
    "image": "image embeddings",
    "text": "caption embeddings (text_emb/ in an embedding folder, text= in Python)",
    "captions": "caption strings (the metadata column 'caption', captions= in Python)",
    "dynamics": "a training-dynamics record (clipguard scan --dynamics MODEL_DIR, Scan.with_dynamics(...) in "
                "Python; train with --record-epochs N)",
    "stability": "a perturbation-stability record (clipguard scan --record DIR, Scan.with_record(...) in Python; "
                 "probe the model with `clipguard probe MODEL_DIR MANIFEST --out DIR`)",
}


def describe_requirement(req: str) -> str:
    """``"captions|text"`` -> ``"caption strings (...) or caption embeddings (...)"``."""
    return " or ".join(_INPUT_TEXT.get(r, r) for r in req.split("|"))


def split_by_inputs(
    names: Iterable[str], available: Iterable[str], *, explicit: bool
) -> tuple[list[str], dict[str, str]]:
    """Keep the detectors whose inputs are available.

    Args:
        names: detector names.
        available: input names present (see :data:`INPUT_NAMES`).
        explicit: the user asked for these names; a missing input is then an error.

    Returns:
        ``(runnable, skipped)``: runnable names in order, and ``{name: reason}`` of the others.

    Raises:
        ConfigError: ``explicit`` and some detector lacks an input; the message names it.
    """
    runnable, skipped = [], {}
    for name in names:
        missing = DETECTORS.get(name).missing_inputs(available)
        if not missing:
            runnable.append(name)
            continue
        need = "; ".join(describe_requirement(m) for m in missing)
        if explicit:
            raise ConfigError(
                f"detector {name!r} needs {need}, which this data does not have; "
                "provide them or choose another detector"
            )
        skipped[name] = f"needs {need}"
    return runnable, skipped


def _default_names(available: set[str]) -> list[str]:
    """The registered detectors of a default scan: ``in_default_scan``, and not waiting for an
    :data:`ON_REQUEST_INPUTS` input that was not given."""
    out = []
    for name in DETECTORS.names():
        cls = DETECTORS.get(name)
        alternatives = [set(r.split("|")) for r in cls.requires]
        waiting = any(alt <= ON_REQUEST_INPUTS and not alt & available for alt in alternatives)
        if cls.in_default_scan and not waiting:
            out.append(name)
    return out


def select_detectors(
    detectors: Iterable[str] | None, available: Iterable[str]
) -> tuple[list[str] | None, list[str], dict[str, str]]:
    """The detectors a scan runs on data with the ``available`` inputs.

    Args:
        detectors: registered names, or None for every registered detector that is part of a
            default scan (``in_default_scan``) and whose inputs the data has (the others are
            skipped, with a warning; a detector of an input the user did not supply, see
            :data:`ON_REQUEST_INPUTS`, is left out without one).
        available: input names present (see :data:`INPUT_NAMES`).

    Returns:
        ``(requested, runnable, skipped)``: the names asked for (None when ``detectors`` was
        None), the names that run, and ``{name: reason}`` of the skipped ones.

    Raises:
        ConfigError: no or unknown detectors, a requested detector without its inputs, or none
            of the default detectors can run.
    """
    explicit = detectors is not None
    names = list(dict.fromkeys(detectors)) if explicit else _default_names(set(available))
    if not names:
        raise ConfigError("no detectors requested; choose from: " + ", ".join(DETECTORS.names()))
    for name in names:
        DETECTORS.get(name)  # ConfigError listing the known names
    runnable, skipped = split_by_inputs(names, available, explicit=explicit)
    if skipped:
        log.warning("skipped %d detector(s) for missing inputs: %s", len(skipped),
                    "; ".join(f"{n} ({why})" for n, why in skipped.items()))
    if not runnable:
        raise ConfigError("none of the detectors can run on this data: "
                          + "; ".join(f"{n} {why}" for n, why in skipped.items()))
    return (names if explicit else None), runnable, skipped


def prepare_inputs(image: np.ndarray, text: Any, captions: Any, describe_row: Any):
    """``(x, t, keys)``: normalised image (N, d) and caption (N, d_t) float32 embeddings and the
    (N,) caption keys, row-aligned (``t``/``keys`` None when not given); EmbeddingError for
    NaN/inf/zero rows, ConfigError for misaligned inputs."""
    x = normalize(image, describe_row=describe_row)
    n = x.shape[0]
    t = None
    if text is not None:
        t = normalize(text, describe_row=(lambda i: f"text row {i}") if describe_row is None
                      else (lambda i: f"text of {describe_row(i)}"))
        if t.shape[0] != n:
            raise ConfigError(f"{t.shape[0]} caption embeddings for {n} image embeddings; they "
                              "must be row-aligned")
    keys = None
    if captions is not None:
        if len(captions) != n:
            raise ConfigError(f"{len(captions)} captions for {n} image embeddings; they must be "
                              "row-aligned")
        keys = caption_keys(captions)
    return x, t, keys


def detector_factory(cfg: ScanConfig) -> Callable[[str, Mapping[str, Any]], Detector]:
    """``make(name, params)``: a detector with the scan's common options, its ``detector_params``
    and then ``params`` (e.g. given to it as a component of ``fused``)."""
    common = {"k": cfg.k, "seed": cfg.seed, "backend": cfg.backend, "block_size": cfg.block_size}

    def make(name: str, params: Mapping[str, Any]) -> Detector:
        det = make_detector(name, common, {**cfg.detector_params.get(name, {}), **params})
        if det.uses_neighbours and getattr(det, "k", cfg.k) != cfg.k:
            raise ConfigError(f"detector {name!r} was given k={det.k!r}, but in a scan every kNN "
                              f"detector reads the scan's neighbour graph (k={cfg.k}); set the scan "
                              "option k instead")
        return det

    return make


def _graph_builder(x: np.ndarray, plan: ReferencePlan, cfg: ScanConfig, need_knn: bool
                   ) -> Callable[[int], NeighbourGraph]:
    """``graph_of(draw)``: the neighbour graph of one draw, built here over all of ``x``."""
    def graph_of(r: int) -> NeighbourGraph:
        return build_graph(x, cfg.k, plan, draw=r, batch_size=cfg.batch_size, seed=cfg.seed,
                           backend=cfg.backend, block_size=cfg.block_size, nlist=cfg.nlist,
                           nprobe=cfg.nprobe, target_recall=cfg.target_recall,
                           n_recall=cfg.n_recall, need_knn=need_knn, device=cfg.device)
    return graph_of


def score_draws(x: np.ndarray, t: Any, keys: Any, plan: ReferencePlan, cfg: ScanConfig,
                dets: dict[str, Detector], make: Callable, records: Mapping[str, np.ndarray] | None = None,
                *, graph_of: Callable[[int], NeighbourGraph] | None = None,
                cache_of: Callable[[int], dict[str, np.ndarray]] | None = None,
                ) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Every detector's (N,) scores averaged over the draws of ``plan``, and each draw's info.

    Args:
        x: (N, d) normalised image embeddings (:func:`prepare_inputs`); a sharded scan whose
            remaining detectors read no embedding values passes a zero-stride placeholder.
        t, keys: the other inputs (or None).
        records: ``{input name: (N,) values}`` of the per-row records
            (:func:`~clipguard.detect.detectors.records.as_records`), or None.
        plan, cfg: the resolved reference plan and scan options.
        dets: the scan's detectors by name; ``make``: :func:`detector_factory` of ``cfg``.
        graph_of: ``draw -> NeighbourGraph``; default builds it over ``x`` here. A sharded
            scan (:mod:`clipguard.detect.sharded`) assembles it from its shards instead.
        cache_of: ``draw -> {cache key: (N,) scores}`` computed elsewhere (the row-local
            scores of a sharded scan); those detectors are not run again.
    """
    n, names = x.shape[0], list(dets)
    need_knn = any(d.uses_neighbours for d in dets.values())
    graph_of = graph_of or _graph_builder(x, plan, cfg, need_knn)
    draws = plan.n_references or 1
    out = {name: np.zeros(n, dtype=np.float64) for name in names}
    fixed: set[str] = set()
    ref_infos = []
    bar = progress_bar(draws, "references", unit="draw") if draws > 1 else None
    for r in range(draws):
        if bar is not None:
            bar.update(1)
        graph = graph_of(r)
        inputs = ScoreInputs(x, graph, cfg.k, text=t, captions=keys, seed=cfg.seed, make=make,
                             detectors=dets, records=dict(records or {}),
                             cache=dict(cache_of(r)) if cache_of is not None else {})
        for name in names:
            if r > 0 and name in fixed:
                continue
            s = inputs.score(name)
            if draws > 1 and dets[name].reference_free(inputs):
                fixed.add(name)  # the same in every draw: computed once
                out[name] = s.copy()
            else:
                out[name] += s if draws == 1 else s / draws
        ref_infos.append(graph.info)
        del graph, inputs
    if bar is not None:
        bar.close()
    return out, ref_infos


def _plan(n: int, cfg: ScanConfig) -> ReferencePlan:
    """The reference plan of ``n`` rows under the scan options."""
    return plan_reference(n, cfg.reference, k=cfg.k, batch_size=cfg.batch_size,
                          reference_size=cfg.reference_size, n_references=cfg.n_references, index=cfg.index)


def _requested(detectors: Iterable[str]) -> list[str]:
    """The requested detector names, once each and in order; ConfigError for none or an unknown one."""
    names = list(dict.fromkeys(detectors))
    if not names:
        raise ConfigError("no detectors requested; choose from: " + ", ".join(DETECTORS.names()))
    for name in names:
        DETECTORS.get(name)
    return names


def _check_k(plan: ReferencePlan, k: int, n: int) -> None:
    """ConfigError when the global reference has fewer than ``k`` other samples for each of ``n`` rows."""
    if plan.mode == "global" and k > n - 1:
        raise ConfigError(f"k={k} needs at least {k} other samples but there are {n - 1}; use k <= {max(n - 1, 0)}")


def _on_device(image: np.ndarray, names: list[str], cfg: ScanConfig, describe_row: Any
               ) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """The per-batch scan entirely on a GPU (:func:`~clipguard.detect.detectors.device_batch.
    batch_scores_on_device`: normalisation, kNN and scores on the device), when the device is a
    GPU, the reference is ``"batch"`` and every detector is one it computes; else None."""
    if np.ndim(image) != 2 or not set(names) <= set(DEVICE_BATCH_DETECTORS) or cfg.detector_params:
        return None
    dev = resolve_device(cfg.device)
    plan = _plan(image.shape[0], cfg)
    if dev.type != "cuda" or plan.mode != "batch":
        return None
    batches = batch_partition(image.shape[0], cfg.batch_size, cfg.k, cfg.seed)
    scores = batch_scores_on_device(image, batches, cfg.k, names, device=dev, describe_row=describe_row)
    ref = {"mode": "batch", "batch_size": int(cfg.batch_size), "n_batches": len(batches), "on_device": str(dev)}
    info = {"reference_plan": plan.as_dict(), "references": [ref]}
    return {name: scores[name] for name in names}, info


def scan_info(plan: ReferencePlan, ref_infos: list[dict], dets: dict[str, Detector]) -> dict[str, Any]:
    """What was done: the reference plan, each draw's kNN info, mean recall, detector info."""
    info: dict[str, Any] = {"reference_plan": plan.as_dict(), "references": ref_infos}
    recalls = [ri["recall_at_k"] for ri in ref_infos if "recall_at_k" in ri]
    if recalls:
        info["recall_at_k"] = float(np.mean(recalls))
    det_info = {name: d.info_ for name, d in dets.items() if getattr(d, "info_", None)}
    if det_info:
        info["detector_info"] = det_info
    return info


def _with_dynamics(records: Mapping[str, Any] | None, dynamics: Any) -> dict[str, Any]:
    """``records`` (not None values) with the shorthand ``dynamics=`` added under ``"dynamics"``."""
    out = {name: v for name, v in (records or {}).items() if v is not None}
    if dynamics is not None:
        if "dynamics" in out:
            raise ConfigError("the learning speeds were given twice, as dynamics= and as records['dynamics']; "
                              "pass one")
        out["dynamics"] = dynamics
    return out


def score_embeddings(
    image: np.ndarray,
    detectors: Iterable[str] = ("kdist", "lid", "slof", "dao"),
    config: ScanConfig | None = None,
    *,
    text: np.ndarray | None = None,
    captions: Any = None,
    records: Mapping[str, Any] | None = None,
    dynamics: np.ndarray | None = None,
    describe_row: Any = None,
    **overrides: Any,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Score every sample with several detectors, sharing one kNN graph per reference draw.

    ``"multi_reference"`` averages the SCORES of every detector over its ``n_references``
    draws (arithmetic mean, summed as ``s / R`` so capped DAO values stay finite); with one
    draw it equals ``"reference"``. Scores, not ranks, are averaged so that each detector
    keeps its units; all detectors here give scores of comparable scale across draws of the
    same size M. With ``"global"`` the scores equal ``DETECTORS.get(name)(k=k).fit_score(x)``.

    Args:
        image: (N, d) image embeddings (normalised here).
        detectors: registered detector names; every one must have its inputs.
        config: the scan options (:class:`~clipguard.detect.config.ScanConfig`; default
            ``ScanConfig()``, whose ``reference`` is ``"auto"``). Used here: ``k``, the
            reference mode and its sizes (``reference``, ``batch_size``, ``reference_size``,
            ``n_references``, ``index``), the IVF parameters (``nlist``, ``nprobe``,
            ``target_recall``, ``n_recall``), ``seed``, ``backend``, ``block_size``,
            ``device`` (torch device of the kNN search) and ``detector_params`` (e.g.
            ``{"caption_dup": {"threshold": 0.99}}``, honoured also where the detector is a
            component of ``fused``).
        text: (N, d_t) caption embeddings, or None.
        captions: (N,) caption strings, or None.
        records: the per-row records by input name -> (N,) values, row-aligned, NaN where a row
            has no record (scored NaN = least suspicious): ``"dynamics"``, the learning speed
            (:func:`~clipguard.detect.detectors.learning_speed.speeds_of_rows`), read by
            ``learning_speed``; ``"stability"``, the noise stability, read by ``perturbation``
            (:func:`~clipguard.detect.detectors.records.join_record` joins a record file by id).
        dynamics: shorthand for ``records={"dynamics": dynamics}``.
        describe_row: ``row -> text`` for error messages about bad embedding rows.
        **overrides: ScanConfig field names, applied on top of ``config``
            (``score_embeddings(x, ["dao"], k=8, reference="global")``).

    On a GPU (``device`` resolving to CUDA) with the ``"batch"`` reference and only the detectors
    of :data:`~clipguard.detect.detectors.device_batch.DEVICE_BATCH_DETECTORS` (without
    ``detector_params``), the whole scan runs on the device
    (:func:`~clipguard.detect.detectors.device_batch.batch_scores_on_device`: upload,
    normalisation, kNN and scores; float64 scores equal to the CPU path's to ~1e-6 relative).

    Returns:
        ``(scores, info)``: ``{name: (N,) float64}`` in the requested order (higher = more
        suspicious), and ``info`` with ``reference_plan`` (mode, sizes, reason), ``references``
        (one dict per draw: index, recall_at_k, ...), ``recall_at_k`` (mean over draws, for
        the reference modes) and ``detector_info`` (e.g. the components of ``fused``).

    Raises:
        ConfigError: unknown detector/option, invalid option values, a detector without its
            inputs, bad sizes, a kNN detector given its own k.
        EmbeddingError: NaN/inf or zero rows in the embeddings.
    """
    cfg = ScanConfig.resolve(config, **overrides)
    names = _requested(detectors)
    given_records = _with_dynamics(records, dynamics)
    done = _on_device(image, names, cfg, describe_row) if not given_records else None
    if done is not None:
        return done
    x, t, keys = prepare_inputs(image, text, captions, describe_row)
    n = x.shape[0]
    recs = as_records(given_records, n)
    given = {"image": x, "text": t, "captions": keys, **recs}
    split_by_inputs(names, {name for name, v in given.items() if v is not None}, explicit=True)
    plan = _plan(n, cfg)
    _check_k(plan, cfg.k, n)
    make = detector_factory(cfg)
    dets = {name: make(name, {}) for name in names}
    out, ref_infos = score_draws(x, t, keys, plan, cfg, dets, make, recs)
    log.info("scored %d samples with %s (reference %s)", n, ", ".join(names), plan.mode)
    return out, scan_info(plan, ref_infos, dets)
