"""The one progress-bar mechanism of the library (decoding, training, poisoning, kNN searches, ...).

Bars go to stderr through tqdm, only when stderr is a terminal (tqdm's ``disable=None``), so
logs, pipes and tests stay clean. Two switches turn them off: a function's own ``progress=False``
(passed on as ``enabled=``) and :func:`progress_enabled` for a block (the CLI's ``-q``). A bar
appears only after a second (``mininterval``) and vanishes when done.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

from tqdm.auto import tqdm

__all__ = ["progress_bar", "progress_enabled", "progress_write"]

_ENABLED: ContextVar[bool] = ContextVar("clipguard_progress", default=True)


@contextmanager
def progress_enabled(on: bool) -> Iterator[None]:
    """Show (``on=True``, the default everywhere) or hide the library's bars inside the block."""
    token = _ENABLED.set(bool(on))
    try:
        yield
    finally:
        _ENABLED.reset(token)


def _shown(enabled: bool) -> bool:
    return bool(enabled) and _ENABLED.get()


def progress_bar(total: int, desc: str, unit: str = "row", *, enabled: bool = True) -> tqdm:
    """A tqdm bar of ``total`` units; call ``.update(n)`` and close it (or use it as a context).

    ``enabled=False`` (a function's ``progress=False``) hides it, like :func:`progress_enabled`.
    """
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "row", leave=False, mininterval=1.0,
                disable=None if _shown(enabled) else True)


def progress_write(text: str, *, enabled: bool = True) -> None:
    """Print one line of progress (e.g. an epoch summary) without breaking an open bar.

    Printed when ``enabled`` and not inside ``progress_enabled(False)``.
    """
    if _shown(enabled):
        tqdm.write(text)
