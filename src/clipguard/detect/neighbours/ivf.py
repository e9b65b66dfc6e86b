"""An approximate inner-product index over a reference set: ``faiss.IndexIVFFlat``.

Used by the reference modes (:func:`~clipguard.detect.reference.search.search_reference`) when the
reference is too large for exact search; how many lists are probed (``nprobe``) is tuned there
against exact search.
"""
from __future__ import annotations

import math

import numpy as np

from clipguard.errors import ConfigError

__all__ = ["IVFIndex", "default_nlist"]


def default_nlist(m: int) -> int:
    """IVF lists for a reference of ``m`` rows: ``4 * sqrt(m)``, capped at ``m / 39`` (>= 1)."""
    return int(max(1, min(round(4 * math.sqrt(m)), m // 39)))


class IVFIndex:
    """A trained ``faiss.IndexIVFFlat`` (inner product) over the reference rows.

    Args:
        xb: (M, d) L2-normalised float32 reference.
        nlist: lists (None = :func:`default_nlist`); must lie in ``[1, M]``.
        seed: seeds the training sample (``min(M, 256 * nlist)`` rows) and FAISS's k-means.

    Attributes:
        nlist: lists of the index.
        nprobe: lists probed per query (1 until :meth:`set_nprobe`).
    """

    def __init__(self, xb: np.ndarray, nlist: int | None, seed: int) -> None:
        import faiss

        m, d = xb.shape
        self.nlist = int(nlist) if nlist is not None else default_nlist(m)
        if not 1 <= self.nlist <= m:
            raise ConfigError(f"nlist must lie in [1, {m}] (the reference size), got {nlist!r}")
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, self.nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = int(seed)
        rng = np.random.default_rng([int(seed), 7])
        n_train = min(m, 256 * self.nlist)
        xt = xb if n_train == m else np.ascontiguousarray(xb[np.sort(rng.choice(m, n_train, replace=False))])
        index.train(xt)
        index.add(xb)
        self.index, self.quantizer = index, quantizer  # keep the quantizer alive
        self.nprobe = 1

    def __getstate__(self) -> dict:
        import faiss

        return {"nlist": self.nlist, "nprobe": self.nprobe, "index": faiss.serialize_index(self.index)}

    def __setstate__(self, state: dict) -> None:
        """Rebuilt from FAISS's serialisation (a sharded scan ships the index to its workers)."""
        import faiss

        self.nlist = state["nlist"]
        self.index = faiss.deserialize_index(state["index"])
        self.quantizer = None  # owned by the deserialised index
        self.set_nprobe(state["nprobe"])

    def set_nprobe(self, nprobe: int) -> None:
        """Probe ``nprobe`` lists per query (clipped to ``[1, nlist]``)."""
        self.nprobe = int(min(max(1, nprobe), self.nlist))
        self.index.nprobe = self.nprobe

    def search(self, xq: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        """``(S, I)``: (n_q, kk) float32 inner products, descending, and int64 reference rows
        (-1 where fewer than ``kk`` candidates were found in the probed lists)."""
        S, I = self.index.search(np.ascontiguousarray(xq, dtype=np.float32), kk)
        return S, I.astype(np.int64)
