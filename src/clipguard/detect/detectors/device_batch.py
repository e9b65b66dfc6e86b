"""The per-batch density scan (the DAO paper's reference) run entirely on one torch device.

:func:`batch_scores_on_device` gives the same scores as the CPU engine
(``score_embeddings(x, names, reference="batch", batch_size=B, k=k, seed=seed)``) for the
density detectors of :data:`DEVICE_BATCH_DETECTORS`, but every step runs on the device and only
the (N,) scores come back:

1. **upload**: the raw rows go to the device in chunks of about 32 MiB (through two pinned host
   buffers on a GPU, so that filling one overlaps the copy of the other; float16 rows travel
   as float16) and are L2-normalised there in float64 and rounded to float32, as
   :func:`~clipguard.detect.neighbours.normalize.normalize` does (same errors for NaN/inf and
   zero rows);
2. **kNN**: equal-sized batches are stacked ``G`` at a time (``G * B * B <= max_floats``
   similarities) and searched with one ``torch.bmm`` and one ``torch.topk(k + 1)`` per stack;
   distances are ``max(1 - sim, 0)`` in float32, the row itself is excluded by index (a
   duplicate stays eligible), and a row whose k-th and (k+1)-th distances tie is redone with
   a stable sort of its full row, so that the tie keeps the lowest row index (the neighbour
   SET of :func:`~clipguard.detect.neighbours.groups.knn_self_groups`);
3. **scores** in float64 on the device, batch by batch, with the conventions of
   :mod:`clipguard.detect.neighbours.stats` and the detector modules: kdist, LID (MLE;
   distances clamped to ``>= EPS``, :data:`~clipguard.detect.neighbours.stats.LID_MAX` when
   all k distances are equal), SLOF, DAO (log space, capped at the largest finite float64)
   and density_anomaly (robust z of ln kdist against all N kdists, after the last stack).

Matmul precision (``precision``):

* ``"fp32"`` (default): IEEE float32 products. TF32 is switched OFF for the call (and the
  caller's setting restored): TF32 rounds the inputs to 10 mantissa bits, and with its
  rounding emulated on the CPU (4,096 clustered rows, d = 48 and 256, B = 512, k = 16) the
  scores moved by up to 3e-4 (kdist), 1.8e-3 (LID) and 3e-2 (DAO) relative: outside the
  tolerance of the CPU engine, so TF32 is not allowed for plain float32 products.
* ``"tf32x3"``: each unit row is split as ``hi + lo`` (``hi`` rounded to TF32, ``lo`` the exact
  remainder) and the similarities are ``hi.hi + lo.hi + hi.lo`` in ONE ``bmm`` of depth
  ``3 d`` with TF32 switched ON for the call: three tensor-core products instead of one
  float32 product, accurate to about ``2**-21`` (float32 level: on the CPU, where it is the
  same algebra in float32 and only the summation order differs, kdist moved by 1e-6, LID by
  2e-5, DAO by 1e-4 relative). Faster where TF32 tensor cores are much faster than float32
  (A100, H100); on a CPU or an older GPU it is slower than ``"fp32"``.

Memory on the device: the normalised (N, d) float32 rows, plus per stack ``max_floats``
similarities and a few (G * B, d) (``tf32x3``: (G * B, 3 d)) input copies.

Scores are float64, higher = more suspicious, in dataset order.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from clipguard.detect.neighbours.stats import EPS, LID_MAX
from clipguard.errors import ConfigError, EmbeddingError
from clipguard.utils.device import resolve_device
from clipguard.utils.progress import progress_bar
from clipguard.utils.validate import check_choice, check_int

__all__ = ["DEVICE_BATCH_DETECTORS", "MATMUL_PRECISIONS", "DEFAULT_MAX_FLOATS", "batch_scores_on_device"]

DEVICE_BATCH_DETECTORS = ("kdist", "lid", "slof", "dao", "density_anomaly")
"""The detectors :func:`batch_scores_on_device` computes (their default parameters: these
detectors take no parameter besides the scan's k)."""

MATMUL_PRECISIONS = ("fp32", "tf32x3")
"""Matmul precisions of :func:`batch_scores_on_device` (see the module docstring)."""

DEFAULT_MAX_FLOATS = 1 << 27
"""Similarities of one stack of batches (512 MiB of float32: 32 batches of 2,048 rows)."""

_UPLOAD_VALUES = 1 << 23
"""Values per upload chunk (32 MiB of float32 rows)."""

_REDO_VALUES = 1 << 22
"""Similarities re-sorted at a time for the rows with a tie at the k-th distance."""

_LOG_FLOAT_MAX = float(np.log(np.finfo(np.float64).max))
"""Cap of DAO's log mean, as in :func:`~clipguard.detect.detectors.dao.dao`."""


# -- upload and normalisation ---------------------------------------------------------------------

def _host_chunk(x: np.ndarray, s: int, e: int, dtype: np.dtype) -> torch.Tensor:
    """Rows ``s..e`` of the host array ``x`` (maybe a read-only memory map) as a CPU tensor of
    ``dtype`` (no copy when the rows already have it)."""
    part = np.asarray(x[s:e])
    if part.dtype != dtype or not part.flags.c_contiguous:
        part = np.ascontiguousarray(part, dtype=dtype)
    with warnings.catch_warnings():  # a read-only memory map: the tensor is only read
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(part)


def _normalize_into(chunk: torch.Tensor, out: torch.Tensor, flags: torch.Tensor) -> None:
    """Normalise ``chunk`` (m, d) into ``out`` (m, d) float32 (float64 arithmetic, as
    :func:`~clipguard.detect.neighbours.normalize.normalize`); ``flags`` (m,) int8 gets 1 for a
    row with NaN/inf, 2 for a zero row, 0 otherwise."""
    x64 = chunk.to(torch.float64)
    finite = torch.isfinite(x64).all(dim=1)
    norms = torch.sqrt((x64 * x64).sum(dim=1))
    zero = norms == 0
    flags.copy_(torch.where(~finite, 1, torch.where(zero, 2, 0)).to(torch.int8))
    out.copy_(x64 / torch.where(finite & ~zero, norms, 1.0)[:, None])  # x64 may be the caller's rows


def _raise_bad_rows(flags: torch.Tensor, where: Callable[[int], str]) -> None:
    """The EmbeddingError of :func:`~clipguard.detect.neighbours.normalize.normalize` for rows
    flagged by :func:`_normalize_into` (NaN/inf first, then zero rows); nothing when none is."""
    if not len(flags) or int(flags.max()) == 0:
        return
    f = flags.cpu().numpy()
    n, bad, zero = len(f), np.flatnonzero(f == 1), np.flatnonzero(f == 2)
    if bad.size:
        raise EmbeddingError(
            f"{bad.size} of {n} embedding rows contain NaN or inf (first: {where(int(bad[0]))}); "
            "re-embed those samples or drop them before scanning")
    raise EmbeddingError(
        f"{zero.size} of {n} embedding rows are all zeros (first: {where(int(zero[0]))}); "
        "a zero vector has no direction, re-embed those samples or drop them")


def _upload_normalized(x: Any, dev: torch.device, where: Callable[[int], str]) -> torch.Tensor:
    """(N, d) float32 unit rows of ``x`` on ``dev`` (see the module docstring, step 1).

    ``x``: a NumPy array (maybe a memory map) or a torch tensor (on any device). Host rows go
    through two pinned buffers on a GPU: the host fills one while the other is copied.
    """
    if isinstance(x, torch.Tensor) and x.device.type == "cpu":
        x = x.detach()
        x = (x if x.dtype in (torch.float16, torch.float32, torch.float64) else x.to(torch.float32)).numpy()
    if not isinstance(x, torch.Tensor):
        x = np.asarray(x) if not isinstance(x, np.ndarray) else x
    if x.ndim != 2:
        raise EmbeddingError(f"embeddings must be a 2-D array (rows x dimensions), got shape "
                             f"{tuple(x.shape)}; reshape or re-export them")
    n, d = x.shape
    out = torch.empty((n, d), dtype=torch.float32, device=dev)
    flags = torch.empty(n, dtype=torch.int8, device=dev)
    host = isinstance(x, np.ndarray)
    if host:
        np_dtype = np.dtype(x.dtype) if x.dtype in (np.float16, np.float32) else np.dtype(np.float64)
        t_dtype = {np.float16: torch.float16, np.float32: torch.float32}.get(np_dtype.type, torch.float64)
    step = max(1, _UPLOAD_VALUES // max(1, d))
    pinned = host and dev.type == "cuda" and n > 0
    bufs = [torch.empty((min(step, n), d), dtype=t_dtype, pin_memory=True) for _ in range(2)] if pinned else []
    free: list[Any] = [None, None]  # the event after which each pinned buffer may be refilled
    with torch.no_grad():
        for i, s in enumerate(range(0, n, step)):
            e = min(s + step, n)
            if not host:
                chunk = x.detach()[s:e].to(dev)
            elif pinned:
                j = i % 2
                if free[j] is not None:
                    free[j].synchronize()
                buf = bufs[j][: e - s]
                buf.copy_(_host_chunk(x, s, e, np_dtype))
                chunk = buf.to(dev, non_blocking=True)
                free[j] = torch.cuda.Event()
                free[j].record(torch.cuda.current_stream(dev))
            else:
                chunk = _host_chunk(x, s, e, np_dtype).to(dev)
            _normalize_into(chunk, out[s:e], flags[s:e])
    _raise_bad_rows(flags, where)
    return out


# -- the kNN of a stack of batches ----------------------------------------------------------------

@contextlib.contextmanager
def _cuda_tf32(dev: torch.device, allow: bool) -> Iterator[None]:
    """Allow (or forbid) TF32 in CUDA float32 matmuls for the block; the caller's setting is
    restored after it. Uses the API the caller used (the legacy ``allow_tf32`` flag, or the
    per-backend ``fp32_precision`` once that is set: torch refuses a mix of the two)."""
    if dev.type != "cuda":
        yield
        return
    m = torch.backends.cuda.matmul
    try:
        prev, legacy = m.allow_tf32, True
    except RuntimeError:  # the caller set the new API
        prev, legacy = m.fp32_precision, False
    want = allow if legacy else ("tf32" if allow else "ieee")
    if prev == want:
        yield
        return
    if legacy:
        m.allow_tf32 = want
    else:
        m.fp32_precision = want
    try:
        yield
    finally:
        if legacy:
            m.allow_tf32 = prev
        else:
            m.fp32_precision = prev


def _round_tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 ``x`` rounded to TF32 (10 explicit mantissa bits, half away from zero); exact
    in a TF32 product, and ``x - result`` is exact in float32."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & -0x2000).view(torch.float32)


def _similarities(xb: torch.Tensor, precision: str) -> torch.Tensor:
    """(G, B, B) float32 dot products of the rows of each batch of ``xb`` (G, B, d)."""
    if precision == "fp32":
        return torch.bmm(xb, xb.transpose(1, 2))
    hi = _round_tf32(xb)
    lo = xb - hi
    # [hi, lo, hi] . [hi, hi, lo] = hi.hi + lo.hi + hi.lo; the dropped lo.lo is ~2**-22
    return torch.bmm(torch.cat([hi, lo, hi], dim=2), torch.cat([hi, hi, lo], dim=2).transpose(1, 2))


def _stack_neighbours(xb: torch.Tensor, k: int, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest OTHER rows of every row of each batch of ``xb`` (G, B, d).

    Returns:
        ``(dist, cols)``: (G * B, k) float32 ascending distances ``max(1 - sim, 0)`` and int64
        local columns (0..B-1 within the row's batch); row ``r`` is row ``r % B`` of batch
        ``r // B``. When the k-th and (k+1)-th distances of a row are equal its full row is
        sorted stably, so the tie keeps the lowest columns (= the lowest dataset rows, since
        each batch holds its rows in ascending order).
    """
    g, b, _ = xb.shape
    sim = _similarities(xb, precision)
    sim.diagonal(dim1=1, dim2=2).fill_(-torch.inf)  # the row itself, by index
    rows = sim.view(g * b, b)
    top, cols = torch.topk(rows, k + 1, dim=1, largest=True, sorted=True)
    dist = (1.0 - top).clamp_(min=0.0)
    redo = (dist[:, k - 1] == dist[:, k]).nonzero().flatten()
    for r in redo.split(max(1, _REDO_VALUES // b)) if len(redo) else ():
        full = (1.0 - rows[r]).clamp_(min=0.0)  # the row itself: 1 - (-inf) = inf, last
        ds, order = torch.sort(full, dim=1, stable=True)
        dist[r], cols[r] = ds[:, :k + 1], order[:, :k + 1]
    return dist[:, :k], cols[:, :k]


# -- scores -----------------------------------------------------------------------------------------

def _stack_scores(dist: torch.Tensor, cols: torch.Tensor, b: int, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """(G * B,) float64 scores of the rows of a stack from their kNN (:func:`_stack_neighbours`):
    kdist and LID as :mod:`clipguard.detect.neighbours.stats`, SLOF and DAO as their modules
    (neighbours' statistics from the same batch)."""
    k = dist.shape[1]
    D = dist.to(torch.float64)
    kd = D[:, -1]
    d = D.clamp(min=EPS)
    mean_log = torch.log(d / d[:, -1:]).mean(dim=1)  # <= 0
    lid = torch.where(mean_log < 0, -1.0 / mean_log, LID_MAX)
    out = {"kdist": kd, "lid": lid}
    if "slof" in names or "dao" in names:
        nb = torch.arange(len(D), device=D.device).div_(b, rounding_mode="floor").mul_(b)[:, None] + cols
        kq = kd.clamp(min=EPS)
        if "slof" in names:
            out["slof"] = (kq[:, None] / kq[nb]).mean(dim=1)
        if "dao" in names:
            log_k = torch.log(kq)
            z = lid[nb] * (log_k[:, None] - log_k[nb])  # (G * B, k), all finite
            m = z.max(dim=1).values
            log_mean = m + torch.log(torch.exp(z - m[:, None]).sum(dim=1)) - math.log(k)
            out["dao"] = torch.exp(log_mean.clamp_(max=_LOG_FLOAT_MAX))
    return out


def _median(v: torch.Tensor) -> float:
    """``np.median`` of a 1-D float64 tensor (the mean of the two middle values for even n)."""
    s = torch.sort(v).values
    n = len(s)
    return (float(s[(n - 1) // 2]) + float(s[n // 2])) / 2


def _density_anomaly(kdist: torch.Tensor) -> torch.Tensor:
    """``density_anomaly`` of every row from all (N,) k-distances (the batch reference is every
    row): ``|ln kdist - median| / (1.4826 * MAD)``, MAD 0 -> standard deviation, 0 -> 1."""
    log_k = torch.log(kdist.clamp(min=EPS))
    med = _median(log_k)
    dev = (log_k - med).abs()
    scale = 1.4826 * _median(dev)
    if not scale > 0:
        scale = float(torch.std(log_k, correction=0))
    if not scale > 0:
        scale = 1.0
    return dev / scale


# -- the public function ----------------------------------------------------------------------------

def _check_groups(batches: Iterable[np.ndarray], n: int, k: int) -> dict[int, list[np.ndarray]]:
    """The batches (each sorted ascending) by size; ConfigError unless they partition
    ``range(n)`` with more than ``k`` rows each."""
    groups = [np.sort(np.asarray(g, dtype=np.int64).ravel()) for g in batches]
    sizes = [len(g) for g in groups]
    if sum(sizes) != n:
        raise ConfigError(f"batches hold {sum(sizes)} rows but x has {n}; they must partition the rows "
                          "(use clipguard.detect.reference.batch_partition)")
    if any(s <= k for s in sizes):
        raise ConfigError(f"k={k} needs more than {k} rows in every batch but one has {min(sizes)}; "
                          "use a smaller k or larger batches")
    if n:
        rows = np.concatenate(groups)
        ok = rows.min() >= 0 and rows.max() < n
        if ok:
            seen = np.zeros(n, dtype=bool)
            seen[rows] = True
            ok = bool(seen.all())
        if not ok:
            raise ConfigError(f"batches must partition rows 0..{n - 1}: some row is out of range, "
                              "repeated or missing (use clipguard.detect.reference.batch_partition)")
    by_size: dict[int, list[np.ndarray]] = {}
    for g in groups:
        by_size.setdefault(len(g), []).append(g)
    return by_size


def batch_scores_on_device(
    x: Any,
    batches: Sequence[np.ndarray],
    k: int,
    detectors: Iterable[str],
    *,
    device: str | torch.device | None,
    max_floats: int = DEFAULT_MAX_FLOATS,
    precision: str = "fp32",
    describe_row: Callable[[int], str] | None = None,
) -> dict[str, np.ndarray]:
    """Per-batch density scores of every row, computed on ``device`` (see the module docstring).

    Equal, up to float32 rounding, to the CPU engine's
    ``score_embeddings(x, detectors, reference="batch", batch_size=B, k=k, seed=seed)`` when
    ``batches = batch_partition(N, B, k, seed)``.

    Args:
        x: (N, d) embeddings, NOT normalised: a NumPy array of any float dtype (float16 and
            float32 rows are uploaded as they are, others as float64; a memory map is read in
            chunks) or a torch tensor (one already on ``device`` is not copied).
        batches: int64 arrays of rows that partition ``range(N)``, each with more than ``k``
            rows (:func:`~clipguard.detect.reference.sampling.batch_partition`).
        k: neighbours per row.
        detectors: names from :data:`DEVICE_BATCH_DETECTORS`.
        device: torch device (``"cuda"``, ``"cuda:N"``, ``"cpu"``, ``"auto"``; None = CPU).
        max_floats: similarities of one stack of equal-sized batches (at least one batch).
        precision: ``"fp32"`` or ``"tf32x3"`` (:data:`MATMUL_PRECISIONS`).
        describe_row: ``row -> text`` naming a bad row in errors; default ``"row {i}"``.

    Returns:
        ``{name: (N,) float64}`` in the order asked, dataset order; higher = more suspicious.

    Raises:
        ConfigError: an unsupported detector, bad ``k`` / ``max_floats`` / ``precision``,
            batches that do not partition the rows, an unavailable device.
        EmbeddingError: ``x`` not 2-D, rows with NaN/inf, all-zero rows.
    """
    names = list(dict.fromkeys(detectors))
    unknown = [nm for nm in names if nm not in DEVICE_BATCH_DETECTORS]
    if not names or unknown:
        raise ConfigError(f"batch_scores_on_device computes {', '.join(DEVICE_BATCH_DETECTORS)}; "
                          f"got {names!r}")
    k = check_int("k", k, minimum=1)
    max_floats = check_int("max_floats", max_floats, minimum=1)
    precision = check_choice("precision", precision, MATMUL_PRECISIONS)
    dev = resolve_device(device)
    with torch.no_grad(), _cuda_tf32(dev, precision == "tf32x3"):
        xd = _upload_normalized(x, dev, describe_row or (lambda i: f"row {i}"))
        n = xd.shape[0]
        by_size = _check_groups(batches, n, k)
        keep = set(names) | ({"kdist"} if "density_anomaly" in names else set())
        out = {nm: torch.empty(n, dtype=torch.float64, device=dev) for nm in keep - {"density_anomaly"}}
        with progress_bar(n, "kNN + scores (per batch, device)") as bar:
            for b, gs in by_size.items():
                rows = torch.from_numpy(np.concatenate(gs)).to(dev)  # one upload per batch size
                per_stack = max(1, max_floats // (b * b)) * b
                for s in range(0, len(rows), per_stack):
                    idx = rows[s:s + per_stack]
                    xb = xd.index_select(0, idx).view(-1, b, xd.shape[1])
                    dist, cols = _stack_neighbours(xb, k, precision)
                    del xb
                    for nm, v in _stack_scores(dist, cols, b, names).items():
                        if nm in out:
                            out[nm].index_copy_(0, idx, v)
                    bar.update(len(idx))
        if "density_anomaly" in names:
            out["density_anomaly"] = _density_anomaly(out["kdist"]) if n else out["kdist"].clone()
        return {nm: out[nm].cpu().numpy() for nm in names}
