"""``ScanConfig``: every option of a scan in one validated, immutable object.

The scan layers (:func:`~clipguard.detect.api.run_scan`,
:meth:`~clipguard.detect.facade.Scan.find_suspects`,
:func:`~clipguard.detect.engine.score_embeddings`) all take a ``config`` plus keyword
``overrides`` named like its fields, resolved by :meth:`ScanConfig.resolve`;
``dataclasses.asdict(config)`` is what ``run.json`` records. The defaults come from
:mod:`clipguard.detect.options` (the device default from :mod:`clipguard.utils.device`).

Example:
    >>> from clipguard.detect import ScanConfig
    >>> cfg = ScanConfig(k=8, reference="batch", batch_size=512)
    >>> cfg.replace(seed=3).seed
    3
    >>> ScanConfig(k=0)
    Traceback (most recent call last):
    ...
    clipguard.errors.ConfigError: k must be an integer >= 1, got 0
    >>> ScanConfig(detector_params={"fused": {"methd": "rank"}})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    clipguard.errors.ConfigError: unknown parameter of detector 'fused' 'methd'; valid: ...
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from clipguard.detect.detectors.registry import check_detector_params
from clipguard.detect.options import (  # noqa: F401  (BACKENDS, INDEXES: also read from here)
    BACKENDS,
    DEFAULT_BACKEND,
    DEFAULT_BATCH_SIZE,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_INDEX,
    DEFAULT_K,
    DEFAULT_N_RECALL,
    DEFAULT_REFERENCE,
    DEFAULT_SEED,
    DEFAULT_SUSPECT_SHARE,
    DEFAULT_TARGET_RECALL,
    INDEXES,
    REFERENCE_MODES,
)
from clipguard.detect.reference.plan import check_batch_size
from clipguard.errors import ConfigError
from clipguard.utils.device import DEFAULT_DEVICE, resolve_device
from clipguard.utils.validate import check_choice, check_int, check_optional_int, check_real

__all__ = ["ScanConfig"]


def _json_ready(value: Any) -> Any:
    """Tuples as lists, mappings as dicts, recursively (what a JSON round trip gives back)."""
    if isinstance(value, Mapping):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_json_ready(v) for v in value]
    return value


def _check_share(name: str, value: Any) -> float:
    return check_real(name, value, low=0, high=1, low_open=True)


@dataclass(frozen=True)
class ScanConfig:
    """The options of a scan (validated on construction; raises ConfigError).

    Attributes:
        k: neighbours per sample (integer >= 1).
        reference: ``"auto"``, ``"global"``, ``"batch"``, ``"reference"`` or
            ``"multi_reference"`` (:mod:`clipguard.detect.reference.plan`).
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
            batch mode): ``"auto"`` (default: the GPU when torch sees one, else the CPU),
            ``"cpu"`` (or None), ``"cuda"`` / ``"cuda:N"``. The FAISS indexes of the reference
            modes run on the CPU whatever it says. A GPU that is not there raises ConfigError
            here, before any work is done.
        suspect_share: share of the samples marked ``is_<det>_suspect``, in (0, 1].
        detector_params: constructor parameters per detector name, e.g.
            ``{"fused": {"method": "fisher"}}`` or ``{"fused": {"caption_dup__threshold": 0.95}}``.
            STRICT: an unknown detector, or a parameter its constructor does not take, raises
            a ConfigError naming the valid ones. A private, JSON-ready copy is kept (tuples
            become lists). The parameters of a detector also apply where it is a component of
            ``fused``.
    """

    k: int = DEFAULT_K
    reference: str = DEFAULT_REFERENCE
    batch_size: int = DEFAULT_BATCH_SIZE
    reference_size: int | None = None
    n_references: int | None = None
    index: str = DEFAULT_INDEX
    nlist: int | None = None
    nprobe: int | None = None
    target_recall: float = DEFAULT_TARGET_RECALL
    n_recall: int = DEFAULT_N_RECALL
    seed: int = DEFAULT_SEED
    backend: str = DEFAULT_BACKEND
    block_size: int = DEFAULT_BLOCK_SIZE
    device: str | None = DEFAULT_DEVICE
    suspect_share: float = DEFAULT_SUSPECT_SHARE
    detector_params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_sizes()
        check_choice("index", self.index, INDEXES)
        _check_share("target_recall", self.target_recall)
        check_int("n_recall", self.n_recall, minimum=1)
        check_int("seed", self.seed, minimum=0)
        check_choice("kNN backend", self.backend, BACKENDS)
        check_int("block_size", self.block_size, minimum=1)
        if self.device is not None:
            if not isinstance(self.device, str):
                raise ConfigError("device must be None or one of 'cpu', 'cuda', 'cuda:N', "
                                  f"'auto', got {self.device!r}")
            resolve_device(self.device)  # ConfigError: unknown, or no such GPU here
        _check_share("suspect_share", self.suspect_share)
        object.__setattr__(self, "detector_params", self._checked_params())
        # plain Python numbers, so that asdict() is JSON-ready
        for name in ("k", "batch_size", "n_recall", "seed", "block_size", "reference_size",
                     "n_references", "nlist", "nprobe"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, int(v))
        for name in ("target_recall", "suspect_share"):
            object.__setattr__(self, name, float(getattr(self, name)))

    def _check_sizes(self) -> None:
        check_int("k", self.k, minimum=1)
        check_choice("reference mode", self.reference, REFERENCE_MODES)
        check_int("batch_size", self.batch_size, minimum=1)
        if self.reference == "batch":
            check_batch_size(self.batch_size, self.k)
        check_optional_int("reference_size", self.reference_size, minimum=2)
        for name in ("n_references", "nlist", "nprobe"):
            check_optional_int(name, getattr(self, name), minimum=1)

    def _checked_params(self) -> dict[str, dict[str, Any]]:
        """A JSON-ready copy of ``detector_params``, every detector and parameter name checked."""
        params = {} if self.detector_params is None else self.detector_params
        if not isinstance(params, Mapping):
            raise ConfigError("detector_params must map detector names to dicts of constructor "
                              f"arguments, got {type(params).__name__}")
        return {name: _json_ready(check_detector_params(name, p)) for name, p in params.items()}

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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ScanConfig":
        """The config recorded in a ``run.json`` (its ``config``): the field names are read, other
        keys (``emb_dir``, ``out_dir``, ``detectors``) ignored."""
        return cls(**{name: data[name] for name in cls.field_names() if name in data})

    def as_dict(self) -> dict[str, Any]:
        """``dataclasses.asdict(self)`` (what ``run.json`` records under ``config``)."""
        return dataclasses.asdict(self)
