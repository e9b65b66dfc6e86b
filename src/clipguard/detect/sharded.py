"""A scan cut into parts that can run anywhere (the map), and the reduce that gives the single-process result.

The expensive part of a scan is the neighbour graph: ``O(N * M * d)`` for a reference of M rows
(a batch of the DAO paper's per-batch reference, or a random reference). It is cut into *parts*
(:func:`plan_parts`): in ``"batch"`` mode a part is a run of consecutive batches of the seeded
partition; in the reference modes a range of rows, every part searched against the same
references, built once (:func:`reference_draws`: the rows drawn, an IVF index trained and its
``nprobe`` tuned, the reference rows' own neighbours found) and shipped to the workers; ``"global"`` mode
(every sample against every other, ``O(N**2)``) is one part. :func:`score_part` is the map: it
builds the part's neighbour rows and computes there every **row-local** score
(:attr:`~clipguard.detect.detectors.base.Detector.row_local`: kdist, LID, SLOF, DAO, clipscore,
caption_disagreement, also as components of ``fused``). :func:`reduce_scores` is the reduce: it
assembles each draw's graph from the parts and runs the engine's own scoring
(:func:`~clipguard.detect.engine.score_draws`) with the row-local scores already in its cache,
so the whole-set detectors (``density_anomaly``'s robust z, ``caption_dup``'s groups, ``fused``'s
rank p-values, ``iforest``) see exactly what a single-process scan gives them. The scores equal
those of :func:`~clipguard.detect.engine.score_embeddings` (tested bit for bit).

Memory of the reduce: the graph of one draw (``N * k * 12`` bytes) and the (N,) scores; the
embeddings are loaded only when a whole-set detector reads their values (``iforest``,
``spectral``, ``caption_dup`` without caption strings).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from clipguard.detect.config import ScanConfig
from clipguard.detect.detectors.base import Detector, ScoreInputs
from clipguard.detect.detectors.device_batch import batch_scores_on_device
from clipguard.detect.detectors.registry import DETECTORS
from clipguard.detect.engine import detector_factory, score_draws, scan_info
from clipguard.detect.neighbours.groups import knn_self_groups
from clipguard.detect.reference.graph import NeighbourGraph, assemble_graph, build_graph
from clipguard.detect.reference.plan import ReferencePlan
from clipguard.detect.reference.sampling import batch_partition, sample_reference
from clipguard.detect.reference.search import ReferenceSearch, prepare_reference, reference_recall
from clipguard.utils.device import resolve_device

__all__ = ["PartSpec", "ReferenceDraw", "PartResult", "plan_parts", "reference_draws", "score_part",
           "reduce_scores", "reduce_needs", "not_loaded", "DEFAULT_PART_ROWS", "device_part_scores", "draw_graph",
           "draw_scores"]

DEFAULT_PART_ROWS = 131_072
"""Rows per part (rounded to whole batches in ``"batch"`` mode): 64 batches of 2,048, about
12 s of per-batch DAO on one CPU core and 25 MiB of neighbour rows per reference draw."""


@dataclass
class PartSpec:
    """One part of a sharded scan.

    Attributes:
        index: the part's number (0-based, in plan order).
        rows: (n_j,) int64 global rows scored by the part, in the order its results are stored.
        groups: ``"batch"`` mode: (start, stop) of each batch within ``rows`` (each batch's rows
            ascending, as :func:`~clipguard.detect.reference.sampling.batch_partition` gives them);
            None otherwise.
    """

    index: int
    rows: np.ndarray
    groups: list[tuple[int, int]] | None = None


@dataclass
class ReferenceDraw:
    """One random reference of the reference modes, built once and shipped to every part.

    Attributes:
        rows: (M,) sorted global rows of the reference.
        xb: (M, d) their normalised float32 embeddings.
        D: (M, k) float32 each reference row's self-excluded distances within the reference.
        I: (M, k) int64 their neighbours as POSITIONS in ``rows``.
        text: (M, d_t) normalised caption embeddings of the reference, or None.
        info: the draw's search info (as in a single-process scan's ``references``).
        search: the :class:`~clipguard.detect.reference.search.ReferenceSearch` every part uses
            (flat, or the IVF index built and tuned once), without the full embeddings.
    """

    rows: np.ndarray
    xb: np.ndarray
    D: np.ndarray
    I: np.ndarray
    text: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)
    search: ReferenceSearch | None = None


@dataclass
class PartResult:
    """What :func:`score_part` returns for one part (every list has one entry per draw).

    Attributes:
        D: (n_j, k) float32 neighbour distances of the part's rows, or None without kNN.
        I: (n_j, k) int64 GLOBAL neighbour rows, or None.
        scores: ``{cache key: (n_j,) float64}`` row-local scores (keys as in
            :meth:`~clipguard.detect.detectors.base.ScoreInputs.score`).
        timings: seconds per stage (``knn``, ``score``).
    """

    D: list[np.ndarray | None]
    I: list[np.ndarray | None]
    scores: list[dict[str, np.ndarray]]
    timings: dict[str, float] = field(default_factory=dict)


def not_loaded(n: int, d: int) -> np.ndarray:
    """A read-only zero-stride (n, d) float32 stand-in for embeddings the reduce does not load
    (its length and shape are right; no detector that runs reads its values)."""
    return np.broadcast_to(np.zeros((1, d), dtype=np.float32), (n, d))


class _RowsView:
    """``view[rows]`` -> normalised rows read on demand, and ``shape``: what a reference search
    needs of the embeddings (the reference rows and the tuning/recall samples)."""

    def __init__(self, read_rows: Callable[[np.ndarray], np.ndarray], n: int) -> None:
        self.read_rows, self.shape = read_rows, (n,)

    def __getitem__(self, rows: Any) -> np.ndarray:
        return self.read_rows(np.arange(self.shape[0])[rows] if isinstance(rows, slice) else np.asarray(rows))


def plan_parts(n: int, plan: ReferencePlan, cfg: ScanConfig, part_rows: int = DEFAULT_PART_ROWS
               ) -> list[PartSpec]:
    """The parts of a scan of ``n`` rows under ``plan`` (see the module docstring).

    Args:
        n: rows of the scanned set.
        plan: the resolved plan (:func:`~clipguard.detect.reference.plan.plan_reference`).
        cfg: the scan options (``batch_size``, ``k``, ``seed``).
        part_rows: rows per part (whole batches in ``"batch"`` mode, at least one).

    """
    part_rows = max(1, int(part_rows))
    if plan.mode == "global":
        return [PartSpec(0, np.arange(n, dtype=np.int64))]
    if plan.mode == "batch":
        batches = batch_partition(n, cfg.batch_size, cfg.k, cfg.seed)
        per = max(1, part_rows // max(1, cfg.batch_size))
        parts = []
        for j, s in enumerate(range(0, len(batches), per)):
            chunk = batches[s:s + per]
            ends = np.cumsum([len(b) for b in chunk])
            parts.append(PartSpec(j, np.concatenate(chunk),
                                  [(int(e - len(b)), int(e)) for b, e in zip(chunk, ends)]))
        return parts
    return [PartSpec(j, np.arange(s, min(s + part_rows, n), dtype=np.int64))
            for j, s in enumerate(range(0, n, part_rows))]


def reference_draws(read_rows: Callable[[np.ndarray], np.ndarray], n: int, plan: ReferencePlan,
                    cfg: ScanConfig, read_text: Callable[[np.ndarray], np.ndarray] | None = None
                    ) -> list[ReferenceDraw] | None:
    """The references of ``"reference"`` / ``"multi_reference"`` (None for other modes).

    Args:
        read_rows: ``rows -> (len(rows), d)`` NORMALISED float32 image embeddings.
        n: rows of the scanned set.
        read_text: the same for caption embeddings, or None when the set has none.
    """
    if plan.mode not in ("reference", "multi_reference"):
        return None
    out = []
    for r in range(plan.n_references or 1):
        rows = sample_reference(n, plan.reference_size, cfg.seed, r)
        seed = cfg.seed + r  # as a single-process scan seeds draw r's index and samples
        rs, info = prepare_reference(_RowsView(read_rows, n), rows, cfg.k, index=plan.index, nlist=cfg.nlist,
                                     nprobe=cfg.nprobe, target_recall=cfg.target_recall, backend="faiss",
                                     block_size=cfg.block_size, n_recall=cfg.n_recall, seed=seed,
                                     device=cfg.device)
        D, I = rs.search_queries(rs.xb, np.arange(len(rows)))
        info = {"mode": plan.mode, "draw": r, **info, **reference_recall(rs, n, cfg.n_recall, seed)}
        text = None if read_text is None else read_text(rows)
        out.append(ReferenceDraw(rows, rs.xb, D, I, text, info, rs.detached()))
    return out


class _PartInputs(ScoreInputs):
    """The inputs of one part: only row-local detectors are computed (others give NaN, unused)."""

    def __init__(self, *args: Any, inputs_available: set[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inputs_available = inputs_available

    @property
    def available(self) -> set[str]:  # noqa: D102 - the whole set's inputs, not the part's
        return set(self.inputs_available)

    def score(self, name: str, params: Mapping[str, Any] | None = None) -> np.ndarray:  # noqa: D102
        if not DETECTORS.get(name).row_local:
            return np.full(len(self.image), np.nan)
        return super().score(name, params)


def _row_local_keys(dets: Mapping[str, Detector], available: set[str]) -> list[tuple[str, dict]]:
    """``[(name, params)]`` of every row-local detector the scan computes, components included."""
    out: list[tuple[str, dict]] = []
    for name, det in dets.items():
        for comp, params in [(name, {})] + [(c, det.params_for_component(c))
                                            for c in det.component_names(available)]:
            if DETECTORS.get(comp).row_local and (comp, params) not in out:
                out.append((comp, params))
    return out


def _part_graph(x: np.ndarray, spec: PartSpec, plan: ReferencePlan, cfg: ScanConfig,
                ref: ReferenceDraw | None) -> tuple[NeighbourGraph, np.ndarray]:
    """The graph over the part's universe (its rows, then the reference rows) and the map from
    universe positions to global rows."""
    n_j = len(spec.rows)
    if plan.mode == "global":
        g = build_graph(x, cfg.k, plan, backend=cfg.backend, block_size=cfg.block_size, device=cfg.device)
        return g, spec.rows
    if plan.mode == "batch":
        assert spec.groups is not None
        local = [np.arange(a, b, dtype=np.int64) for a, b in spec.groups]
        D, I = knn_self_groups(x, local, cfg.k, device=cfg.device)
        return assemble_graph(D, I, [(g, g) for g in local], None, {}), spec.rows
    assert ref is not None and ref.search is not None
    D, I = ref.search.search_queries(x, ref.search.self_positions(spec.rows))
    m = len(ref.rows)
    D_u = np.concatenate([D, ref.D])
    I_u = np.concatenate([I, ref.I]) + n_j  # reference position p sits at universe row n_j + p
    ref_u = np.arange(n_j, n_j + m, dtype=np.int64)
    g = assemble_graph(D_u, I_u, [(np.arange(n_j + m, dtype=np.int64), ref_u)], ref_u, {})
    return g, np.concatenate([spec.rows, ref.rows])


def score_part(x: np.ndarray, spec: PartSpec, plan: ReferencePlan, cfg: ScanConfig, names: list[str],
               available: set[str], *, text: np.ndarray | None = None,
               references: list[ReferenceDraw] | None = None) -> PartResult:
    """The map of a sharded scan: the part's neighbour rows and row-local scores, per draw.

    Args:
        x: (n_j, d) NORMALISED float32 image embeddings of ``spec.rows`` (in that order).
        spec: the part (:func:`plan_parts`).
        plan, cfg: the resolved plan and scan options (``k``, ``seed``, ``device``...).
        names: the scan's detectors; ``available``: the whole set's input names.
        text: (n_j, d_t) normalised caption embeddings of the part, or None.
        references: the draws of a reference mode (:func:`reference_draws`), else None.

    Returns:
        A :class:`PartResult` (one entry per draw).
    """
    make = detector_factory(cfg)
    dets = {name: make(name, {}) for name in names}
    keys = _row_local_keys(dets, available)
    need_knn = any(DETECTORS.get(c).uses_neighbours for c, _ in keys) or any(
        d.uses_neighbours for d in dets.values())
    n_j, res = len(spec.rows), PartResult([], [], [], {"knn": 0.0, "score": 0.0})
    for r in range(plan.n_references or 1):
        t0 = time.perf_counter()
        ref = references[r] if references is not None else None
        x_u = x if ref is None else np.concatenate([x, ref.xb])
        t_u = text if ref is None or text is None else np.concatenate([text, ref.text])
        if need_knn:
            graph, universe = _part_graph(x, spec, plan, cfg, ref)
        else:
            graph, universe = NeighbourGraph(None, None, None, None, [], None), spec.rows
        t1 = time.perf_counter()
        inputs = _PartInputs(x_u, graph, cfg.k, text=t_u, seed=cfg.seed, make=make, detectors=dets,
                             inputs_available=set(available))
        for comp, params in keys:
            inputs.score(comp, params or None)
        res.scores.append({key: v[:n_j].copy() for key, v in inputs.cache.items()})
        res.D.append(None if graph.D is None else graph.D[:n_j].copy())
        res.I.append(None if graph.I is None else universe[graph.I[:n_j]])
        res.timings["knn"] += t1 - t0
        res.timings["score"] += time.perf_counter() - t1
    return res


_ROW_LOCAL_ON_DEVICE = ("kdist", "lid", "slof", "dao")


def device_part_scores(raw: Any, spec: PartSpec, plan: ReferencePlan, cfg: ScanConfig, names: list[str],
                       available: set[str], *, describe_row: Callable[[int], str] | None = None
                       ) -> PartResult | None:
    """The map of a ``"batch"`` part entirely on a GPU, or None where that path does not apply.

    It applies when the device is a GPU, the reference is ``"batch"``, every row-local score of
    the scan is one of kdist, LID, SLOF, DAO (default parameters) and the reduce reads no
    neighbour rows (:func:`reduce_needs`): then the part's RAW rows ``raw`` (n_j, d) are
    uploaded, normalised and scored on the device
    (:func:`~clipguard.detect.detectors.device_batch.batch_scores_on_device`) and only the
    (n_j,) scores come back (float64, equal to the CPU map's to ~1e-6 relative).
    """
    if plan.mode != "batch" or resolve_device(cfg.device).type != "cuda":
        return None
    make = detector_factory(cfg)
    keys = _row_local_keys({name: make(name, {}) for name in names}, available)
    if any(params for _, params in keys) or not {c for c, _ in keys} <= set(_ROW_LOCAL_ON_DEVICE):
        return None
    if reduce_needs(names, cfg, available, "captions" in available)[2]:
        return None
    assert spec.groups is not None
    t0 = time.perf_counter()
    local = [np.arange(a, b, dtype=np.int64) for a, b in spec.groups]
    scores = batch_scores_on_device(raw, local, cfg.k, [c for c, _ in keys], device=cfg.device,
                                    describe_row=describe_row)
    return PartResult([None], [None], [scores], {"knn": 0.0, "score": time.perf_counter() - t0})


def reduce_needs(names: list[str], cfg: ScanConfig, available: set[str], has_captions: bool
                 ) -> tuple[bool, bool, bool]:
    """``(image, text, graph)``: whether the reduce must load the image / caption embeddings / the
    assembled neighbour graph (a detector it still runs, i.e. not row-local, reads them)."""
    make = detector_factory(cfg)
    remaining = []
    for name in names:
        det = make(name, {})
        remaining += [n for n in [name, *det.component_names(available)] if not DETECTORS.get(n).row_local]
    classes = [DETECTORS.get(n) for n in dict.fromkeys(remaining)]
    image = any(c.reads_embeddings for c in classes)
    text = "text" in available and any(
        any("text" in req.split("|") for req in c.requires) and not (c.name == "caption_dup" and has_captions)
        for c in classes)
    graph = any(c.uses_neighbours for c in classes)
    return image, text, graph


def draw_graph(plan: ReferencePlan, cfg: ScanConfig, n: int, refs: list[ReferenceDraw] | None, r: int,
               pieces: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]] | None) -> NeighbourGraph:
    """Draw ``r``'s neighbour graph over all ``n`` rows, as a single-process scan has it, from the
    parts' ``(rows, D, I)`` pieces (None: without neighbour rows, only its parts and info)."""
    if plan.mode == "batch":
        batches = batch_partition(n, cfg.batch_size, cfg.k, cfg.seed)
        gparts, ref = [(b, b) for b in batches], None
        info = {"mode": "batch", "batch_size": int(cfg.batch_size), "n_batches": len(batches)}
    elif refs is None:
        every = np.arange(n, dtype=np.int64)
        gparts, ref, info = [(every, every)], None, {"mode": plan.mode}
    else:
        gparts, ref, info = [(np.arange(n, dtype=np.int64), refs[r].rows)], refs[r].rows, dict(refs[r].info)
    if pieces is None:
        return NeighbourGraph(None, None, None, None, gparts, ref, info)
    D, I = np.empty((n, cfg.k), np.float32), np.empty((n, cfg.k), np.int64)
    for rows, D_p, I_p in pieces:
        D[rows], I[rows] = D_p, I_p
    return assemble_graph(D, I, gparts, ref, info)


def draw_scores(n: int, pieces: Iterable[tuple[np.ndarray, Mapping[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """``{cache key: (n,) scores}`` of one draw from the parts' ``(rows, {key: scores})`` pieces."""
    out: dict[str, np.ndarray] = {}
    for rows, scores in pieces:
        for key, v in scores.items():
            out.setdefault(key, np.empty(n, dtype=np.float64))[rows] = v
    return out


def reduce_scores(
    x: np.ndarray, plan: ReferencePlan, cfg: ScanConfig, names: list[str],
    graph_of: Callable[[int], NeighbourGraph], cache_of: Callable[[int], dict[str, np.ndarray]], *,
    text: np.ndarray | None = None, captions: np.ndarray | None = None,
    records: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The reduce of a sharded scan: every detector's (N,) scores, as a single-process scan.

    Args:
        x: (N, d) normalised image embeddings, or :func:`not_loaded` when :func:`reduce_needs`
            says no remaining detector reads them (likewise ``text``).
        graph_of: ``draw -> NeighbourGraph`` assembled from the parts
            (:func:`~clipguard.detect.reference.graph.assemble_graph`).
        cache_of: ``draw -> {cache key: (N,) scores}`` of the row-local scores of the parts.
        captions: (N,) caption keys (:func:`~clipguard.detect.detectors.caption_dup.caption_keys`).
        records: ``{input name: (N,) values}`` of the per-row records (``"dynamics"``,
            ``"stability"``; :func:`~clipguard.detect.detectors.records.join_record`), or None.

    Returns:
        ``(scores, info)`` as :func:`~clipguard.detect.engine.score_embeddings`.
    """
    make = detector_factory(cfg)
    dets = {name: make(name, {}) for name in names}
    out, ref_infos = score_draws(x, text, captions, plan, cfg, dets, make, records,
                                 graph_of=graph_of, cache_of=cache_of)
    return out, scan_info(plan, ref_infos, dets)
