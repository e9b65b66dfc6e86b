"""The one interface of every exact kNN backend, their registry, and :func:`knn_search`.

A backend answers ``search(xq, xb, k, *, exclude_self) -> (D, I)`` under cosine distance on
L2-normalised float32 rows: for every query row the ``k`` nearest reference rows, sorted by
ascending distance ``1 - <a, b>`` (clamped to ``>= 0``: rounding can make ``<a, a>`` slightly
larger than 1), ties ordered by reference index. Registered backends (:data:`NEIGHBOUR_BACKENDS`,
names as in :data:`~clipguard.detect.options.BACKENDS`):

``"blocked"`` (:mod:`~clipguard.detect.neighbours.exact`)
    torch matmuls over ``block_size x block_size`` tiles and a running ``torch.topk`` merge;
    memory ``O(block_size**2)``; a self-search multiplies only the tiles on and above the diagonal.
``"faiss"`` (:mod:`~clipguard.detect.neighbours.faiss_flat`)
    ``faiss.IndexFlatIP`` (exact inner-product search), always on the CPU.

When several reference rows tie exactly at the k-th distance, which of them is kept may differ
between backends (the distances, and therefore kdist and LID, do not).

Devices: ``device=None`` (or ``"cpu"``) runs the torch paths on the CPU; ``"cuda"``
(``"cuda:N"``) on a GPU and ``"auto"`` on the GPU when torch sees one, else the CPU
(:func:`clipguard.utils.device.resolve_device`; a GPU that is not there raises ConfigError).
Blocks are moved to the device and the results come back as NumPy arrays on the CPU.

A new backend subclasses :class:`NeighbourBackend`, registers itself with
``@NEIGHBOUR_BACKENDS.register("name")`` and is imported by ``neighbours/__init__.py``; the
name is added to ``BACKENDS`` in :mod:`clipguard.detect.options`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from clipguard.detect.options import DEFAULT_BLOCK_SIZE
from clipguard.errors import ConfigError
from clipguard.registry import Registry
from clipguard.utils.device import resolve_device
from clipguard.utils.validate import check_int

__all__ = ["NeighbourBackend", "NEIGHBOUR_BACKENDS", "knn_search", "sort_rows"]


class NeighbourBackend(ABC):
    """An exact k-nearest-neighbour search under cosine distance.

    Args:
        block_size: tile edge (rows of queries and of reference) for backends that tile.
        device: torch device for backends that run torch (a resolved ``torch.device``).
    """

    name: str = "base"

    def __init__(self, *, block_size: int = DEFAULT_BLOCK_SIZE, device: torch.device | None = None) -> None:
        self.block_size = int(block_size)
        self.device = torch.device("cpu") if device is None else device

    @abstractmethod
    def search(
        self, xq: np.ndarray, xb: np.ndarray, k: int, *, exclude_self: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest rows of ``xb`` for every row of ``xq``.

        Args:
            xq: (n_q, d) C-contiguous L2-normalised float32 queries (``n_q >= 1``).
            xb: (n_b, d) the same for the reference; ``xq is xb`` for a self-search.
            k: ``1 <= k <= n_b`` (``<= n_b - 1`` with ``exclude_self``), already checked.
            exclude_self: drop each query's own row BY INDEX (exact duplicates stay eligible).

        Returns:
            ``(D, I)``: D (n_q, k) float32 cosine distances, ascending along each row (ties by
            index); I (n_q, k) int64 row indices into ``xb``.
        """


NEIGHBOUR_BACKENDS: Registry[type[NeighbourBackend]] = Registry("kNN backend")
"""The exact kNN backends by name (filled by the backend modules, in ``neighbours/__init__`` order)."""


def sort_rows(D: np.ndarray, I: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort every row by (distance, index) so ties are ordered by reference index."""
    order = np.lexsort((I, D), axis=-1)
    return np.take_along_axis(D, order, axis=1), np.take_along_axis(I, order, axis=1)


def _check_inputs(
    xq: np.ndarray, xb: np.ndarray, k: int, exclude_self: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to C-contiguous float32; return ``(xq, xb)`` (``xb is xq`` when the
    caller passed the same array twice)."""
    check_int("k", k)
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


def knn_search(
    xq: np.ndarray,
    xb: np.ndarray,
    k: int,
    *,
    exclude_self: bool = False,
    backend: str = "blocked",
    block_size: int = DEFAULT_BLOCK_SIZE,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest reference rows of every query under cosine distance.

    Args:
        xq: (n_q, d) L2-normalised float32 queries.
        xb: (n_b, d) L2-normalised float32 reference.
        k: number of neighbours, ``1 <= k <= n_b`` (``<= n_b - 1`` with ``exclude_self``).
        exclude_self: ``xq`` is ``xb``; drop each query's own row (by index, not by distance,
            so exact duplicates of a query still count as its neighbours).
        backend: a name of :data:`NEIGHBOUR_BACKENDS`: ``"blocked"`` (torch, tiled) or
            ``"faiss"`` (``IndexFlatIP``).
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
    cls = NEIGHBOUR_BACKENDS.get(backend)  # ConfigError naming the backends
    check_int("block_size", block_size, minimum=1)
    dev = resolve_device(device)
    xq, xb = _check_inputs(xq, xb, k, exclude_self)
    k = int(k)
    if xq.shape[0] == 0:
        return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
    return cls(block_size=int(block_size), device=dev).search(xq, xb, k, exclude_self=exclude_self)
