"""Exact k-nearest-neighbour search under cosine distance.

All functions take L2-normalised ``float32`` embeddings and return, for every query row, the
``k`` nearest reference rows sorted by ascending cosine distance ``1 - <a, b>`` (clamped to
``>= 0``: rounding can make ``<a, a>`` slightly larger than 1).

Backends of :func:`knn_search`:

``"blocked"``
    torch matmuls over ``block_size x block_size`` tiles of (query rows x reference rows) and a
    running ``torch.topk`` merge, so memory stays ``O(block_size**2)`` and the full ``n x n``
    similarity matrix is never built. When the queries ARE the reference (the same array
    object, as in a global self-search) only the tiles on and above the diagonal are
    multiplied: tile (j, i) is tile (i, j) transposed, which halves the work.
``"faiss"``
    ``faiss.IndexFlatIP`` (exact inner-product search).

:func:`knn_self_groups` solves many independent self-kNN problems at once (the DAO paper's
per-batch reference): equal-sized groups are stacked and searched with one batched matmul
(``torch.bmm``) and a ``torch.topk`` per stack, instead of one call per group.

Within a row, neighbours at equal distance are ordered by reference index. When several
reference rows tie exactly at the k-th distance, which of them is kept may differ between
backends (the distances, and therefore kdist and LID, do not).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from clipguard.errors import ConfigError, EmbeddingError

BACKENDS = ("blocked", "faiss")
_NORMALIZE_BLOCK_VALUES = 1 << 24
"""normalize() converts at most this many values to float64 at a time (128 MiB)."""


def normalize(
    x: np.ndarray, *, describe_row: Callable[[int], str] | None = None
) -> np.ndarray:
    """L2-normalise the rows of ``x``.

    Args:
        x: (n, d) array of any float dtype (float16 is upcast).
        describe_row: optional ``row -> text`` used in error messages to say where a bad row
            comes from (e.g. its shard file); defaults to ``"row {i}"``.

    Returns:
        (n, d) C-contiguous float32 array whose rows have unit L2 norm.

    Raises:
        EmbeddingError: ``x`` is not 2-D, or some rows hold NaN/inf, or some rows have zero norm.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise EmbeddingError(
            f"embeddings must be a 2-D array (rows x dimensions), got shape {x.shape}; "
            "reshape or re-export them"
        )
    where = describe_row or (lambda i: f"row {i}")
    n = x.shape[0]
    out = np.empty(x.shape, dtype=np.float32)
    bad_rows: list[np.ndarray] = []
    zero_rows: list[np.ndarray] = []
    # blocks of rows, so the float64 temporaries stay small for millions of rows
    step = max(1, _NORMALIZE_BLOCK_VALUES // max(1, x.shape[1]))
    for s in range(0, n, step):
        x64 = np.asarray(x[s:s + step]).astype(np.float64, copy=False)
        bad = ~np.isfinite(x64).all(axis=1)
        if bad.any():
            x64 = np.where(bad[:, None], 1.0, x64)  # reported below; keeps the maths finite
        norms = np.sqrt(np.einsum("ij,ij->i", x64, x64))
        bad_rows.append(np.flatnonzero(bad) + s)
        zero = (norms == 0) & ~bad
        zero_rows.append(np.flatnonzero(zero) + s)
        out[s:s + step] = x64 / np.where(norms == 0, 1.0, norms)[:, None]
    bad_idx = np.concatenate(bad_rows) if bad_rows else np.empty(0, np.int64)
    if bad_idx.size:
        raise EmbeddingError(
            f"{bad_idx.size} of {n} embedding rows contain NaN or inf (first: {where(int(bad_idx[0]))}); "
            "re-embed those samples or drop them before scanning"
        )
    zero_idx = np.concatenate(zero_rows) if zero_rows else np.empty(0, np.int64)
    if zero_idx.size:
        raise EmbeddingError(
            f"{zero_idx.size} of {n} embedding rows are all zeros (first: {where(int(zero_idx[0]))}); "
            "a zero vector has no direction, re-embed those samples or drop them"
        )
    return out


def _check_inputs(
    xq: np.ndarray, xb: np.ndarray, k: int, exclude_self: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to C-contiguous float32; return ``(xq, xb)``."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ConfigError(f"k must be an integer >= 1, got {k!r}")
    same = xq is xb
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    xb = xq if same else np.ascontiguousarray(xb, dtype=np.float32)
    if xq.ndim != 2 or xb.ndim != 2:
        raise ConfigError(
            f"queries and reference must be 2-D arrays, got shapes {xq.shape} and {xb.shape}"
        )
    if xq.shape[1] != xb.shape[1]:
        raise ConfigError(
            f"queries have {xq.shape[1]} dimensions but the reference has {xb.shape[1]}; "
            "embed both with the same model"
        )
    if exclude_self and not same and not (xq.shape == xb.shape and np.array_equal(xq, xb)):
        raise ConfigError(
            "exclude_self=True needs the queries to be the reference itself (same rows); "
            "pass the same array twice, or use exclude_self=False"
        )
    available = xb.shape[0] - (1 if exclude_self else 0)
    if k < 1 or k > available:
        what = "other reference rows" if exclude_self else "reference rows"
        raise ConfigError(
            f"k={k} needs at least {k} {what} but there are {max(available, 0)}; "
            f"use k <= {max(available, 0)} (k >= 1) or a larger reference set"
        )
    return xq, xb


def _sort_rows(D: np.ndarray, I: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort every row by (distance, index) so ties are ordered by reference index."""
    order = np.lexsort((I, D), axis=-1)
    return np.take_along_axis(D, order, axis=1), np.take_along_axis(I, order, axis=1)


def _search_blocked(
    xq: np.ndarray, xb: np.ndarray, k: int, exclude_self: bool, block_size: int
) -> tuple[np.ndarray, np.ndarray]:
    import torch

    q_all = torch.from_numpy(xq)
    b_all = torch.from_numpy(xb)
    nq, nb = xq.shape[0], xb.shape[0]
    D = np.empty((nq, k), dtype=np.float32)
    I = np.empty((nq, k), dtype=np.int64)
    with torch.no_grad():
        for qs in range(0, nq, block_size):
            qe = min(qs + block_size, nq)
            q = q_all[qs:qe]
            best_s: torch.Tensor | None = None
            best_i: torch.Tensor | None = None
            for bs in range(0, nb, block_size):
                be = min(bs + block_size, nb)
                s = q @ b_all[bs:be].T  # (qe-qs, be-bs) similarities
                if exclude_self:
                    # Remove each query's own row BY INDEX (global row qs+r sits in column
                    # qs+r-bs of this tile), so exact duplicates stay eligible neighbours.
                    lo, hi = max(qs, bs), min(qe, be)
                    if lo < hi:
                        rows = torch.arange(lo - qs, hi - qs)
                        s[rows, rows + (qs - bs)] = -torch.inf
                kk = min(k, be - bs)
                ts, ti = torch.topk(s, kk, dim=1, largest=True, sorted=False)
                ti = ti + bs
                if best_s is None:
                    best_s, best_i = ts, ti
                else:
                    cs = torch.cat([best_s, ts], dim=1)
                    ci = torch.cat([best_i, ti], dim=1)
                    m = min(k, cs.shape[1])
                    best_s, pos = torch.topk(cs, m, dim=1, largest=True, sorted=False)
                    best_i = torch.gather(ci, 1, pos)
            assert best_s is not None and best_i is not None
            D[qs:qe] = (1.0 - best_s).clamp_(min=0.0).numpy()
            I[qs:qe] = best_i.numpy()
    return _sort_rows(D, I)


def _search_blocked_symmetric(
    x: np.ndarray, k: int, exclude_self: bool, block_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Self-search (queries = reference) using the symmetry of the similarity matrix: tile
    (i, j) is tile (j, i) transposed, so only tiles with j >= i are multiplied (half the
    flops of a query-by-reference search); each serves the top-k of both row blocks."""
    import torch

    x_all = torch.from_numpy(x)
    n = x.shape[0]
    starts = list(range(0, n, block_size))
    best_s: list[torch.Tensor | None] = [None] * len(starts)
    best_i: list[torch.Tensor | None] = [None] * len(starts)

    def merge(b: int, s: torch.Tensor, offset: int) -> None:
        ts, ti = torch.topk(s, min(k, s.shape[1]), dim=1, largest=True, sorted=False)
        ti = ti + offset
        if best_s[b] is None:
            best_s[b], best_i[b] = ts, ti
            return
        cs = torch.cat([best_s[b], ts], dim=1)
        ci = torch.cat([best_i[b], ti], dim=1)
        best_s[b], pos = torch.topk(cs, min(k, cs.shape[1]), dim=1, largest=True, sorted=False)
        best_i[b] = torch.gather(ci, 1, pos)

    with torch.no_grad():
        for bi, qs in enumerate(starts):
            q = x_all[qs:qs + block_size]
            for bj in range(bi, len(starts)):
                bs = starts[bj]
                s = q @ x_all[bs:bs + block_size].T
                if bj == bi:
                    if exclude_self:  # the query's own row, BY INDEX (duplicates stay eligible)
                        s.fill_diagonal_(-torch.inf)
                    merge(bi, s, bs)
                else:
                    merge(bi, s, bs)
                    merge(bj, s.T.contiguous(), qs)  # top-k of a contiguous copy is faster
    D = np.empty((n, k), dtype=np.float32)
    I = np.empty((n, k), dtype=np.int64)
    for b, qs in enumerate(starts):
        assert best_s[b] is not None and best_i[b] is not None
        e = min(qs + block_size, n)
        D[qs:e] = (1.0 - best_s[b]).clamp_(min=0.0).numpy()
        I[qs:e] = best_i[b].numpy()
    return _sort_rows(D, I)


def _search_faiss(
    xq: np.ndarray, xb: np.ndarray, k: int, exclude_self: bool
) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    kk = k + 1 if exclude_self else k
    S, I = index.search(xq, kk)
    if exclude_self:
        # Drop the query's own row by INDEX; when it is not among the k+1 results (it can be
        # pushed out by >= k+1 exact duplicates) drop the farthest result instead.
        keep = I != np.arange(len(xq))[:, None]
        no_self = keep.all(axis=1)
        keep[no_self, -1] = False
        S = S[keep].reshape(len(xq), k)
        I = I[keep].reshape(len(xq), k)
    D = np.maximum(1.0 - S, 0.0).astype(np.float32)
    return _sort_rows(D, I.astype(np.int64))


def knn_search(
    xq: np.ndarray,
    xb: np.ndarray,
    k: int,
    *,
    exclude_self: bool = False,
    backend: str = "blocked",
    block_size: int = 2048,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest reference rows of every query under cosine distance.

    Args:
        xq: (n_q, d) L2-normalised float32 queries.
        xb: (n_b, d) L2-normalised float32 reference.
        k: number of neighbours, ``1 <= k <= n_b`` (``<= n_b - 1`` with ``exclude_self``).
        exclude_self: ``xq`` is ``xb``; drop each query's own row (by index, not by distance,
            so exact duplicates of a query still count as its neighbours).
        backend: ``"blocked"`` (torch, tiled) or ``"faiss"`` (``IndexFlatIP``).
        block_size: tile edge of the blocked backend (rows of queries and of reference).

    Returns:
        ``(D, I)``: D (n_q, k) float32 cosine distances ``1 - <q, b>`` (>= 0), ascending along
        each row; I (n_q, k) int64 row indices into ``xb``.

    Raises:
        ConfigError: bad ``k``, backend, block size, shapes, or ``exclude_self`` with different
            arrays.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown kNN backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ConfigError(f"block_size must be an integer >= 1, got {block_size!r}")
    xq, xb = _check_inputs(xq, xb, k, exclude_self)
    k = int(k)
    if xq.shape[0] == 0:
        return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
    if backend == "faiss":
        return _search_faiss(xq, xb, k, exclude_self)
    if xq is xb:
        return _search_blocked_symmetric(xq, k, exclude_self, int(block_size))
    return _search_blocked(xq, xb, k, exclude_self, int(block_size))


def knn_bruteforce(
    xq: np.ndarray, xb: np.ndarray, k: int, *, exclude_self: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Reference implementation in NumPy float64 (full distance matrix; small inputs only).

    Returns:
        ``(D, I)``: D (n_q, k) float64 cosine distances ascending (ties by index), I (n_q, k) int64.
    """
    xq = np.asarray(xq, dtype=np.float64)
    xb = np.asarray(xb, dtype=np.float64)
    dist = np.maximum(1.0 - xq @ xb.T, 0.0)
    if exclude_self:
        np.fill_diagonal(dist, np.inf)
    I = np.argsort(dist, axis=1, kind="stable")[:, :k].astype(np.int64)
    return np.take_along_axis(dist, I, axis=1), I


def knn_self_groups(
    x: np.ndarray, groups: list[np.ndarray], k: int, *, max_floats: int = 1 << 25
) -> tuple[np.ndarray, np.ndarray]:
    """Exact self-excluded kNN of every row within its own group of rows.

    Equal-sized groups are stacked ``G`` at a time (``G * B * B <= max_floats`` similarities,
    128 MiB by default) and searched with one ``torch.bmm`` and one ``torch.topk``; the result
    equals :func:`knn_search` with ``exclude_self=True`` run on each group separately (same
    neighbour order: by distance, ties by row index).

    Args:
        x: (N, d) L2-normalised float32 embeddings.
        groups: int64 arrays of global row indices, each sorted ascending, that together
            partition ``range(N)``; every group needs more than ``k`` rows.
        k: neighbours per row, ``1 <= k < min(len(g) for g in groups)``.
        max_floats: memory bound of one stack of similarity matrices, in float32 values.

    Returns:
        ``(D, I)``: D (N, k) float32 ascending cosine distances, I (N, k) int64 GLOBAL row
        indices (every neighbour of a row lies in that row's group; the row itself never does).

    Raises:
        ConfigError: bad ``k``, a group with ``<= k`` rows, or groups that do not partition
            the rows.
    """
    import torch

    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k must be an integer >= 1, got {k!r}")
    k = int(k)
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[0]
    if sum(len(g) for g in groups) != n:
        raise ConfigError(f"groups hold {sum(len(g) for g in groups)} rows but x has {n}; "
                          "they must partition the rows")
    small = [len(g) for g in groups if len(g) <= k]
    if small:
        raise ConfigError(
            f"k={k} needs more than {k} rows in every group but one has {min(small)}; "
            "use a smaller k or larger groups"
        )
    D = np.empty((n, k), dtype=np.float32)
    I = np.empty((n, k), dtype=np.int64)
    by_size: dict[int, list[np.ndarray]] = {}
    for g in groups:
        by_size.setdefault(len(g), []).append(np.asarray(g, dtype=np.int64))
    with torch.no_grad():
        for b, gs in by_size.items():
            per_stack = max(1, max_floats // (b * b))
            for s in range(0, len(gs), per_stack):
                idx = np.stack(gs[s:s + per_stack])  # (G, B) global rows
                xb = torch.from_numpy(x[idx])  # (G, B, d)
                sim = torch.bmm(xb, xb.transpose(1, 2))  # (G, B, B)
                sim.diagonal(dim1=1, dim2=2).fill_(-torch.inf)  # self, by index
                ts, ti = torch.topk(sim, k, dim=2, largest=True, sorted=False)
                del sim
                flat = idx.reshape(-1)
                D[flat] = (1.0 - ts).clamp_(min=0.0).reshape(-1, k).numpy()
                # local column j of group g is global row idx[g, j]
                I[flat] = idx[np.arange(len(idx))[:, None, None], ti.numpy()].reshape(-1, k)
    return _sort_rows(D, I)
