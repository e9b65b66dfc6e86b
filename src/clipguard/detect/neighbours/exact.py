"""The ``"blocked"`` exact kNN backend (tiled torch matmuls) and the float64 brute force that
every backend is tested against.

``"blocked"`` runs torch matmuls over ``block_size x block_size`` tiles of (query rows x
reference rows) and a running ``torch.topk`` merge, so memory stays ``O(block_size**2)`` and
the full ``n x n`` similarity matrix is never built. When the queries ARE the reference (the
same array object, as in a global self-search) only the tiles on and above the diagonal are
multiplied: tile (j, i) is tile (i, j) transposed, which halves the work.
"""
from __future__ import annotations

import numpy as np
import torch

from clipguard.detect.neighbours.base import NEIGHBOUR_BACKENDS, NeighbourBackend, sort_rows
from clipguard.utils.progress import progress_bar

__all__ = ["BlockedSearch", "knn_bruteforce"]


@NEIGHBOUR_BACKENDS.register("blocked")
class BlockedSearch(NeighbourBackend):
    """Exact kNN by tiled torch matmuls on ``device`` (tiles of ``block_size`` rows)."""

    def search(
        self, xq: np.ndarray, xb: np.ndarray, k: int, *, exclude_self: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:  # noqa: D102
        if xq is xb:
            return _search_blocked_symmetric(xq, k, exclude_self, self.block_size, self.device)
        return _search_blocked(xq, xb, k, exclude_self, self.block_size, self.device)


def _search_blocked(
    xq: np.ndarray, xb: np.ndarray, k: int, exclude_self: bool, block_size: int,
    dev: torch.device,
) -> tuple[np.ndarray, np.ndarray]:
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
    return sort_rows(D, I)


def _search_blocked_symmetric(
    x: np.ndarray, k: int, exclude_self: bool, block_size: int, dev: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Self-search (queries = reference) using the symmetry of the similarity matrix: tile
    (i, j) is tile (j, i) transposed, so only tiles with j >= i are multiplied (half the
    flops of a query-by-reference search); each serves the top-k of both row blocks."""
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
    return sort_rows(D, I)


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
