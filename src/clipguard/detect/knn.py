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
per-batch reference). On the CPU each group's similarity matrix is built from the tiles on and
above its diagonal only (about ``512 x 512`` each; tile (j, i) is tile (i, j) transposed, so
a group of 2,048 rows costs 10 of the 16 tile products) and every row keeps its best ``k + 1``
similarities in a FAISS heap fed tile by tile. On a GPU equal-sized groups are stacked and
searched with one ``torch.bmm`` and ``torch.topk`` per stack.

Within a row, neighbours at equal distance are ordered by reference index. When several
reference rows tie exactly at the k-th distance, :func:`knn_self_groups` keeps those of lowest
index (as :func:`knn_bruteforce` does); for :func:`knn_search` which of them is kept may differ
between backends (the distances, and therefore kdist and LID, do not).

Devices: ``device=None`` (or ``"cpu"``) runs the torch paths on the CPU; ``"cuda"``
(``"cuda:N"``) on a GPU and ``"auto"`` on the GPU when torch sees one, else the CPU
(:func:`clipguard.utils.device.resolve_device`; a GPU that is not there raises ConfigError).
Blocks are moved to the device and the results come back as NumPy arrays on the CPU. The
``"faiss"`` backend always runs on the CPU.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable

import numpy as np

from clipguard.errors import ConfigError, EmbeddingError
from clipguard.utils.progress import progress_bar

if TYPE_CHECKING:
    import torch

BACKENDS = ("blocked", "faiss")
_NORMALIZE_BLOCK_VALUES = 1 << 21
"""normalize() converts at most this many values to float64 at a time (16 MiB, cache-sized)."""
_NORMALIZE_MAX_THREADS = 8
"""normalize() spreads its blocks over at most this many threads (NumPy releases the GIL)."""


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def normalize(
    x: np.ndarray, *, describe_row: Callable[[int], str] | None = None
) -> np.ndarray:
    """L2-normalise the rows of ``x``.

    Every row is divided by its norm in float64 and rounded to float32. Blocks of rows are
    processed in parallel threads, so the float64 temporaries stay small (and in cache) for
    millions of rows; the result does not depend on the block size or the thread count.

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
    step = max(1, _NORMALIZE_BLOCK_VALUES // max(1, x.shape[1]))

    def block(s: int) -> tuple[np.ndarray, np.ndarray]:
        """Normalise rows s..s+step into ``out``; return their (bad, zero) global row indices."""
        x64 = np.array(x[s:s + step], dtype=np.float64)  # a private copy, divided in place
        norms = np.sqrt(np.einsum("ij,ij->i", x64, x64))
        bad = np.zeros(len(x64), dtype=bool)
        odd = ~np.isfinite(norms)  # NaN/inf elements (or, for float64 input, an overflow)
        if odd.any():
            bad[odd] = ~np.isfinite(x64[odd]).all(axis=1)
        zero = norms == 0
        np.divide(x64, np.where(zero | bad, 1.0, norms)[:, None], out=x64)  # bad: raised below
        out[s:s + step] = x64
        return np.flatnonzero(bad) + s, np.flatnonzero(zero) + s

    starts = range(0, n, step)
    threads = min(len(starts), _cpu_count(), _NORMALIZE_MAX_THREADS)
    if threads > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as pool:
            found = list(pool.map(block, starts))
    else:
        found = [block(s) for s in starts]
    bad_idx = np.concatenate([b for b, _ in found]) if found else np.empty(0, np.int64)
    if bad_idx.size:
        raise EmbeddingError(
            f"{bad_idx.size} of {n} embedding rows contain NaN or inf (first: {where(int(bad_idx[0]))}); "
            "re-embed those samples or drop them before scanning"
        )
    zero_idx = np.concatenate([z for _, z in found]) if found else np.empty(0, np.int64)
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


def _device(device: "str | torch.device | None") -> "torch.device":
    """The torch device of ``device`` (None = CPU); ConfigError when it is not available."""
    from clipguard.utils.device import resolve_device

    return resolve_device(device)


def _search_blocked(
    xq: np.ndarray, xb: np.ndarray, k: int, exclude_self: bool, block_size: int,
    dev: "torch.device",
) -> tuple[np.ndarray, np.ndarray]:
    import torch

    q_all = torch.from_numpy(xq).to(dev)
    b_all = q_all if xb is xq else torch.from_numpy(xb).to(dev)
    nq, nb = xq.shape[0], xb.shape[0]
    D = np.empty((nq, k), dtype=np.float32)
    I = np.empty((nq, k), dtype=np.int64)
    with torch.no_grad(), progress_bar(nq, "kNN (exact)") as bar:
        for qs in range(0, nq, block_size):
            qe = min(qs + block_size, nq)
            bar.update(qe - qs)
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
                        rows = torch.arange(lo - qs, hi - qs, device=dev)
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
            D[qs:qe] = (1.0 - best_s).clamp_(min=0.0).cpu().numpy()
            I[qs:qe] = best_i.cpu().numpy()
    return _sort_rows(D, I)


def _search_blocked_symmetric(
    x: np.ndarray, k: int, exclude_self: bool, block_size: int, dev: "torch.device"
) -> tuple[np.ndarray, np.ndarray]:
    """Self-search (queries = reference) using the symmetry of the similarity matrix: tile
    (i, j) is tile (j, i) transposed, so only tiles with j >= i are multiplied (half the
    flops of a query-by-reference search); each serves the top-k of both row blocks."""
    import torch

    x_all = torch.from_numpy(x).to(dev)
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

    n_tiles = len(starts) * (len(starts) + 1) // 2
    with torch.no_grad(), progress_bar(n_tiles, "kNN (exact)", unit="tile") as bar:
        for bi, qs in enumerate(starts):
            q = x_all[qs:qs + block_size]
            for bj in range(bi, len(starts)):
                bar.update(1)
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
        D[qs:e] = (1.0 - best_s[b]).clamp_(min=0.0).cpu().numpy()
        I[qs:e] = best_i[b].cpu().numpy()
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
    device: "str | torch.device | None" = None,
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
        device: torch device of the blocked backend: None or ``"cpu"`` (default), ``"cuda"``
            / ``"cuda:N"``, or ``"auto"`` (the GPU if torch sees one). The embeddings are
            copied to the device once; the results come back to the CPU. Not used by the
            ``"faiss"`` backend (CPU only), but still checked.

    Returns:
        ``(D, I)``: D (n_q, k) float32 cosine distances ``1 - <q, b>`` (>= 0), ascending along
        each row; I (n_q, k) int64 row indices into ``xb``.

    Raises:
        ConfigError: bad ``k``, backend, block size, shapes, ``exclude_self`` with different
            arrays, or a device that is not available (e.g. ``"cuda"`` without a GPU).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown kNN backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ConfigError(f"block_size must be an integer >= 1, got {block_size!r}")
    dev = _device(device)
    xq, xb = _check_inputs(xq, xb, k, exclude_self)
    k = int(k)
    if xq.shape[0] == 0:
        return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
    if backend == "faiss":
        return _search_faiss(xq, xb, k, exclude_self)
    if xq is xb:
        return _search_blocked_symmetric(xq, k, exclude_self, int(block_size), dev)
    return _search_blocked(xq, xb, k, exclude_self, int(block_size), dev)


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


_SELF_TILE = 512
"""Tile edge of the CPU path of :func:`knn_self_groups` (a group of B rows is cut into
``round(B / 512)`` row blocks; 512 keeps a tile in cache and the matmuls near full speed)."""


def _self_topk_cpu(
    xb: "torch.Tensor", kk: int, tile: int | None = None
) -> tuple[np.ndarray, np.ndarray, Callable[["torch.Tensor"], "torch.Tensor"]]:
    """The ``kk`` largest similarities of every row of ``xb`` (B, d) with the OTHER rows.

    The rows are cut into ``p = round(B / tile)`` blocks (``tile`` default :data:`_SELF_TILE`). Row block a multiplies only its
    diagonal tile (a, a) and the panel of the blocks to its right (a, > a); the tiles left of
    the diagonal, (a, c) for c < a, are the transposes of panel tiles computed before (copied
    once, cheaply, instead of multiplied again): ``(p + 1) / (2p)`` of the flops of the full
    ``B x B`` product. Each row's similarities are fed, in ascending column order, into a FAISS
    min-heap of size ``kk`` (exact selection; the diagonal is ``-inf``, so a row never selects
    itself).

    Returns:
        ``(vals, ids, rows)``: vals (B, kk) float32 similarities, descending; ids (B, kk)
        int64 columns (local rows of ``xb``); ``rows(r)``, for a LongTensor ``r`` of rows, the
        (len(r), B) similarity rows with ``-inf`` on the row itself (the same values the heaps
        saw).
    """
    import faiss
    import torch

    n = xb.shape[0]
    p = max(1, round(n / (tile or _SELF_TILE)))
    s = -(-n // p)
    starts = list(range(0, n, s))
    vals = np.empty((n, kk), dtype=np.float32)
    ids = np.empty((n, kk), dtype=np.int64)
    heap = faiss.float_minheap_array_t()  # a min-heap per row keeps its kk LARGEST values
    heap.nh, heap.k = n, kk
    heap.val, heap.ids = faiss.swig_ptr(vals), faiss.swig_ptr(ids)
    heap.heapify()
    diag: list[torch.Tensor] = []  # (m_a, m_a) tile (a, a)
    right: list[torch.Tensor | None] = []  # (m_a, n - a1) panel right of the diagonal
    below: list[np.ndarray | None] = []  # (n - a1, m_a) = right[a].T: tiles (> a, a)
    for a, a0 in enumerate(starts):
        a1 = min(a0 + s, n)
        m = a1 - a0
        xa = xb[a0:a1]
        sd = torch.mm(xa, xa.T)
        sd.fill_diagonal_(-torch.inf)  # the row itself, by index (duplicates stay eligible)
        heap.addn(m, faiss.swig_ptr(sd.numpy()), a0, a0, m)
        diag.append(sd)
        if a1 < n:
            sr = torch.mm(xa, xb[a1:].T)
            heap.addn(n - a1, faiss.swig_ptr(sr.numpy()), a1, a0, m)
            # the same similarities seen from the rows below: columns a0..a1 of rows a1..n
            # (every later row block gets its column blocks in ascending order)
            bt = sr.T.contiguous().numpy()
            heap.addn(m, faiss.swig_ptr(bt), a0, a1, n - a1)
            right.append(sr)
            below.append(bt)
        else:
            right.append(None)
            below.append(None)
    heap.reorder()  # best first

    def rows(r: torch.Tensor) -> torch.Tensor:
        out = torch.empty((len(r), n), dtype=torch.float32)
        block = r // s
        for a in block.unique().tolist():
            sel = (block == a).nonzero().flatten()
            local = r[sel] - starts[a]  # rows within row block a
            a1 = min(starts[a] + s, n)
            for c in range(a):  # tiles (a, c): rows of the transposed panel of block c
                c1 = starts[c] + s
                t = torch.from_numpy(below[c])  # type: ignore[arg-type]
                out[sel, starts[c]:c1] = t[local + starts[a] - c1]
            out[sel, starts[a]:a1] = diag[a][local]
            if a1 < n:
                out[sel, a1:] = right[a][local]  # type: ignore[index]
        return out

    return vals, ids, rows


def _finish_topk(
    sims: "torch.Tensor",
    cols: "torch.Tensor",
    k: int,
    rows: Callable[["torch.Tensor"], "torch.Tensor"],
) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Turn the ``k + 1`` best similarities of some rows into their k nearest neighbours.

    Args:
        sims: (m, k+1) similarities of each row, descending (best first).
        cols: (m, k+1) their columns.
        k: neighbours to keep.
        rows: ``rows(r)`` gives the full (len(r), n) similarity rows of the rows ``r``, with
            ``-inf`` on the row itself.

    Returns:
        ``(D, I)``: (m, k) float32 distances ``max(1 - sim, 0)``, ascending, and their columns;
        at equal distance the lower column comes first, and a tie at the k-th distance keeps
        the lowest columns. A row whose k+1 best distances are all different is already in
        that order (its k-th distance is below the (k+1)-th, so no other column ties with it);
        a row with equal distances among them (exact duplicates, or ``1 - sim`` rounding two
        similarities to one float32) is redone from its full row with a stable sort.
    """
    import torch

    dist = (1.0 - sims).clamp_(min=0.0)
    tie = (dist[:, 1:] == dist[:, :-1]).any(dim=1)
    dist, cols = dist[:, :k].contiguous(), cols[:, :k].contiguous()
    redo = tie.nonzero().flatten()
    if len(redo):
        full = (1.0 - rows(redo)).clamp_(min=0.0)  # the row itself: 1 - (-inf) = inf, last
        ds, order = torch.sort(full, dim=1, stable=True)
        dist[redo] = ds[:, :k]
        cols[redo] = order[:, :k]
    return dist, cols


def knn_self_groups(
    x: np.ndarray,
    groups: list[np.ndarray],
    k: int,
    *,
    max_floats: int = 1 << 25,
    device: "str | torch.device | None" = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact self-excluded kNN of every row within its own group of rows.

    The result equals :func:`knn_bruteforce` with ``exclude_self=True`` run on each group
    separately, up to float32 rounding: neighbours by ascending distance, equal distances by
    row index, and a tie at the k-th distance keeps the rows of lowest index.

    On the CPU each group is searched on its own: tiles on and above the diagonal of its
    similarity matrix only (:data:`_SELF_TILE`; the tiles below are their transposes) and a
    FAISS heap per row. On a GPU equal-sized groups are stacked ``G`` at a time
    (``G * B * B <= max_floats`` similarities, 128 MiB by default) and searched with one
    ``torch.bmm`` and one ``torch.topk`` per stack. Either way a group of B rows holds about
    ``B * B`` similarities in memory at once.

    Args:
        x: (N, d) L2-normalised float32 embeddings.
        groups: int64 arrays of global row indices, each sorted ascending, that together
            partition ``range(N)``; every group needs more than ``k`` rows.
        k: neighbours per row, ``1 <= k < min(len(g) for g in groups)``.
        max_floats: memory bound of one stack of similarity matrices on a GPU, in float32
            values.
        device: None or ``"cpu"`` (default), ``"cuda"`` / ``"cuda:N"``, or ``"auto"`` (the
            GPU if torch sees one); see the module docstring.

    Returns:
        ``(D, I)``: D (N, k) float32 ascending cosine distances, I (N, k) int64 GLOBAL row
        indices (every neighbour of a row lies in that row's group; the row itself never does).

    Raises:
        ConfigError: bad ``k``, a group with ``<= k`` rows, groups that do not partition the
            rows, or a device that is not available.
    """
    import torch

    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k must be an integer >= 1, got {k!r}")
    k = int(k)
    dev = _device(device)
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
    # ascending rows: local order = global order, so ties by local column are ties by row
    groups = [np.sort(np.asarray(g, dtype=np.int64)) for g in groups]
    with torch.no_grad():
        if dev.type == "cpu":
            return _groups_cpu(x, groups, k)
        return _groups_stacked(x, groups, k, dev, max_floats)


# Both take k + 1 candidates per row: the (k+1)-th tells whether another row ties at the k-th
# distance (see _finish_topk).

def _groups_cpu(x: np.ndarray, groups: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`knn_self_groups` on the CPU: one group at a time (:func:`_self_topk_cpu`)."""
    import torch

    n = x.shape[0]
    D = np.empty((n, k), dtype=np.float32)
    I = np.empty((n, k), dtype=np.int64)
    x_all = torch.from_numpy(x)
    with progress_bar(n, "kNN (per batch)") as bar:
        for g in groups:
            xb = x_all.index_select(0, torch.from_numpy(g))
            vals, ids, rows = _self_topk_cpu(xb, k + 1)
            d, i = _finish_topk(torch.from_numpy(vals), torch.from_numpy(ids), k, rows)
            D[g] = d.numpy()
            I[g] = g[i.numpy()]  # local row j of the group is global row g[j]
            bar.update(len(g))
    return D, I


def _groups_stacked(
    x: np.ndarray, groups: list[np.ndarray], k: int, dev: "torch.device", max_floats: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`knn_self_groups` on a device (a GPU): stacks of equal-sized groups, one
    ``torch.bmm`` and one ``torch.topk`` per stack (works on the CPU too, slower)."""
    import torch

    n = x.shape[0]
    D = np.empty((n, k), dtype=np.float32)
    I = np.empty((n, k), dtype=np.int64)
    x_all = torch.from_numpy(x)
    by_size: dict[int, list[np.ndarray]] = {}
    for g in groups:
        by_size.setdefault(len(g), []).append(g)
    bar = progress_bar(n, "kNN (per batch)")
    for b, gs in by_size.items():
        per_stack = max(1, max_floats // (b * b))
        for s in range(0, len(gs), per_stack):
            idx = np.stack(gs[s:s + per_stack])  # (G, B) global rows
            bar.update(idx.size)
            flat = idx.reshape(-1)
            xb = x_all.index_select(0, torch.from_numpy(flat)).to(dev).view(len(idx), b, -1)
            sim = torch.bmm(xb, xb.transpose(1, 2))  # (G, B, B)
            sim.diagonal(dim1=1, dim2=2).fill_(-torch.inf)  # self, by index
            rows_sim = sim.view(-1, b)  # row r of the stack: group r // B, local row r % B
            ts, ti = torch.topk(rows_sim, k + 1, dim=1, largest=True, sorted=True)
            d, i = _finish_topk(ts, ti, k, lambda r: rows_sim[r])
            del sim, rows_sim
            D[flat] = d.cpu().numpy()
            # local column j of group g is global row idx[g, j]
            I[flat] = idx[np.repeat(np.arange(len(idx)), b)[:, None], i.cpu().numpy()]
    bar.close()
    return D, I
