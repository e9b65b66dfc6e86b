"""The folders a user allows images in, beyond a manifest's own (standard library only: the CLI's
``--allow-root`` is set before any stage is imported).

:func:`allow_roots` (the CLI's ``clipguard --allow-root DIR``, repeatable) and the
``CLIPGUARD_ALLOW_ROOTS`` environment variable (folders separated by ``os.pathsep``) name them;
:func:`user_roots` lists them. :mod:`clipguard.data.roots` confines every manifest's images to its
dataset root and these folders.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

__all__ = ["ENV_VAR", "allow_roots", "user_roots"]

ENV_VAR = "CLIPGUARD_ALLOW_ROOTS"
"""Environment variable naming extra allowed roots, separated by ``os.pathsep``."""

_ALLOWED: list[Path] = []
"""Roots allowed by :func:`allow_roots` for the duration of a ``with`` block."""


@contextmanager
def allow_roots(dirs: Iterable[str | os.PathLike]) -> Iterator[None]:
    """Allow the folders ``dirs`` (and everything below them) as image roots inside the block, for every
    manifest read or built there."""
    added = [Path(d).expanduser().resolve() for d in dirs]
    _ALLOWED.extend(added)
    try:
        yield
    finally:
        for p in added:
            _ALLOWED.remove(p)


def user_roots(extra: Iterable[str | os.PathLike] = ()) -> tuple[Path, ...]:
    """The roots a user allows, resolved, without repeats: ``extra``, then those of :func:`allow_roots`,
    then ``CLIPGUARD_ALLOW_ROOTS``."""
    env = [d for d in os.environ.get(ENV_VAR, "").split(os.pathsep) if d.strip()]
    given = [Path(d).expanduser().resolve() for d in extra]
    return tuple(dict.fromkeys([*given, *_ALLOWED, *(Path(d).expanduser().resolve() for d in env)]))
