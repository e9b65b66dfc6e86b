"""Many independent self-kNN problems at once: the DAO paper's per-batch reference.

:func:`knn_self_groups` gives every row its k nearest OTHER rows within its own group. On the
CPU each group's similarity matrix is built from the tiles on and above its diagonal only
(about ``512 x 512`` each; tile (j, i) is tile (i, j) transposed, so a group of 2,048 rows costs
10 of the 16 tile products) and every row keeps its best ``k + 1`` similarities in a FAISS heap
fed tile by tile. On a GPU equal-sized groups are stacked and searched with one ``torch.bmm``
and ``torch.topk`` per stack.

Within a row, neighbours at equal distance are ordered by row index, and when several rows tie
exactly at the k-th distance those of lowest index are kept (as
:func:`~clipguard.detect.neighbours.exact.knn_bruteforce` does). Devices as in
:func:`~clipguard.detect.neighbours.base.knn_search`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from clipguard.errors import ConfigError
from clipguard.utils.device import resolve_device
from clipguard.utils.progress import progress_bar
from clipguard.utils.validate import check_int

__all__ = ["knn_self_groups"]

_SELF_TILE = 512
"""Tile edge of the CPU path of :func:`knn_self_groups` (a group of B rows is cut into
``round(B / 512)`` row blocks; 512 keeps a tile in cache and the matmuls near full speed)."""


def _self_topk_cpu(
    xb: torch.Tensor, kk: int, tile: int | None = None
) -> tuple[np.ndarray, np.ndarray, Callable[[torch.Tensor], torch.Tensor]]:
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
    sims: torch.Tensor,
    cols: torch.Tensor,
    k: int,
    rows: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
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
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact self-excluded kNN of every row within its own group of rows.

    The result equals :func:`~clipguard.detect.neighbours.exact.knn_bruteforce` with ``exclude_self=True`` run on each group
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
    k = check_int("k", k, minimum=1)
    dev = resolve_device(device)
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
    x: np.ndarray, groups: list[np.ndarray], k: int, dev: torch.device, max_floats: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`knn_self_groups` on a device (a GPU): stacks of equal-sized groups, one
    ``torch.bmm`` and one ``torch.topk`` per stack (works on the CPU too, slower)."""
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
            d, i = _finish_topk(ts, ti, k, rows_sim.__getitem__)
            del sim, rows_sim
            D[flat] = d.cpu().numpy()
            # local column j of group g is global row idx[g, j]
            I[flat] = idx[np.repeat(np.arange(len(idx)), b)[:, None], i.cpu().numpy()]
    bar.close()
    return D, I
