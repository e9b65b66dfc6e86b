"""The scoring engine behind :func:`~clipguard.detect.detectors.score_all`, ``run_scan`` and
:class:`~clipguard.detect.facade.Scan`: resolve the reference mode, build the neighbour graph of
each reference draw once, let every requested detector score the whole set from it, and
average over the draws of ``"multi_reference"``.

Example::

    cfg = ScanConfig(reference="multi_reference", reference_size=4096, n_references=8)
    scores, info = score_embeddings(image, ["dao", "clipscore", "fused"], cfg, text=text)
    info["reference_plan"]["mode"], info["recall_at_k"]
"""
from __future__ import annotations

import inspect
import logging
import math
import unicodedata
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from clipguard.detect.detectors import DETECTORS, Detector
from clipguard.detect.config import ScanConfig
from clipguard.detect.knn import normalize
from clipguard.detect.reference import NeighbourGraph, build_graph, plan_reference
from clipguard.errors import ConfigError
from clipguard.utils.progress import progress_bar

log = logging.getLogger("clipguard")

INPUT_NAMES = ("image", "text", "captions")
_INPUT_TEXT = {
    "image": "image embeddings",
    "text": "caption embeddings (text_emb/ in an embedding folder, text= in Python)",
    "captions": "caption strings (the metadata column 'caption', captions= in Python)",
}


def describe_requirement(req: str) -> str:
    """``"captions|text"`` -> ``"caption strings (...) or caption embeddings (...)"``."""
    return " or ".join(_INPUT_TEXT.get(r, r) for r in req.split("|"))


def caption_keys(captions: Any) -> np.ndarray:
    """Normalised caption strings for exact-duplicate matching.

    Unicode NFKC, case-folded, every run of non-alphanumeric characters replaced by one space,
    stripped: ``"A photo of a STAR."`` and ``"a photo  of a star"`` give the same key. Missing
    captions (None, NaN, or nothing left after normalisation) become None and match nothing.

    Returns:
        (n,) object array of str or None.
    """
    out = np.empty(len(captions), dtype=object)
    for i, c in enumerate(captions):
        if c is None or (isinstance(c, float) and math.isnan(c)):
            out[i] = None
            continue
        key = re.sub(r"[\W_]+", " ", unicodedata.normalize("NFKC", str(c)).casefold()).strip()
        out[i] = key or None
    return out


@dataclass
class ScoreInputs:
    """Everything a detector may read to score a whole set (one reference draw).

    Attributes:
        image: (N, d) L2-normalised float32 image embeddings.
        graph: the :class:`~clipguard.detect.reference.NeighbourGraph` of this draw.
        k: neighbours per sample.
        text: (N, d_t) L2-normalised float32 caption embeddings, or None.
        captions: (N,) caption keys from :func:`caption_keys`, or None.
        seed: seed for randomised detectors.
        cache: scores already computed on these inputs, by detector name (fused reuses them).
    """

    image: np.ndarray
    graph: NeighbourGraph
    k: int
    text: np.ndarray | None = None
    captions: np.ndarray | None = None
    seed: int = 0
    cache: dict[str, np.ndarray] = field(default_factory=dict)
    detectors: dict[str, Detector] = field(default_factory=dict)

    @property
    def available(self) -> set[str]:
        """Input names present: ``"image"`` and maybe ``"text"``, ``"captions"``."""
        out = {"image"}
        if self.text is not None:
            out.add("text")
        if self.captions is not None:
            out.add("captions")
        return out

    def score(self, name: str, **params: Any) -> np.ndarray:
        """Scores of detector ``name`` on these inputs, computed once and cached."""
        if name not in self.cache:
            det = self.detectors.get(name) or make_detector(name, k=self.k, seed=self.seed, **params)
            self.cache[name] = np.asarray(det.score_inputs(self), dtype=np.float64)
        return self.cache[name]


def make_detector(name: str, **options: Any) -> Detector:
    """Instantiate detector ``name`` with the ``options`` its constructor accepts.

    Options the constructor does not take (e.g. ``k`` for ``clipscore``) are ignored, so one
    set of scan options can build every detector.
    """
    cls = DETECTORS.get(name)
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return cls(**options)
    return cls(**{k: v for k, v in options.items() if k in params})


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


def score_embeddings(
    image: np.ndarray,
    detectors: Iterable[str] = ("kdist", "lid", "slof", "dao"),
    config: ScanConfig | None = None,
    *,
    text: np.ndarray | None = None,
    captions: Any = None,
    describe_row: Any = None,
    **overrides: Any,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Score every sample with several detectors, sharing one kNN graph per reference draw.

    ``"multi_reference"`` averages the SCORES of every detector over its ``n_references``
    draws (arithmetic mean, summed as ``s / R`` so capped DAO values stay finite); with one
    draw it equals ``"reference"``. Scores, not ranks, are averaged so that each detector
    keeps its units; all detectors here give scores of comparable scale across draws of the
    same size M.

    Args:
        image: (N, d) image embeddings (normalised here).
        detectors: registered detector names; every one must have its inputs.
        config: the scan options (:class:`~clipguard.detect.config.ScanConfig`; default
            ``ScanConfig()``, whose ``reference`` is ``"auto"``). Used here: ``k``, the
            reference mode and its sizes (``reference``, ``batch_size``, ``reference_size``,
            ``n_references``, ``index``), the IVF parameters (``nlist``, ``nprobe``,
            ``target_recall``, ``n_recall``), ``seed``, ``backend``, ``block_size``,
            ``device`` (torch device of the kNN search) and ``detector_params`` (e.g.
            ``{"caption_dup": {"threshold": 0.99}}``).
        text: (N, d_t) caption embeddings, or None.
        captions: (N,) caption strings, or None.
        describe_row: ``row -> text`` for error messages about bad embedding rows.
        **overrides: ScanConfig field names, applied on top of ``config``
            (``score_embeddings(x, ["dao"], k=8, reference="global")``).

    Returns:
        ``(scores, info)``: ``{name: (N,) float64}`` in the requested order (higher = more
        suspicious), and ``info`` with ``reference_plan`` (mode, sizes, reason), ``references``
        (one dict per draw: index, recall_at_k, ...), ``recall_at_k`` (mean over draws, for
        the reference modes) and ``detector_info`` (e.g. the components of ``fused``).

    Raises:
        ConfigError: unknown detector/option, invalid option values, a detector without its
            inputs, bad sizes.
        EmbeddingError: NaN/inf or zero rows in the embeddings.
    """
    cfg = ScanConfig.resolve(config, **overrides)
    k = cfg.k
    names = list(dict.fromkeys(detectors))
    if not names:
        raise ConfigError("no detectors requested; choose from: " + ", ".join(DETECTORS.names()))
    for name in names:
        DETECTORS.get(name)
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
    available = {"image"} | ({"text"} if t is not None else set()) | (
        {"captions"} if keys is not None else set())
    split_by_inputs(names, available, explicit=True)

    plan = plan_reference(n, cfg.reference, k=k, batch_size=cfg.batch_size,
                          reference_size=cfg.reference_size, n_references=cfg.n_references,
                          index=cfg.index)
    if plan.mode == "global" and k > n - 1:
        raise ConfigError(f"k={k} needs at least {k} other samples but there are {n - 1}; "
                          f"use k <= {max(n - 1, 0)}")
    params = cfg.detector_params
    dets = {name: make_detector(name, k=k, seed=cfg.seed, backend=cfg.backend,
                                block_size=cfg.block_size, **params.get(name, {}))
            for name in names}
    need_knn = any(d.uses_neighbours for d in dets.values())
    draws = plan.n_references or 1
    out = {name: np.zeros(n, dtype=np.float64) for name in names}
    fixed: set[str] = set()
    ref_infos = []
    bar = progress_bar(draws, "references", unit="draw") if draws > 1 else None
    for r in range(draws):
        if bar is not None:
            bar.update(1)
        graph = build_graph(x, k, plan, draw=r, batch_size=cfg.batch_size, seed=cfg.seed,
                            backend=cfg.backend, block_size=cfg.block_size, nlist=cfg.nlist,
                            nprobe=cfg.nprobe, target_recall=cfg.target_recall,
                            n_recall=cfg.n_recall, need_knn=need_knn, device=cfg.device)
        inputs = ScoreInputs(x, graph, k, text=t, captions=keys, seed=cfg.seed, detectors=dets)
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
    info: dict[str, Any] = {"reference_plan": plan.as_dict(), "references": ref_infos}
    recalls = [ri["recall_at_k"] for ri in ref_infos if "recall_at_k" in ri]
    if recalls:
        info["recall_at_k"] = float(np.mean(recalls))
    det_info = {name: d.info_ for name, d in dets.items() if getattr(d, "info_", None)}
    if det_info:
        info["detector_info"] = det_info
    log.info("scored %d samples with %s (reference %s)", n, ", ".join(names), plan.mode)
    return out, info
