"""L2 normalisation of embedding rows (float64 arithmetic, float32 result), with clear errors for
NaN/inf and all-zero rows."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from clipguard.errors import EmbeddingError

__all__ = ["normalize"]

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
    x: np.ndarray, *, describe_row: Callable[[int], str] | None = None, out: np.ndarray | None = None
) -> np.ndarray:
    """L2-normalise the rows of ``x``.

    Every row is divided by its norm in float64 and rounded to float32. Blocks of rows are
    processed in parallel threads, so the float64 temporaries stay small (and in cache) for
    millions of rows; the result does not depend on the block size or the thread count.

    Args:
        x: (n, d) array of any float dtype (float16 is upcast).
        describe_row: optional ``row -> text`` used in error messages to say where a bad row
            comes from (e.g. its shard file); defaults to ``"row {i}"``.
        out: a C-contiguous float32 array of ``x``'s shape to write into, e.g. ``x`` itself (in
            place: no second (n, d) array; each block is copied before it is overwritten, so the
            values equal those of ``normalize(x)``). On an error ``out`` is left part-written.

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
    if out is None:
        out = np.empty(x.shape, dtype=np.float32)
    elif out.shape != x.shape or out.dtype != np.float32 or not out.flags.c_contiguous or not out.flags.writeable:
        raise EmbeddingError(f"normalize(out=) needs a writeable C-contiguous float32 array of shape {x.shape}, "
                             f"got {out.dtype} {out.shape}")
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
