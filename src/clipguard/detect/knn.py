"""Exact k-nearest-neighbour search under cosine distance.

All functions take L2-normalised ``float32`` embeddings and return, for every query row, the
``k`` nearest reference rows sorted by ascending cosine distance ``1 - <a, b>`` (clamped to
``>= 0``: rounding can make ``<a, a>`` slightly larger than 1).

Backends of :func:`knn_search`:

``"blocked"``
    torch matmuls over ``block_size x block_size`` tiles of (query rows x reference rows) and a
    running ``torch.topk`` merge, so memory stays ``O(block_size**2)`` and the full ``n x n``
    similarity matrix is never built.
``"faiss"``
    ``faiss.IndexFlatIP`` (exact inner-product search).

Within a row, neighbours at equal distance are ordered by reference index. When several
reference rows tie exactly at the k-th distance, which of them is kept may differ between
backends (the distances, and therefore kdist and LID, do not).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from clipguard.errors import ConfigError, EmbeddingError

BACKENDS = ("blocked", "faiss")


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
    x64 = x.astype(np.float64, copy=False)
    bad = ~np.isfinite(x64).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise EmbeddingError(
            f"{int(bad.sum())} of {len(x)} embedding rows contain NaN or inf (first: {where(first)}); "
            "re-embed those samples or drop them before scanning"
        )
    norms = np.sqrt(np.einsum("ij,ij->i", x64, x64))
    zero = norms == 0
    if zero.any():
        first = int(np.flatnonzero(zero)[0])
        raise EmbeddingError(
            f"{int(zero.sum())} of {len(x)} embedding rows are all zeros (first: {where(first)}); "
            "a zero vector has no direction, re-embed those samples or drop them"
        )
    return np.ascontiguousarray(x64 / norms[:, None], dtype=np.float32)


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
    block_size: int = 4096,
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
