"""Progress bars for the long steps of the library (kNN searches over large embedding sets).

Bars go to stderr through tqdm, only when stderr is a terminal (tqdm's ``disable=None``), so
logs, pipes and tests stay clean; :func:`progress_enabled` switches them off for a block (the
CLI's ``-q``). A bar appears only after a second (``mininterval``) and vanishes when done.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

from tqdm.auto import tqdm

_ENABLED: ContextVar[bool] = ContextVar("clipguard_progress", default=True)


@contextmanager
def progress_enabled(on: bool) -> Iterator[None]:
    """Show (``on=True``, the default everywhere) or hide the library's bars inside the block."""
    token = _ENABLED.set(bool(on))
    try:
        yield
    finally:
        _ENABLED.reset(token)


def progress_bar(total: int, desc: str, unit: str = "row") -> tqdm:
    """A tqdm bar of ``total`` units; call ``.update(n)`` and close it (or use it as a context)."""
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "row", leave=False, mininterval=1.0,
                disable=None if _ENABLED.get() else True)
