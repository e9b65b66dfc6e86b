"""Reference sets: which samples each sample is compared with, and its kNN within them.

Every density detector scores a sample by its k nearest neighbours in a *reference set*. The
modes (``reference=`` of :func:`~clipguard.detect.detectors.score_all`, ``run_scan`` and the
``scan`` command):

``"global"``
    Every other sample (exact kNN, ``O(N**2 * d)``). The best neighbour estimates, but at a
    high poison rate the poisoned samples are each other's neighbours and look dense.
``"batch"``
    The DAO paper's reference: a seeded random partition into batches of ``batch_size``; each
    sample is scored against the other members of its own batch.
``"reference"``
    A fixed seeded random subset R of ``reference_size`` (M) rows. Every sample is searched
    against R; a sample that is itself in R is excluded from its own neighbours (by index),
    a sample outside R is not (it cannot match itself). Reference statistics (kdist, LID) of
    R's members come from their own self-excluded kNN in R. The search uses a FAISS flat
    index (exact) or an IVF index (``IndexIVFFlat``, ``nlist`` lists, ``nprobe`` probed;
    ``nprobe`` is tuned on a sample to reach ``target_recall`` unless given); with IVF the
    recall@k against exact search is measured on a random sample of queries.
``"multi_reference"``
    ``n_references`` (R, default 8) independent random references of size M (default 2,048;
    draw r uses seed ``[seed, r]``); every detector's SCORES (not ranks) are averaged over the
    draws -- see :func:`clipguard.detect.scoring.score_embeddings`. With one draw it equals
    ``"reference"`` exactly. Small references keep the expected number of poisoned samples in
    each reference low (the DAO paper's argument for batches), and averaging R draws removes
    most of the noise a single small reference adds.
``"auto"``
    Chosen from N by :func:`plan_reference`: N <= 100,000 -> ``"global"`` (exact kNN over all
    samples: about a minute at 100,000 x 512 on two CPU cores, seconds on a GPU); larger ->
    ``"multi_reference"`` with M = 2,048 and R = 8 (cost ``O(N*M*R*d)``), with a flat (exact)
    index while N * M <= 1e11 and IVF beyond. Evidence (``benchmarks/results/rate_sweep.md``:
    BadNets, Blended, SIG, WaNet at 0.1 % to 10 % of 20,000 pairs, 20 trained models): over the
    15 cells whose backdoor was learned, ``fused`` with the global reference had the best worst
    case of every detector x mode (min AUROC 0.971, mean 0.989); multi_reference was better at
    5-10 % (0.9996-0.9998 vs 0.9915-0.9971 for BadNets/Blended/SIG) but fell to 0.852 at 0.1 %
    (SIG) and per-batch to 0.801: the poison rate is unknown to the user, so the worst case
    decides. The choice and its reason are recorded in ``run.json`` (``reference_plan``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clipguard.detect.density import neighbour_stats
from clipguard.detect.knn import _sort_rows, knn_search, knn_self_groups
from clipguard.errors import ConfigError
from clipguard.utils.progress import progress_bar

REFERENCE_MODES = ("auto", "global", "batch", "reference", "multi_reference")
INDEXES = ("auto", "flat", "ivf")

DEFAULT_REFERENCE_SIZE = 50_000
"""Default M of ``"reference"`` (one fixed reference: large, for stable estimates)."""
DEFAULT_MULTI_REFERENCE_SIZE = 2048
"""Default M of ``"multi_reference"`` and of ``"auto"`` (small references, averaged)."""
DEFAULT_N_REFERENCES = 8
"""Default R of ``"multi_reference"``."""
AUTO_GLOBAL_MAX_N = 100_000
"""``"auto"`` uses exact global kNN up to this many samples (the module docstring says why)."""
AUTO_FLAT_MAX_PAIRS = 1e11
"""``index="auto"`` uses the exact flat index while N * M stays below this, IVF beyond."""

def _is_int(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, np.integer))


@dataclass
class ReferencePlan:
    """A resolved reference choice (what ``"auto"`` and the defaults turned into).

    Attributes:
        mode: ``"global"``, ``"batch"``, ``"reference"`` or ``"multi_reference"``.
        reference_size: M of the reference modes (``min(M, N)``), else None.
        n_references: R of ``"multi_reference"`` (1 for ``"reference"``), else None.
        index: ``"flat"`` or ``"ivf"`` for the reference modes, else None.
        requested: the mode that was asked for (e.g. ``"auto"``).
        reason: one sentence saying why this mode, for the scan report.
    """

    mode: str
    reference_size: int | None
    n_references: int | None
    index: str | None
    requested: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def plan_reference(
    n: int,
    reference: str = "auto",
    *,
    k: int = 16,
    batch_size: int = 2048,
    reference_size: int | None = None,
    n_references: int | None = None,
    index: str = "auto",
) -> ReferencePlan:
    """Resolve ``reference`` (possibly ``"auto"``) and its defaults for a set of ``n`` samples.

    Rule of ``"auto"``: ``n <= AUTO_GLOBAL_MAX_N`` (100,000) -> ``"global"`` (the most robust
    mode across poison rates, see the module docstring); otherwise ``"multi_reference"`` with
    ``M = reference_size or 2,048`` and ``R = n_references or 8``. ``index="auto"`` is
    ``"flat"`` (exact) while ``n * M <= 1e11`` and ``"ivf"`` beyond. Defaults of the explicit
    modes: ``"reference"`` M = 50,000; ``"multi_reference"`` M = 2,048, R = 8.

    Raises:
        ConfigError: unknown mode/index, or sizes that cannot give every sample k neighbours.
    """
    if reference not in REFERENCE_MODES:
        raise ConfigError(
            f"unknown reference mode {reference!r}; choose one of: {', '.join(REFERENCE_MODES)}"
        )
    if index not in INDEXES:
        raise ConfigError(f"unknown index {index!r}; choose one of: {', '.join(INDEXES)}")
    if not _is_int(k) or k < 1:
        raise ConfigError(f"k must be an integer >= 1, got {k!r}")
    if reference_size is not None and (not _is_int(reference_size) or reference_size < 2):
        raise ConfigError(f"reference_size must be an integer >= 2, got {reference_size!r}")
    if n_references is not None and (not _is_int(n_references) or n_references < 1):
        raise ConfigError(f"n_references must be an integer >= 1, got {n_references!r}")
    requested, reason = reference, f"{reference!r} was requested"
    if reference == "auto":
        if n <= AUTO_GLOBAL_MAX_N:
            reference = "global"
            reason = (f"auto: N={n} <= {AUTO_GLOBAL_MAX_N}, so exact kNN over all samples "
                      "(global: the best worst case across poison rates in benchmarks/results/rate_sweep.md; "
                      "if several percent of the data may be poisoned, --reference multi_reference ranks "
                      "the top better)")
        else:
            reference = "multi_reference"
            reason = (f"auto: N={n} > {AUTO_GLOBAL_MAX_N}, so every sample is scored against "
                      f"{n_references or DEFAULT_N_REFERENCES} random references of "
                      f"M={min(n, reference_size or DEFAULT_MULTI_REFERENCE_SIZE)} samples and the "
                      "scores are averaged (few poisoned samples per reference; O(N*M*R*d))")
    if reference == "batch":
        if not _is_int(batch_size) or batch_size <= k:
            raise ConfigError(
                f"batch_size must be an integer larger than k={k} (each sample needs k neighbours "
                f"in its batch), got {batch_size!r}"
            )
        return ReferencePlan("batch", None, None, None, requested, reason)
    if reference == "global":
        return ReferencePlan("global", None, None, None, requested, reason)
    default_m = DEFAULT_REFERENCE_SIZE if reference == "reference" else DEFAULT_MULTI_REFERENCE_SIZE
    m = min(n, reference_size or default_m)
    if k > m - 1:
        raise ConfigError(
            f"k={k} needs at least {k + 1} reference rows (a reference member needs k others) but "
            f"the reference has {m}; use k <= {max(m - 1, 0)} or a larger reference_size"
        )
    r = 1 if reference == "reference" else (n_references or DEFAULT_N_REFERENCES)
    if index == "auto":
        index = "flat" if n * m <= AUTO_FLAT_MAX_PAIRS else "ivf"
        reason += f"; index auto: {'flat (exact)' if index == 'flat' else 'ivf'} for N*M={n * m:.3g}"
    return ReferencePlan(reference, m, r, index, requested, reason)


# -- the neighbour graph -----------------------------------------------------------------------

@dataclass
class NeighbourGraph:
    """Self-excluded kNN of every sample within its reference set (one reference draw).

    Attributes:
        D: (N, k) float32 ascending cosine distances, or None when no detector needs kNN.
        I: (N, k) int64 GLOBAL row indices of the neighbours (always reference rows).
        kdist: (N,) float64 k-distance of every reference row (NaN for rows outside the
            reference, which are never anybody's neighbour).
        lid: (N,) float64 LID, same convention.
        parts: ``[(query_rows, reference_rows), ...]``: which rows were scored against which
            reference (one part for global/reference modes, one per batch in batch mode).
        reference_rows: sorted rows of the reference in ``"reference"`` mode, None when every
            row is a reference row (global, batch).
        info: what was done (mode, sizes, index parameters, measured recall).
    """

    D: np.ndarray | None
    I: np.ndarray | None
    kdist: np.ndarray | None
    lid: np.ndarray | None
    parts: list[tuple[np.ndarray, np.ndarray]]
    reference_rows: np.ndarray | None
    info: dict[str, Any] = field(default_factory=dict)


def batch_partition(n: int, batch_size: int, k: int, seed: int = 0) -> list[np.ndarray]:
    """Split rows 0..n-1 into random batches, as in the DAO paper's batched reference.

    A permutation seeded by ``seed`` is cut into consecutive batches of ``batch_size`` (the last
    one smaller); if the last batch would hold ``<= k`` rows it is merged into the previous one.
    Each batch's indices are returned sorted ascending.

    Returns:
        List of int64 index arrays that together partition ``range(n)``.
    """
    if not _is_int(batch_size) or batch_size <= k:
        raise ConfigError(
            f"batch_size must be an integer larger than k={k} (each sample needs k neighbours "
            f"in its batch), got {batch_size!r}"
        )
    perm = np.random.default_rng(seed).permutation(n)
    batches = [perm[s:s + batch_size] for s in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) <= k:
        last = batches.pop()
        batches[-1] = np.concatenate([batches[-1], last])
    return [np.sort(b).astype(np.int64) for b in batches]


def sample_reference(n: int, size: int, seed: int = 0, draw: int = 0) -> np.ndarray:
    """Seeded random reference: ``min(size, n)`` distinct rows of ``range(n)``, sorted (int64).

    Draw ``r`` of seed ``s`` uses ``np.random.default_rng([s, r])``, so ``"reference"`` (draw 0)
    and the first draw of ``"multi_reference"`` are the same rows.
    """
    size = min(int(size), n)
    if size == n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng([int(seed), int(draw)])
    return np.sort(rng.choice(n, size, replace=False)).astype(np.int64)


def _drop_self(D: np.ndarray, I_local: np.ndarray, self_pos: np.ndarray, k: int):
    """From k+1 sorted results per row, drop the row's own reference position (by index), or
    the farthest result when the row is not a reference member / was pushed out by duplicates."""
    keep = I_local != self_pos[:, None]
    no_self = keep.all(axis=1)
    keep[no_self, -1] = False
    return D[keep].reshape(len(D), k), I_local[keep].reshape(len(D), k)


def _default_nlist(m: int) -> int:
    return int(max(1, min(round(4 * math.sqrt(m)), m // 39)))


class _IVF:
    """A trained ``faiss.IndexIVFFlat`` (inner product) over the reference rows."""

    def __init__(self, xb: np.ndarray, nlist: int | None, seed: int) -> None:
        import faiss

        m, d = xb.shape
        self.nlist = int(nlist) if nlist is not None else _default_nlist(m)
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

    def set_nprobe(self, nprobe: int) -> None:
        self.nprobe = int(min(max(1, nprobe), self.nlist))
        self.index.nprobe = self.nprobe

    def search(self, xq: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        S, I = self.index.search(np.ascontiguousarray(xq, dtype=np.float32), kk)
        return S, I.astype(np.int64)


def _recall(I: np.ndarray, I_exact: np.ndarray) -> float:
    """Mean share of the exact k neighbours found, over rows."""
    k = I.shape[1]
    return float(np.mean([len(np.intersect1d(a, b, assume_unique=True)) for a, b in zip(I, I_exact)]) / k)


def search_reference(
    x: np.ndarray,
    ref_rows: np.ndarray,
    k: int,
    *,
    index: str = "flat",
    nlist: int | None = None,
    nprobe: int | None = None,
    target_recall: float = 0.95,
    backend: str = "faiss",
    block_size: int = 2048,
    chunk_size: int = 65536,
    n_recall: int = 1000,
    seed: int = 0,
    device: str | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """kNN of every row of ``x`` among the reference rows ``ref_rows``, self excluded.

    Queries are streamed in chunks of ``chunk_size`` rows (so ``x`` may be a memory map); the
    result does not depend on the chunk size.

    Args:
        x: (N, d) L2-normalised float32 embeddings.
        ref_rows: (M,) sorted distinct global rows forming the reference, ``M >= k + 1``.
        k: neighbours per row.
        index: ``"flat"`` (exact: :func:`knn_search` with ``backend``) or ``"ivf"``
            (``faiss.IndexIVFFlat``; rows for which IVF finds fewer than k+1 candidates are
            searched exactly).
        nlist: IVF lists (default ``4*sqrt(M)``, capped at ``M/39``).
        nprobe: IVF lists probed per query. None = tuned: starting at ``ceil(nlist/16)`` and
            doubling until the recall@k on a tuning sample of ``n_recall`` queries reaches
            ``target_recall`` (or every list is probed).
        target_recall: recall@k the tuning aims for.
        backend, block_size: exact kNN backend for the flat index and the recall check.
        device: torch device of the ``"blocked"`` backend (:func:`knn_search`).
        chunk_size: query rows per search call.
        n_recall: queries per sample (seeded) to tune nprobe and to measure the final recall.
        seed: seeds the IVF training sample, its k-means and the recall samples.

    Returns:
        ``(D, I, info)``: D (N, k) float32 ascending distances, I (N, k) int64 GLOBAL rows
        (members of the reference never list themselves), and ``info`` with ``index``,
        ``reference_size``, ``recall_at_k`` (1.0 for flat; for IVF measured against exact
        search on a fresh sample of ``recall_sample`` queries), and for IVF ``nlist``,
        ``nprobe``, ``nprobe_tuning`` (``[[nprobe, recall], ...]`` when tuned),
        ``ivf_exact_fallback_rows``.
    """
    x = np.asarray(x)
    ref_rows = np.asarray(ref_rows, dtype=np.int64)
    n, m = x.shape[0], len(ref_rows)
    if index not in ("flat", "ivf"):
        raise ConfigError(f"unknown index {index!r}; choose 'flat' or 'ivf'")
    if not _is_int(k) or not 1 <= k <= m - 1:
        raise ConfigError(
            f"k={k!r} needs at least k+1 reference rows (a member needs k others) but the "
            f"reference has {m}; use 1 <= k <= {max(m - 1, 0)} or a larger reference"
        )
    if not _is_int(chunk_size) or chunk_size < 1:
        raise ConfigError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    if nprobe is not None and (not _is_int(nprobe) or nprobe < 1):
        raise ConfigError(f"nprobe must be an integer >= 1, got {nprobe!r}")
    if not _is_int(n_recall) or n_recall < 1:
        raise ConfigError(f"n_recall must be an integer >= 1, got {n_recall!r}")
    k = int(k)
    xb = np.ascontiguousarray(x[ref_rows], dtype=np.float32)
    self_pos = np.full(n, -1, dtype=np.int64)
    self_pos[ref_rows] = np.arange(m)
    info: dict[str, Any] = {"index": index, "reference_size": m}

    def exact(rows: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
        """Exact kNN of x[rows] (self dropped), I as reference positions."""
        xq = np.ascontiguousarray(x[rows], dtype=np.float32)
        Dc, Ic = knn_search(xq, xb, k + 1, backend=backend, block_size=block_size,
                            device=device)
        return _drop_self(Dc, Ic, self_pos[rows], k)

    ivf = _IVF(xb, nlist, seed) if index == "ivf" else None
    fallback = 0

    def approx(rows: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
        nonlocal fallback
        assert ivf is not None
        xq = np.ascontiguousarray(x[rows], dtype=np.float32)
        S, Ic = ivf.search(xq, k + 1)
        Dc = np.maximum(1.0 - S, 0.0).astype(np.float32)
        short = (Ic < 0).any(axis=1)
        if short.any():  # IVF found fewer than k+1 candidates: search those rows exactly
            fallback += int(short.sum())
            Dc[short], Ic[short] = knn_search(xq[short], xb, k + 1, backend=backend,
                                              block_size=block_size, device=device)
        Dc, Ic = _sort_rows(Dc, Ic)
        return _drop_self(Dc, Ic, self_pos[rows], k)

    def sample(tag: int) -> np.ndarray:
        rng = np.random.default_rng([int(seed), tag])
        return np.sort(rng.choice(n, min(n, int(n_recall)), replace=False))

    if ivf is not None:
        if nprobe is not None:
            ivf.set_nprobe(nprobe)
        else:
            tune = sample(11)
            _, I_exact = exact(tune)
            trail = []
            ivf.set_nprobe(math.ceil(ivf.nlist / 16))
            while True:
                r = _recall(approx(tune)[1], I_exact)
                trail.append([ivf.nprobe, r])
                if r >= target_recall or ivf.nprobe >= ivf.nlist:
                    break
                ivf.set_nprobe(2 * ivf.nprobe)
            info["nprobe_tuning"] = trail
            info["target_recall"] = float(target_recall)
        fallback = 0

    D = np.empty((n, k), dtype=np.float32)
    I = np.empty((n, k), dtype=np.int64)
    with progress_bar(n, "kNN (reference)") as bar:
        for s in range(0, n, chunk_size):
            rows = slice(s, min(s + chunk_size, n))
            Dc, Ic = exact(rows) if ivf is None else approx(rows)
            D[rows], I[rows] = Dc, ref_rows[Ic]
            bar.update(rows.stop - rows.start)

    if ivf is None:
        info["recall_at_k"] = 1.0
        return D, I, info
    check = sample(12)
    _, I_exact = exact(check)
    info.update(nlist=ivf.nlist, nprobe=ivf.nprobe,
                recall_at_k=_recall(I[check], ref_rows[I_exact]),
                recall_sample=int(len(check)), ivf_exact_fallback_rows=fallback)
    return D, I, info


def _stats_on(D: np.ndarray, rows: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    if rows is None:
        return neighbour_stats(D)
    kdist = np.full(n, np.nan)
    lid = np.full(n, np.nan)
    kdist[rows], lid[rows] = neighbour_stats(D[rows])
    return kdist, lid


def build_graph(
    x: np.ndarray,
    k: int,
    plan: ReferencePlan,
    *,
    draw: int = 0,
    batch_size: int = 2048,
    seed: int = 0,
    backend: str = "blocked",
    block_size: int = 2048,
    nlist: int | None = None,
    nprobe: int | None = None,
    target_recall: float = 0.95,
    n_recall: int = 1000,
    need_knn: bool = True,
    device: str | None = None,
) -> NeighbourGraph:
    """The neighbour graph of one reference draw of ``plan`` (draw ``r`` of multi_reference).

    Args:
        x: (N, d) L2-normalised float32 embeddings.
        k: neighbours per sample.
        plan: from :func:`plan_reference` (not ``"auto"``).
        draw: which random reference (``"multi_reference"``), 0-based.
        backend, block_size: exact kNN backend of ``"global"`` mode. ``"batch"`` always uses
            :func:`~clipguard.detect.knn.knn_self_groups` (torch) and the reference modes a
            FAISS index (``IndexFlatIP`` or ``IndexIVFFlat``).
        nlist, nprobe, target_recall, n_recall: IVF parameters (:func:`search_reference`).
        need_knn: False when no requested detector uses neighbours (only ``parts`` is filled).
        device: torch device of the torch kNN paths (``"global"`` with the blocked backend,
            ``"batch"``): None/``"cpu"``, ``"cuda"``, ``"auto"``; the FAISS indexes of the
            reference modes stay on the CPU. ConfigError when the device is not available.

    Returns:
        A :class:`NeighbourGraph`.
    """
    n = x.shape[0]
    info: dict[str, Any] = {"mode": plan.mode}
    if plan.mode == "global":
        rows = np.arange(n, dtype=np.int64)
        if not need_knn:
            return NeighbourGraph(None, None, None, None, [(rows, rows)], None, info)
        D, I = knn_search(x, x, k, exclude_self=True, backend=backend, block_size=block_size,
                          device=device)
        kdist, lid = neighbour_stats(D)
        return NeighbourGraph(D, I, kdist, lid, [(rows, rows)], None, info)
    if plan.mode == "batch":
        batches = batch_partition(n, batch_size, k, seed)
        info.update(batch_size=int(batch_size), n_batches=len(batches))
        parts = [(b, b) for b in batches]
        if not need_knn:
            return NeighbourGraph(None, None, None, None, parts, None, info)
        D, I = knn_self_groups(x, batches, k, device=device)
        kdist, lid = neighbour_stats(D)
        return NeighbourGraph(D, I, kdist, lid, parts, None, info)
    assert plan.reference_size is not None and plan.index is not None
    ref = sample_reference(n, plan.reference_size, seed, draw)
    parts = [(np.arange(n, dtype=np.int64), ref)]
    info.update(draw=draw, reference_size=int(len(ref)))
    if not need_knn:
        return NeighbourGraph(None, None, None, None, parts, ref, info)
    D, I, sinfo = search_reference(x, ref, k, index=plan.index, nlist=nlist, nprobe=nprobe,
                                   target_recall=target_recall, backend="faiss",
                                   block_size=block_size, n_recall=n_recall, seed=seed + draw,
                                   device=device)
    info.update(sinfo)
    kdist, lid = _stats_on(D, ref, n)
    return NeighbourGraph(D, I, kdist, lid, parts, ref, info)
