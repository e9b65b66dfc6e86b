"""Which reference each sample is compared with: the modes, their sizes, and the rule of ``"auto"``.

Every density detector scores a sample by its k nearest neighbours in a *reference set*. The
modes (``reference=`` of :class:`~clipguard.detect.config.ScanConfig`, ``run_scan`` and the
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
    draws -- see :func:`clipguard.detect.engine.score_embeddings`. With one draw it equals
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

The thresholds and default sizes are in :mod:`clipguard.detect.options`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clipguard.detect.options import (
    AUTO_FLAT_MAX_PAIRS,
    AUTO_GLOBAL_MAX_N,
    DEFAULT_BATCH_SIZE,
    DEFAULT_INDEX,
    DEFAULT_K,
    DEFAULT_MULTI_REFERENCE_SIZE,
    DEFAULT_N_REFERENCES,
    DEFAULT_REFERENCE,
    DEFAULT_REFERENCE_SIZE,
    INDEXES,
    REFERENCE_MODES,
)
from clipguard.errors import ConfigError
from clipguard.utils.validate import check_choice, check_int, check_optional_int, is_int

__all__ = ["ReferencePlan", "plan_reference", "check_batch_size"]


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
        """The fields as a JSON-ready dict (what ``run.json`` records as ``reference_plan``)."""
        return dict(self.__dict__)


def check_batch_size(batch_size: Any, k: int) -> None:
    """ConfigError unless ``batch_size`` is an integer larger than ``k`` (each sample of a batch
    needs k neighbours in it)."""
    if not is_int(batch_size) or batch_size <= k:
        raise ConfigError(
            f"batch_size must be an integer larger than k={k} (each sample needs k neighbours "
            f"in its batch), got {batch_size!r}"
        )


def _check_enough_rows(n: int, k: int, mode: str) -> None:
    """ConfigError, naming k and N and the fix, unless each of ``n`` samples can have ``k`` neighbours
    among the others (``"global"``; ``"batch"``: in a batch, and the batches together hold all ``n``)."""
    if n < 2:
        raise ConfigError(f"the data has N={n} row(s) but a kNN scan needs at least 2 (and k+1 = {k + 1} for "
                          f"k={k}); scan a larger set of samples")
    if k > n - 1:
        where = "in its batch" if mode == "batch" else "among the others"
        raise ConfigError(f"k={k} neighbours per sample {where} need at least {k + 1} rows but the data has "
                          f"N={n}; use k <= {n - 1} (-k {n - 1}) or scan a larger set of samples")


def _auto_mode(n: int, reference_size: int | None, n_references: int | None) -> tuple[str, str]:
    """``(mode, reason)`` of ``"auto"`` for ``n`` samples (the rule in the module docstring)."""
    if n <= AUTO_GLOBAL_MAX_N:
        return "global", (f"auto: N={n} <= {AUTO_GLOBAL_MAX_N}, so exact kNN over all samples "
                          "(global: the best worst case across poison rates in benchmarks/results/rate_sweep.md; "
                          "if several percent of the data may be poisoned, --reference multi_reference ranks "
                          "the top better)")
    return "multi_reference", (f"auto: N={n} > {AUTO_GLOBAL_MAX_N}, so every sample is scored against "
                               f"{n_references or DEFAULT_N_REFERENCES} random references of "
                               f"M={min(n, reference_size or DEFAULT_MULTI_REFERENCE_SIZE)} samples and the "
                               "scores are averaged (few poisoned samples per reference; O(N*M*R*d))")


def plan_reference(
    n: int,
    reference: str = DEFAULT_REFERENCE,
    *,
    k: int = DEFAULT_K,
    batch_size: int = DEFAULT_BATCH_SIZE,
    reference_size: int | None = None,
    n_references: int | None = None,
    index: str = DEFAULT_INDEX,
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
    check_choice("reference mode", reference, REFERENCE_MODES)
    check_choice("index", index, INDEXES)
    check_int("k", k, minimum=1)
    check_optional_int("reference_size", reference_size, minimum=2)
    check_optional_int("n_references", n_references, minimum=1)
    requested, reason = reference, f"{reference!r} was requested"
    if reference == "auto":
        reference, reason = _auto_mode(n, reference_size, n_references)
    if reference == "batch":
        check_batch_size(batch_size, k)
    if reference in ("batch", "global"):
        _check_enough_rows(n, k, reference)
        return ReferencePlan(reference, None, None, None, requested, reason)
    default_m = DEFAULT_REFERENCE_SIZE if reference == "reference" else DEFAULT_MULTI_REFERENCE_SIZE
    m = min(n, reference_size or default_m)
    if n < 2:
        _check_enough_rows(n, k, reference)
    if k > m - 1:
        fix = "a larger reference_size" if m < n else f"scan a larger set of samples (the data has N={n})"
        raise ConfigError(
            f"k={k} needs at least {k + 1} reference rows (a reference member needs k others) but "
            f"the reference has {m}; use k <= {max(m - 1, 0)} or {fix}"
        )
    r = 1 if reference == "reference" else (n_references or DEFAULT_N_REFERENCES)
    if index == "auto":
        index = "flat" if n * m <= AUTO_FLAT_MAX_PAIRS else "ivf"
        reason += f"; index auto: {'flat (exact)' if index == 'flat' else 'ivf'} for N*M={n * m:.3g}"
    return ReferencePlan(reference, m, r, index, requested, reason)
