"""One registry pattern for attacks, detectors and defences.

Example::

    DETECTORS = Registry("detector")

    @DETECTORS.register("kdist")
    class KDistance: ...

    DETECTORS.get("kdist")       # -> KDistance
    DETECTORS.names()            # -> ["kdist", ...] in registration order

The CLI and the benchmarks enumerate registries instead of hard-coding lists.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from clipguard.errors import ConfigError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object mapping with a decorator to fill it and helpful errors for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; sets ``obj.name`` when possible."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ConfigError(f"{self.kind} {name!r} is registered twice; register the plugin under another name")
            self._items[name] = obj
            try:
                obj.name = name  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
            return obj

        return deco

    def get(self, name: str) -> T:
        """Return the object registered as ``name``; unknown names raise a ConfigError listing the known ones."""
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
