"""``ScanConfig``: every option of a scan in one validated, immutable object.

The scan layers (:func:`~clipguard.detect.scan.run_scan`,
:meth:`~clipguard.detect.facade.Scan.find_suspects`,
:func:`~clipguard.detect.scoring.score_embeddings`, :func:`~clipguard.detect.scan.scan_dataset`)
all take a ``config`` plus keyword ``overrides`` named like its fields, resolved by
:meth:`ScanConfig.resolve`; ``dataclasses.asdict(config)`` is what ``run.json`` records.

Example:
    >>> from clipguard.detect import ScanConfig
    >>> cfg = ScanConfig(k=8, reference="batch", batch_size=512)
    >>> cfg.replace(seed=3).seed
    3
    >>> ScanConfig(k=0)
    Traceback (most recent call last):
    ...
    clipguard.errors.ConfigError: k must be an integer >= 1, got 0
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from clipguard.detect.detectors import DETECTORS
from clipguard.detect.knn import BACKENDS
from clipguard.detect.reference import INDEXES, REFERENCE_MODES
from clipguard.errors import ConfigError

DEFAULT_SUSPECT_SHARE = 0.01
"""``is_<det>_suspect`` marks the top 1% of the dataset by default (the DAO paper's filter
share for patch triggers)."""


def _is_int(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, np.integer))


def _is_real(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating))


@dataclass(frozen=True)
class ScanConfig:
    """The options of a scan (validated on construction; raises ConfigError).

    Attributes:
        k: neighbours per sample (integer >= 1).
        reference: ``"auto"``, ``"global"``, ``"batch"``, ``"reference"`` or
            ``"multi_reference"`` (:mod:`clipguard.detect.reference`).
        batch_size: batch size of ``"batch"`` mode (integer > k when that mode is requested).
        reference_size: M of the reference modes (None = the mode's default, capped at N).
        n_references: R of ``"multi_reference"`` (None = default).
        index: ``"auto"``, ``"flat"`` (exact) or ``"ivf"`` for the reference modes.
        nlist, nprobe: IVF lists / lists probed (None = default / tuned to ``target_recall``).
        target_recall: recall@k the IVF nprobe tuning aims for, in (0, 1].
        n_recall: queries sampled to tune nprobe and to measure IVF recall@k.
        seed: seed of batches, references, IVF and Isolation Forest.
        backend: exact kNN backend of global mode, ``"blocked"`` or ``"faiss"``.
        block_size: tile edge of the blocked kNN / caption comparisons.
        device: torch device of the torch kNN paths (global mode with the blocked backend,
            batch mode): None (default) or ``"cpu"``, ``"cuda"`` / ``"cuda:N"``, or ``"auto"``
            (the GPU when torch sees one, else the CPU). The FAISS indexes of the reference
            modes run on the CPU whatever it says. A GPU that is not there raises ConfigError
            here, before any work is done.
        suspect_share: share of the samples marked ``is_<det>_suspect``, in (0, 1].
        detector_params: extra constructor arguments per detector name, e.g.
            ``{"fused": {"method": "fisher"}}`` (a private copy is kept).
    """

    k: int = 16
    reference: str = "auto"
    batch_size: int = 2048
    reference_size: int | None = None
    n_references: int | None = None
    index: str = "auto"
    nlist: int | None = None
    nprobe: int | None = None
    target_recall: float = 0.95
    n_recall: int = 1000
    seed: int = 0
    backend: str = "blocked"
    block_size: int = 2048
    device: str | None = None
    suspect_share: float = DEFAULT_SUSPECT_SHARE
    detector_params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        k = self.k
        if not _is_int(k) or k < 1:
            raise ConfigError(f"k must be an integer >= 1, got {k!r}")
        if self.reference not in REFERENCE_MODES:
            raise ConfigError(f"unknown reference mode {self.reference!r}; choose one of: "
                              f"{', '.join(REFERENCE_MODES)}")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if self.reference == "batch" and self.batch_size <= k:
            raise ConfigError(f"batch_size must be an integer larger than k={k} (each sample needs "
                              f"k neighbours in its batch), got {self.batch_size!r}")
        if self.reference_size is not None and (not _is_int(self.reference_size)
                                                or self.reference_size < 2):
            raise ConfigError(f"reference_size must be an integer >= 2, got {self.reference_size!r}")
        for name in ("n_references", "nlist", "nprobe"):
            v = getattr(self, name)
            if v is not None and (not _is_int(v) or v < 1):
                raise ConfigError(f"{name} must be an integer >= 1 or None, got {v!r}")
        if self.index not in INDEXES:
            raise ConfigError(f"unknown index {self.index!r}; choose one of: {', '.join(INDEXES)}")
        if not _is_real(self.target_recall) or not 0 < self.target_recall <= 1:
            raise ConfigError(f"target_recall must lie in (0, 1], got {self.target_recall!r}")
        if not _is_int(self.n_recall) or self.n_recall < 1:
            raise ConfigError(f"n_recall must be an integer >= 1, got {self.n_recall!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown kNN backend {self.backend!r}; choose one of: "
                              f"{', '.join(BACKENDS)}")
        if not _is_int(self.block_size) or self.block_size < 1:
            raise ConfigError(f"block_size must be an integer >= 1, got {self.block_size!r}")
        if self.device is not None:
            if not isinstance(self.device, str):
                raise ConfigError("device must be None or one of 'cpu', 'cuda', 'cuda:N', "
                                  f"'auto', got {self.device!r}")
            from clipguard.utils.device import resolve_device  # imports torch: only when set

            resolve_device(self.device)  # ConfigError: unknown, or no such GPU here
        if not _is_real(self.suspect_share) or not 0 < self.suspect_share <= 1:
            raise ConfigError(f"suspect_share must lie in (0, 1], got {self.suspect_share!r}")
        params = {} if self.detector_params is None else self.detector_params
        if not isinstance(params, Mapping):
            raise ConfigError("detector_params must map detector names to dicts of constructor "
                              f"arguments, got {type(params).__name__}")
        copy = {}
        for name, p in params.items():
            DETECTORS.get(name)  # ConfigError listing the known names
            if not isinstance(p, Mapping):
                raise ConfigError(f"detector_params[{name!r}] must be a dict of constructor "
                                  f"arguments, got {type(p).__name__}")
            copy[name] = dict(p)
        object.__setattr__(self, "detector_params", copy)
        # plain Python numbers, so that asdict() is JSON-ready
        for name in ("k", "batch_size", "n_recall", "seed", "block_size", "reference_size",
                     "n_references", "nlist", "nprobe"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, int(v))
        for name in ("target_recall", "suspect_share"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The option names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **overrides: Any) -> "ScanConfig":
        """A copy with some fields changed (validated); unknown names raise ConfigError."""
        unknown = sorted(set(overrides) - set(self.field_names()))
        if unknown:
            raise ConfigError(f"unknown scan option(s) {', '.join(map(repr, unknown))}; valid "
                              f"options: {', '.join(self.field_names())}")
        return dataclasses.replace(self, **overrides) if overrides else self

    @classmethod
    def resolve(cls, config: "ScanConfig | None" = None, **overrides: Any) -> "ScanConfig":
        """``config`` (default ``ScanConfig()``) with ``overrides`` applied.

        Raises:
            ConfigError: ``config`` is not a ScanConfig, an override is not a field name, or
                the result is invalid.
        """
        if config is None:
            config = cls()
        elif not isinstance(config, cls):
            raise ConfigError(f"config must be a ScanConfig, got {type(config).__name__}")
        return config.replace(**overrides)

    def as_dict(self) -> dict[str, Any]:
        """``dataclasses.asdict(self)`` (what ``run.json`` records under ``config``)."""
        return dataclasses.asdict(self)
