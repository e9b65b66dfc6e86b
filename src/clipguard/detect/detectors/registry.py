"""The detector registry and the one way to build a detector from a scan's options.

Example::

    from clipguard.detect.detectors import DETECTORS, make_detector

    DETECTORS.names()     # ['kdist', 'lid', 'slof', 'dao', 'density_anomaly', 'iforest', ...]
    det = make_detector("fused", {"k": 16, "seed": 0}, {"method": "rank", "dao__k": 8})
"""
from __future__ import annotations

from typing import Any, Mapping

from clipguard.detect.detectors.base import Detector
from clipguard.errors import ConfigError
from clipguard.registry import Registry

__all__ = ["DETECTORS", "COMMON_OPTIONS", "make_detector", "check_detector_params", "nest_params"]

DETECTORS: Registry[type[Detector]] = Registry("detector")
"""Every detector by name. ``clipguard.detect.detectors`` imports the detector modules in a fixed
order, so ``DETECTORS.names()`` is always the same list; a plugin registers itself with
``@DETECTORS.register("name")`` on a :class:`~clipguard.detect.detectors.base.Detector` subclass."""

COMMON_OPTIONS = ("k", "seed", "backend", "block_size")
"""Scan options passed to a detector's constructor when it takes them (``clipscore`` takes none)."""


def make_detector(
    name: str, common_options: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None
) -> Detector:
    """Build detector ``name``: the common scan options its constructor takes, then ``params``.

    Args:
        name: a registered detector name.
        common_options: scan options (:data:`COMMON_OPTIONS`, e.g. ``{"k": 16, "seed": 0}``); each
            is passed only where the constructor has a parameter of that name.
        params: the user's parameters of this detector (``ScanConfig.detector_params[name]``);
            STRICT: an unknown name raises. ``"<component>__<param>"`` reaches a component
            (``{"dao__k": 8}`` for ``fused``). They win over ``common_options``.

    Raises:
        ConfigError: unknown detector, or an unknown parameter (the message lists the valid ones).
    """
    cls = DETECTORS.get(name)
    takes = cls.param_names()
    det = cls(**{k: v for k, v in (common_options or {}).items() if k in takes})
    return det.set_params(**dict(params or {}))


def check_detector_params(name: Any, params: Any) -> dict[str, Any]:
    """A private copy of ``params`` after checking that detector ``name`` exists and takes them.

    Raises:
        ConfigError: unknown detector, ``params`` not a mapping, or a parameter the detector's
            constructor (or, for ``"<component>__<param>"``, the component's) does not take.
    """
    cls = DETECTORS.get(name)  # ConfigError listing the known names
    if not isinstance(params, Mapping):
        raise ConfigError(f"detector_params[{name!r}] must be a dict of constructor arguments, got "
                          f"{type(params).__name__}")
    cls().set_params(**params)  # constructors only store: a dry run that checks every name
    return dict(params)


def nest_params(flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"fused.method": "rank", "fused.dao__k": 8}`` -> ``{"fused": {"method": "rank", "dao__k": 8}}``.

    The flat ``"<detector>.<param>"`` spelling of ``clipguard scan --param fused.method=rank`` turned
    into ``ScanConfig.detector_params`` (a component of ``fused`` is ``fused.<component>__<param>``,
    or named directly: ``caption_dup.source``); the names themselves are checked by ScanConfig.

    Raises:
        ConfigError: a name without ``"<detector>."`` in front.
    """
    out: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        det, sep, param = key.partition(".")
        if not sep or not det or not param:
            raise ConfigError(f"detector parameter {key!r}: name the detector, DETECTOR.PARAMETER, e.g. "
                              "fused.method or caption_dup.source")
        out.setdefault(det, {})[param] = value
    return out
