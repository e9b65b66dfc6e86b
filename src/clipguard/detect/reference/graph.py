"""The neighbour graph of one reference draw: every sample's self-excluded kNN within its reference,
and the kdist / LID of the reference rows. Built once per draw and shared by every detector."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clipguard.detect.neighbours.base import knn_search
from clipguard.detect.neighbours.groups import knn_self_groups
from clipguard.detect.neighbours.stats import neighbour_stats
from clipguard.detect.options import (
    DEFAULT_BACKEND,
    DEFAULT_BATCH_SIZE,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_N_RECALL,
    DEFAULT_SEED,
    DEFAULT_TARGET_RECALL,
)
from clipguard.detect.reference.plan import ReferencePlan
from clipguard.detect.reference.sampling import batch_partition, sample_reference
from clipguard.detect.reference.search import search_reference

__all__ = ["NeighbourGraph", "build_graph", "assemble_graph"]


@dataclass
class NeighbourGraph:
    """Self-excluded kNN of every sample within its reference set (one reference draw).

    Attributes:
        D: (N, k) float32 ascending cosine distances, or None when no detector needs kNN.
        I: (N, k) int64 GLOBAL row indices of the neighbours (always reference rows).
        kdist: (N,) float64 k-distance of every reference row (NaN for rows outside the
            reference, which are never anybody's neighbour).
        lid: (N,) float64 LID, same convention.
        parts: ``[(query_rows, reference_rows), ...]``: which rows were scored against which
            reference (one part for global/reference modes, one per batch in batch mode).
        reference_rows: sorted rows of the reference in ``"reference"`` mode, None when every
            row is a reference row (global, batch).
        info: what was done (mode, sizes, index parameters, measured recall).
    """

    D: np.ndarray | None
    I: np.ndarray | None
    kdist: np.ndarray | None
    lid: np.ndarray | None
    parts: list[tuple[np.ndarray, np.ndarray]]
    reference_rows: np.ndarray | None
    info: dict[str, Any] = field(default_factory=dict)


def _stats_on(D: np.ndarray, rows: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    if rows is None:
        return neighbour_stats(D)
    kdist = np.full(n, np.nan)
    lid = np.full(n, np.nan)
    kdist[rows], lid[rows] = neighbour_stats(D[rows])
    return kdist, lid


def assemble_graph(D: np.ndarray, I: np.ndarray, parts, ref: np.ndarray | None, info: dict[str, Any]
                   ) -> NeighbourGraph:
    """The graph of the neighbours ``(D, I)`` (N, k), with the kdist/LID of the reference rows
    ``ref`` (None: every row), ``parts`` and ``info`` as in :class:`NeighbourGraph`."""
    kdist, lid = _stats_on(D, ref, D.shape[0])
    return NeighbourGraph(D, I, kdist, lid, parts, ref, info)


def build_graph(
    x: np.ndarray,
    k: int,
    plan: ReferencePlan,
    *,
    draw: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = DEFAULT_SEED,
    backend: str = DEFAULT_BACKEND,
    block_size: int = DEFAULT_BLOCK_SIZE,
    nlist: int | None = None,
    nprobe: int | None = None,
    target_recall: float = DEFAULT_TARGET_RECALL,
    n_recall: int = DEFAULT_N_RECALL,
    need_knn: bool = True,
    device: str | None = None,
) -> NeighbourGraph:
    """The neighbour graph of one reference draw of ``plan`` (draw ``r`` of multi_reference).

    Args:
        x: (N, d) L2-normalised float32 embeddings.
        k: neighbours per sample.
        plan: from :func:`~clipguard.detect.reference.plan.plan_reference` (not ``"auto"``).
        draw: which random reference (``"multi_reference"``), 0-based.
        backend, block_size: exact kNN backend of ``"global"`` mode. ``"batch"`` always uses
            :func:`~clipguard.detect.neighbours.groups.knn_self_groups` (torch) and the
            reference modes a FAISS index (``IndexFlatIP`` or ``IndexIVFFlat``).
        nlist, nprobe, target_recall, n_recall: IVF parameters
            (:func:`~clipguard.detect.reference.search.search_reference`).
        need_knn: False when no requested detector uses neighbours (only ``parts`` is filled).
        device: torch device of the torch kNN paths (``"global"`` with the blocked backend,
            ``"batch"``): None/``"cpu"``, ``"cuda"``, ``"auto"``; the FAISS indexes of the
            reference modes stay on the CPU. ConfigError when the device is not available.

    Returns:
        A :class:`NeighbourGraph`.
    """
    n = x.shape[0]
    info: dict[str, Any] = {"mode": plan.mode}
    if plan.mode == "global":
        rows = np.arange(n, dtype=np.int64)
        if not need_knn:
            return NeighbourGraph(None, None, None, None, [(rows, rows)], None, info)
        D, I = knn_search(x, x, k, exclude_self=True, backend=backend, block_size=block_size,
                          device=device)
        return assemble_graph(D, I, [(rows, rows)], None, info)
    if plan.mode == "batch":
        batches = batch_partition(n, batch_size, k, seed)
        info.update(batch_size=int(batch_size), n_batches=len(batches))
        parts = [(b, b) for b in batches]
        if not need_knn:
            return NeighbourGraph(None, None, None, None, parts, None, info)
        D, I = knn_self_groups(x, batches, k, device=device)
        return assemble_graph(D, I, parts, None, info)
    assert plan.reference_size is not None and plan.index is not None
    ref = sample_reference(n, plan.reference_size, seed, draw)
    parts = [(np.arange(n, dtype=np.int64), ref)]
    info.update(draw=draw, reference_size=int(len(ref)))
    if not need_knn:
        return NeighbourGraph(None, None, None, None, parts, ref, info)
    D, I, sinfo = search_reference(x, ref, k, index=plan.index, nlist=nlist, nprobe=nprobe,
                                   target_recall=target_recall, backend="faiss",
                                   block_size=block_size, n_recall=n_recall, seed=seed + draw,
                                   device=device)
    info.update(sinfo)
    return assemble_graph(D, I, parts, ref, info)
