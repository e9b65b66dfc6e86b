"""The trigger interface and the attack registry.

A trigger is a deterministic function of (image, seed): ``apply(image, seed=s)`` maps a
(H, W, 3) uint8 array to a new (H, W, 3) uint8 array. ``test=True`` selects the test-time variant
(e.g. a fixed patch location where the paper uses one). Parameters are plain JSON values so that a
trigger round-trips through the attack spec (``spec()`` / :func:`trigger_from_spec`).

Parameters are strict: an unknown parameter name is refused with the list of valid ones, and each
trigger checks the type and range of its values (``--param size=abc`` is a one-line error).
"""
from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from clipguard.errors import ConfigError
from clipguard.registry import Registry
from clipguard.utils.validate import check_known_keys

__all__ = ["ATTACKS", "ImageTooSmall", "Trigger", "get_trigger", "trigger_from_spec"]

ATTACKS: Registry[type["Trigger"]] = Registry("attack")


class ImageTooSmall(ConfigError):
    """The image is smaller than the trigger needs (a per-image problem: the poisoner skips and counts the
    row and uses the next candidate)."""


class Trigger:
    """Base class of triggers. Subclasses set ``name`` via ``@ATTACKS.register`` and implement ``_apply``."""

    name: str = "trigger"

    def apply(self, image: np.ndarray, *, seed: int = 0, test: bool = False) -> np.ndarray:
        """Return the triggered copy of ``image`` ((H, W, 3) uint8); the input is not modified.

        Raises:
            ConfigError: ``image`` is not an (H, W, 3) uint8 array (e.g. greyscale or RGBA).
        """
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ConfigError(f"{self.name}: expected an (H, W, 3) uint8 RGB image, got shape {image.shape} "
                              f"{image.dtype}; convert it first (e.g. PIL's image.convert('RGB'))")
        out = self._apply(image.copy(), seed=seed, test=test)
        if out.shape != image.shape or out.dtype != np.uint8:
            raise RuntimeError(f"trigger {self.name!r} returned {out.shape} {out.dtype} for a {image.shape} uint8 "
                               "image; a trigger must keep the shape and dtype")
        return out

    def _apply(self, image: np.ndarray, *, seed: int, test: bool) -> np.ndarray:
        raise NotImplementedError

    @classmethod
    def param_names(cls) -> list[str]:
        """The names of the constructor's parameters, in order."""
        return [k for k in inspect.signature(cls.__init__).parameters if k != "self"]

    def params(self) -> dict[str, Any]:
        """The constructor arguments of this trigger (JSON values)."""
        return {k: getattr(self, k) for k in self.param_names()}

    def spec(self) -> dict[str, Any]:
        """``{"attack": name, "params": {...}}``: rebuilds the trigger with :func:`trigger_from_spec`."""
        return {"attack": self.name, "params": self.params()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


def get_trigger(name: str, **params: Any) -> Trigger:
    """Build the trigger registered as ``name``.

    Raises:
        ConfigError: unknown attack, unknown parameter (the message lists the valid ones), or a
            parameter value of the wrong type or range.
    """
    cls = ATTACKS.get(name)
    check_known_keys(f"parameter of attack {name!r}:", params, cls.param_names())
    return cls(**params)


def trigger_from_spec(spec: dict[str, Any]) -> Trigger:
    """Rebuild a trigger from ``{"attack": name, "params": {...}}`` (an attack spec or its ``trigger`` entry)."""
    if isinstance(spec, dict):
        spec = spec.get("trigger", spec)
    if not isinstance(spec, dict) or "attack" not in spec or not isinstance(spec.get("params") or {}, dict):
        raise ConfigError(f"a trigger spec is an object with 'attack' (a name) and optional 'params' (an object), "
                          f"got {spec!r}")
    return get_trigger(spec["attack"], **(spec.get("params") or {}))
