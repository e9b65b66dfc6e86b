"""Atomic writes, so that a killed job never leaves a half-written file that looks complete."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from clipguard.errors import ConfigError


def file_in(source: str | os.PathLike, name: str, suffix: str = ".parquet") -> Path:
    """``source`` itself when it names a ``suffix`` file, else the file ``name`` inside the folder ``source``
    (the records a command writes into its output folder: ``dynamics.parquet``, ``stability.parquet``)."""
    p = Path(source)
    return p if p.suffix == suffix else p / name


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the same folder; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically. NumPy scalars/arrays and Paths are converted."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value in ``path`` (for files this package wrote; see :func:`read_json_object` for input)."""
    return json.loads(Path(path).read_text())


def read_json_object(path: str | os.PathLike, what: str, fix: str = "") -> dict[str, Any]:
    """The JSON object in ``path``, or a one-line ConfigError: missing, unreadable, not JSON, not an object.

    Args:
        path: the file.
        what: what the file should be, for the messages (``"an attack spec (attack.json)"``).
        fix: what the user should do, appended to the messages (``"pass a folder written by ..."``).
    """
    path = Path(path)
    tail = f"; {fix}" if fix else ""
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found{tail}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}); expected {what}{tail}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected {what} (a JSON object){tail}")
    return data


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` atomically (the file appears only once complete)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)
