"""The ``"faiss"`` exact kNN backend: ``faiss.IndexFlatIP`` (exact inner-product search, CPU only)."""
from __future__ import annotations

import numpy as np

from clipguard.detect.neighbours.base import NEIGHBOUR_BACKENDS, NeighbourBackend, sort_rows

__all__ = ["FaissFlatSearch"]


@NEIGHBOUR_BACKENDS.register("faiss")
class FaissFlatSearch(NeighbourBackend):
    """Exact kNN with a ``faiss.IndexFlatIP`` over the reference (``block_size`` and ``device`` unused)."""

    def search(
        self, xq: np.ndarray, xb: np.ndarray, k: int, *, exclude_self: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:  # noqa: D102
        return _search_faiss(xq, xb, k, exclude_self)


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
    return sort_rows(D, I.astype(np.int64))
