"""kNN of every sample among the rows of one random reference (flat = exact, or IVF), self excluded.

The pieces: :class:`ReferenceSearch` holds the reference and answers exact (:meth:`~ReferenceSearch.exact`)
or IVF (:meth:`~ReferenceSearch.approx`) searches of some query rows; :func:`_tune_nprobe` doubles
``nprobe`` until a sample reaches the target recall; :func:`search_reference` streams every row
through it in chunks and measures the final recall.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np

from clipguard.detect.neighbours.base import knn_search, sort_rows
from clipguard.detect.neighbours.ivf import IVFIndex
from clipguard.detect.options import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_N_RECALL,
    DEFAULT_SEED,
    DEFAULT_TARGET_RECALL,
)
from clipguard.errors import ConfigError
from clipguard.utils.progress import progress_bar
from clipguard.utils.validate import check_choice, check_int, check_optional_int, is_int

__all__ = ["search_reference", "drop_self", "ReferenceSearch", "prepare_reference", "reference_recall"]


def drop_self(D: np.ndarray, I_local: np.ndarray, self_pos: np.ndarray, k: int):
    """From k+1 sorted results per row (D, I_local: (n, k+1), I as reference positions), drop the
    row's own reference position ``self_pos`` (-1: not a member) by index, or the farthest result
    when the row is not a reference member / was pushed out by duplicates; (n, k) each."""
    keep = I_local != self_pos[:, None]
    no_self = keep.all(axis=1)
    keep[no_self, -1] = False
    return D[keep].reshape(len(D), k), I_local[keep].reshape(len(D), k)


def _recall(I: np.ndarray, I_exact: np.ndarray) -> float:
    """Mean share of the exact k neighbours found, over rows."""
    k = I.shape[1]
    return float(np.mean([len(np.intersect1d(a, b, assume_unique=True)) for a, b in zip(I, I_exact)]) / k)


class ReferenceSearch:
    """The reference rows of ``x`` and the searches of query rows against them.

    ``exact`` and ``approx`` (rows of ``x``) and :meth:`search_queries` (given query rows) return
    ``(D, I)`` with I as POSITIONS in the reference, each query's own position dropped. Before it
    is shipped to another process, :meth:`detached` drops ``x`` (the index and the reference stay;
    an IVF index pickles through FAISS's serialisation).
    """

    def __init__(self, x: Any, ref_rows: np.ndarray, k: int, *, backend: str, block_size: int,
                 device: str | None) -> None:
        n, m = x.shape[0], len(ref_rows)
        self.x, self.k = x, k
        self.ref_rows = np.asarray(ref_rows, dtype=np.int64)
        self.xb = np.ascontiguousarray(x[ref_rows], dtype=np.float32)
        self.self_pos = np.full(n, -1, dtype=np.int64)
        self.self_pos[ref_rows] = np.arange(m)
        self.backend, self.block_size, self.device = backend, block_size, device
        self.ivf: IVFIndex | None = None
        self.fallback = 0  # rows for which IVF found fewer than k+1 candidates

    def _knn(self, xq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return knn_search(xq, self.xb, self.k + 1, backend=self.backend, block_size=self.block_size,
                          device=self.device)

    def _queries(self, rows: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
        return np.ascontiguousarray(self.x[rows], dtype=np.float32), self.self_pos[rows]

    def exact(self, rows: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
        """Exact kNN of x[rows] (self dropped), I as reference positions."""
        return self.exact_queries(*self._queries(rows))

    def exact_queries(self, xq: np.ndarray, self_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact kNN of the (n_q, d) normalised queries ``xq``; ``self_pos``: each one's own
        reference position (-1: not a member)."""
        Dc, Ic = self._knn(xq)
        return drop_self(Dc, Ic, self_pos, self.k)

    def approx(self, rows: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
        """IVF kNN of x[rows] (self dropped); rows with fewer than k+1 candidates searched exactly."""
        return self.approx_queries(*self._queries(rows))

    def approx_queries(self, xq: np.ndarray, self_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """IVF kNN of the queries ``xq`` (see :meth:`exact_queries`)."""
        assert self.ivf is not None
        S, Ic = self.ivf.search(xq, self.k + 1)
        Dc = np.maximum(1.0 - S, 0.0).astype(np.float32)
        short = (Ic < 0).any(axis=1)
        if short.any():  # IVF found fewer than k+1 candidates: search those rows exactly
            self.fallback += int(short.sum())
            Dc[short], Ic[short] = self._knn(xq[short])
        Dc, Ic = sort_rows(Dc, Ic)
        return drop_self(Dc, Ic, self_pos, self.k)

    def search(self, rows: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
        """IVF when an index was built, else exact."""
        return self.exact(rows) if self.ivf is None else self.approx(rows)

    def search_queries(self, xq: np.ndarray, self_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """IVF when an index was built, else exact, of given query rows."""
        return self.exact_queries(xq, self_pos) if self.ivf is None else self.approx_queries(xq, self_pos)

    def self_positions(self, rows: np.ndarray) -> np.ndarray:
        """The reference position of each global row of ``rows`` (-1: not a member)."""
        pos = np.searchsorted(self.ref_rows, rows)
        inside = pos < len(self.ref_rows)
        hit = np.zeros(len(rows), dtype=bool)
        hit[inside] = self.ref_rows[pos[inside]] == rows[inside]
        return np.where(hit, pos, -1)

    def detached(self) -> "ReferenceSearch":
        """This search without ``x`` and the (N,) self positions: what workers need, small."""
        out = copy.copy(self)
        out.x, out.self_pos = None, None
        return out


def _sample(n: int, n_recall: int, seed: int, tag: int) -> np.ndarray:
    """``min(n, n_recall)`` sorted random rows, seeded by ``[seed, tag]``."""
    rng = np.random.default_rng([int(seed), tag])
    return np.sort(rng.choice(n, min(n, int(n_recall)), replace=False))


def _tune_nprobe(rs: ReferenceSearch, tune: np.ndarray, target_recall: float) -> list[list[float]]:
    """Start at ``ceil(nlist / 16)`` and double ``nprobe`` until the recall@k of the rows ``tune``
    reaches ``target_recall`` (or every list is probed); the trail ``[[nprobe, recall], ...]``."""
    assert rs.ivf is not None
    _, I_exact = rs.exact(tune)
    trail = []
    rs.ivf.set_nprobe(math.ceil(rs.ivf.nlist / 16))
    while True:
        r = _recall(rs.approx(tune)[1], I_exact)
        trail.append([rs.ivf.nprobe, r])
        if r >= target_recall or rs.ivf.nprobe >= rs.ivf.nlist:
            break
        rs.ivf.set_nprobe(2 * rs.ivf.nprobe)
    return trail


def _check_arguments(n_ref: int, k: Any, index: str, chunk_size: Any, nprobe: Any, n_recall: Any) -> None:
    check_choice("index", index, ("flat", "ivf"))
    if not is_int(k) or not 1 <= k <= n_ref - 1:
        raise ConfigError(
            f"k={k!r} needs at least k+1 reference rows (a member needs k others) but the "
            f"reference has {n_ref}; use 1 <= k <= {max(n_ref - 1, 0)} or a larger reference"
        )
    check_int("chunk_size", chunk_size, minimum=1)
    check_optional_int("nprobe", nprobe, minimum=1)
    check_int("n_recall", n_recall, minimum=1)


def search_reference(
    x: np.ndarray,
    ref_rows: np.ndarray,
    k: int,
    *,
    index: str = "flat",
    nlist: int | None = None,
    nprobe: int | None = None,
    target_recall: float = DEFAULT_TARGET_RECALL,
    backend: str = "faiss",
    block_size: int = DEFAULT_BLOCK_SIZE,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    n_recall: int = DEFAULT_N_RECALL,
    seed: int = DEFAULT_SEED,
    device: str | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """kNN of every row of ``x`` among the reference rows ``ref_rows``, self excluded.

    Queries are streamed in chunks of ``chunk_size`` rows (so ``x`` may be a memory map); the
    result does not depend on the chunk size.

    Args:
        x: (N, d) L2-normalised float32 embeddings.
        ref_rows: (M,) sorted distinct global rows forming the reference, ``M >= k + 1``.
        k: neighbours per row.
        index: ``"flat"`` (exact: :func:`~clipguard.detect.neighbours.base.knn_search` with
            ``backend``) or ``"ivf"`` (``faiss.IndexIVFFlat``; rows for which IVF finds fewer
            than k+1 candidates are searched exactly).
        nlist: IVF lists (default ``4*sqrt(M)``, capped at ``M/39``).
        nprobe: IVF lists probed per query. None = tuned: starting at ``ceil(nlist/16)`` and
            doubling until the recall@k on a tuning sample of ``n_recall`` queries reaches
            ``target_recall`` (or every list is probed).
        target_recall: recall@k the tuning aims for.
        backend, block_size: exact kNN backend for the flat index and the recall check.
        device: torch device of the ``"blocked"`` backend.
        chunk_size: query rows per search call.
        n_recall: queries per sample (seeded) to tune nprobe and to measure the final recall.
        seed: seeds the IVF training sample, its k-means and the recall samples.

    Returns:
        ``(D, I, info)``: D (N, k) float32 ascending distances, I (N, k) int64 GLOBAL rows
        (members of the reference never list themselves), and ``info`` with ``index``,
        ``reference_size``, ``recall_at_k`` (1.0 for flat; for IVF measured against exact
        search on a fresh sample of ``recall_sample`` queries), and for IVF ``nlist``,
        ``nprobe``, ``nprobe_tuning`` (``[[nprobe, recall], ...]`` when tuned),
        ``ivf_exact_fallback_rows``.
    """
    x = np.asarray(x)
    ref_rows = np.asarray(ref_rows, dtype=np.int64)
    n, m = x.shape[0], len(ref_rows)
    _check_arguments(m, k, index, chunk_size, nprobe, n_recall)
    rs, info = prepare_reference(x, ref_rows, int(k), index=index, nlist=nlist, nprobe=nprobe,
                                 target_recall=target_recall, backend=backend, block_size=block_size,
                                 n_recall=n_recall, seed=seed, device=device)
    D = np.empty((n, rs.k), dtype=np.float32)
    I = np.empty((n, rs.k), dtype=np.int64)
    with progress_bar(n, "kNN (reference)") as bar:
        for s in range(0, n, chunk_size):
            rows = slice(s, min(s + chunk_size, n))
            Dc, Ic = rs.search(rows)
            D[rows], I[rows] = Dc, ref_rows[Ic]
            bar.update(rows.stop - rows.start)
    info.update(reference_recall(rs, n, n_recall, seed, I))
    if rs.ivf is not None:
        info["ivf_exact_fallback_rows"] = rs.fallback
    return D, I, info


def prepare_reference(x: Any, ref_rows: np.ndarray, k: int, *, index: str = "flat", nlist: int | None = None,
                      nprobe: int | None = None, target_recall: float = DEFAULT_TARGET_RECALL,
                      backend: str = "faiss", block_size: int = DEFAULT_BLOCK_SIZE,
                      n_recall: int = DEFAULT_N_RECALL, seed: int = DEFAULT_SEED,
                      device: str | None = None) -> tuple[ReferenceSearch, dict[str, Any]]:
    """The :class:`ReferenceSearch` of one reference (IVF built and ``nprobe`` tuned on a sample of
    rows of ``x`` when ``index="ivf"``) and its info; arguments as :func:`search_reference`.

    ``x`` needs only ``shape`` and row indexing by an array (``x[rows]`` -> normalised rows), so a
    sharded scan passes a view that reads the rows from disk."""
    rs = ReferenceSearch(x, ref_rows, int(k), backend=backend, block_size=block_size, device=device)
    info: dict[str, Any] = {"index": index, "reference_size": int(len(ref_rows))}
    if index == "ivf":
        rs.ivf = IVFIndex(rs.xb, nlist, seed)
        if nprobe is not None:
            rs.ivf.set_nprobe(nprobe)
        else:
            info["nprobe_tuning"] = _tune_nprobe(rs, _sample(x.shape[0], n_recall, seed, 11), target_recall)
            info["target_recall"] = float(target_recall)
        rs.fallback = 0
    return rs, info


def reference_recall(rs: ReferenceSearch, n: int, n_recall: int, seed: int, I: np.ndarray | None = None
                     ) -> dict[str, Any]:
    """``recall_at_k`` of the search (1.0 for flat), measured for IVF against exact search on a
    seeded sample of ``n_recall`` rows of ``rs.x``; ``I``: the GLOBAL neighbours already found
    for every row (else the sample is searched here), plus ``nlist``, ``nprobe``, ``recall_sample``."""
    if rs.ivf is None:
        return {"recall_at_k": 1.0}
    check = _sample(n, n_recall, seed, 12)
    _, I_exact = rs.exact(check)
    found = I[check] if I is not None else rs.ref_rows[rs.search(check)[1]]
    return {"nlist": rs.ivf.nlist, "nprobe": rs.ivf.nprobe,
            "recall_at_k": _recall(found, rs.ref_rows[I_exact]), "recall_sample": int(len(check))}
