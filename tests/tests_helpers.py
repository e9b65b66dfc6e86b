"""Helpers shared by several test modules (importable because tests/ is on sys.path via conftest)."""
from __future__ import annotations

import io
import logging
from contextlib import redirect_stderr, redirect_stdout
from typing import NamedTuple

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clipguard.cli import main
from clipguard.data import write_manifest


#: tests of what happens WITHOUT a GPU (a missing device is a clear error; bf16 refused on a CPU).
#: They run, and assert, on every machine without one -- CI included (skipped by conftest.py elsewhere).
no_gpu = pytest.mark.no_gpu

#: tests of the GPU code paths: they run where torch sees a CUDA GPU and are skipped with a reason
#: elsewhere -- CI included (conftest.py). On the device machine: `pytest -m gpu`.
gpu = pytest.mark.gpu


def make_bad_manifest(root, n_good: int = 1):
    """A CSV manifest with ``n_good`` good rows, then a missing image, a corrupt PNG and an empty caption."""
    (root / "img").mkdir(exist_ok=True)
    rows = []
    rng = np.random.default_rng(0)
    for i in range(n_good):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "img" / f"good{i}.png")
        rows.append((f"good{i}" if n_good > 1 else "good", f"img/good{i}.png", "a red circle"))
    (root / "img" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "img" / "empty.png")
    rows += [("missing", "img/missing.png", "a blue square"), ("corrupt", "img/corrupt.png", "a star"),
             ("empty", "img/empty.png", "  ")]
    return write_manifest(pd.DataFrame(rows, columns=["id", "image", "caption"]), root / "manifest.csv")


class LogRecords(logging.Handler):
    """The messages (WARNING and above) logged while it is attached to a logger."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class CliResult(NamedTuple):
    """What one in-process ``clipguard`` run gave (unpacks as ``code, out, err``)."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*args) -> CliResult:
    """Run ``clipguard -q ARGS`` in this process (faster than a subprocess; the real process is tested
    in tests/cli/test_cli.py) and capture its exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(["-q", *map(str, args)])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return CliResult(code, out.getvalue(), err.getvalue())


def assert_one_line_error(result: CliResult, *texts: str) -> None:
    """Exit code 2, no traceback, and exactly one ``error: ...`` line (log warnings aside) holding ``texts``."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in texts:
        assert text in lines[0], lines[0]


class Killed(Exception):
    """Raised by :func:`kill_after_steps`: stands for a training job killed mid-run."""


def kill_after_steps(n_steps: int):
    """An ``extra_loss`` for ``train_clip`` that adds nothing for ``n_steps`` steps, then raises
    :class:`Killed` (a kill between checkpoints, for resume tests)."""
    calls = {"n": 0}

    def extra_loss(img_f, txt_f, rows):
        calls["n"] += 1
        if calls["n"] > n_steps:
            raise Killed
        return img_f.sum() * 0

    return extra_loss


def write_folder(root, n=2400, d=32, shards=3, text=True, seed=0, nan_row=None):
    """A clustered embedding folder (img_emb, text_emb, metadata with id/caption/poisoned) in ``shards`` shards."""
    from clipguard.io.writer import write_embedding_shard

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(16, d))
    lab = rng.integers(0, 16, n)
    x = (centres[lab] + 0.4 * rng.normal(size=(n, d))).astype(np.float32)
    x[:12] = (3.0 + 0.05 * rng.normal(size=(12, d))).astype(np.float32)  # a tight planted cluster
    t = (centres[lab] @ rng.normal(size=(d, d)) + 0.3 * rng.normal(size=(n, d))).astype(np.float32)
    caps = np.array([f"a photo of thing {c}" for c in lab], dtype=object)
    caps[:12] = "a photo of a star"
    if nan_row is not None:
        x[nan_row] = np.nan
    bounds = np.linspace(0, n, shards + 1).astype(int)
    for i in range(shards):
        sl = slice(bounds[i], bounds[i + 1])
        meta = pd.DataFrame({"id": [f"s{j:06d}" for j in range(sl.start, sl.stop)], "caption": caps[sl],
                             "poisoned": np.arange(sl.start, sl.stop) < 12})
        write_embedding_shard(root, i, x[sl], meta, t[sl] if text else None)
    return root
