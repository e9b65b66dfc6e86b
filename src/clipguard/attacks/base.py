"""The trigger interface and the attack registry.

A trigger is a deterministic function of (image, seed): ``apply(image, seed=s)`` maps a
(H, W, 3) uint8 array to a new (H, W, 3) uint8 array. ``test=True`` selects the test-time variant
(e.g. a fixed patch location where the paper uses one). Parameters are plain JSON values so that a
trigger round-trips through the attack spec (``spec()`` / :func:`trigger_from_spec`).
"""
from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from clipguard.errors import ConfigError
from clipguard.registry import Registry

ATTACKS: Registry[type["Trigger"]] = Registry("attack")


class Trigger:
    """Base class of triggers. Subclasses set ``name`` via ``@ATTACKS.register`` and implement ``_apply``."""

    name: str = "trigger"

    def apply(self, image: np.ndarray, *, seed: int = 0, test: bool = False) -> np.ndarray:
        """Return the triggered copy of ``image`` ((H, W, 3) uint8); the input is not modified."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"{self.name}: expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
        out = self._apply(image.copy(), seed=seed, test=test)
        assert out.shape == image.shape and out.dtype == np.uint8
        return out

    def _apply(self, image: np.ndarray, *, seed: int, test: bool) -> np.ndarray:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """The constructor arguments of this trigger (JSON values)."""
        return {k: getattr(self, k) for k in inspect.signature(type(self).__init__).parameters if k != "self"}

    def spec(self) -> dict[str, Any]:
        return {"attack": self.name, "params": self.params()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


def get_trigger(name: str, **params: Any) -> Trigger:
    """Build the trigger registered as ``name``; unknown parameters give a ConfigError listing the valid ones."""
    cls = ATTACKS.get(name)
    valid = [k for k in inspect.signature(cls.__init__).parameters if k != "self"]
    bad = [k for k in params if k not in valid]
    if bad:
        raise ConfigError(f"attack {name!r} has no parameter {', '.join(bad)}; its parameters: {', '.join(valid)}")
    return cls(**params)


def trigger_from_spec(spec: dict[str, Any]) -> Trigger:
    """Rebuild a trigger from ``{"attack": name, "params": {...}}`` (an attack spec or its ``trigger`` entry)."""
    spec = spec.get("trigger", spec)
    return get_trigger(spec["attack"], **spec.get("params", {}))
