"""``run.json``: the record written beside every command's outputs.

It holds the configuration, package versions, per-stage timings, and a fingerprint of the input
data, so a result can be traced to exactly what produced it.
"""
from __future__ import annotations

import hashlib
import os
import platform
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from clipguard.utils.fs import open_binary
from clipguard.utils.io import write_json


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages whose behaviour affects results."""
    from importlib import metadata

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ["clipguard", "torch", "torchvision", "open_clip_torch", "numpy", "faiss-cpu",
                 "pyarrow", "scikit-learn", "pillow"]:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def hardware() -> dict[str, Any]:
    """CPU count and, when torch sees one, the GPU: timings in run.json mean little without it."""
    out: dict[str, Any] = {"cpu_count": os.cpu_count(), "machine": platform.machine()}
    torch = sys.modules.get("torch")  # only if already imported: a record must not pull torch in
    if torch is not None and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
        out["gpu_count"] = torch.cuda.device_count()
    return out


def fingerprint_files(paths: list[str | os.PathLike]) -> str:
    """SHA-256 over the bytes of ``paths`` (in the order given; local paths or fsspec URLs); names are not
    included."""
    h = hashlib.sha256()
    for p in paths:
        with open_binary(p) as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def fingerprint_arrays(*arrays: Any) -> str:
    """SHA-256 over the raw bytes, shapes and dtypes of NumPy arrays."""
    import numpy as np

    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class RunRecord:
    """Collects config, timings and counts of one command; ``save()`` writes ``run.json``.

    Example::

        rec = RunRecord("scan", config={"k": 16})
        with rec.stage("knn"):
            ...
        rec.save(out_dir)
    """

    def __init__(self, command: str, config: dict[str, Any] | None = None) -> None:
        self.data: dict[str, Any] = {
            "command": command,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": dict(config or {}),
            "versions": package_versions(),
            "hardware": hardware(),
            "timings_s": {},
        }
        self._t0 = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.data["timings_s"][name] = round(time.perf_counter() - t, 4)

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def save(self, out_dir: str | os.PathLike, name: str = "run.json") -> Path:
        self.data["timings_s"]["total"] = round(time.perf_counter() - self._t0, 4)
        path = Path(out_dir) / name
        write_json(path, self.data)
        return path
