"""Fault and determinism tests: the real command line in processes that can be killed, one shared chain.

* :class:`CliServer` (fixtures ``cli`` and ``cli_other``): runs ``clipguard ARGS`` in child processes
  forked from a server that imported the command line once (``cli_server.py``), so that a test can
  ``SIGKILL`` a command mid-way without paying 8-15 s of imports per process. Children of one server
  share its ``PYTHONHASHSEED`` and the state of the unseeded global generators (``random``, NumPy's);
  the determinism tests therefore run their second chain on the other server, which differs in both,
  as two fresh processes do.
* :func:`chain_commands` and the ``chain`` fixture: synth -> poison -> train -> embed -> scan -> filter on
  a tiny world, run once per session; the determinism tests run it again, the kill tests use its
  outputs as their inputs and as the uninterrupted runs they compare with.
* :func:`assert_same_outputs`: every file of two output folders byte-identical, ``run.json`` and the
  training checkpoint compared without their timings and with the two folders' paths made equal.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

SERVER = Path(__file__).with_name("cli_server.py")

#: Keys that hold timings or timestamps (``run.json``, the checkpoint's history): ignored in comparisons.
TIMING_SUFFIXES = ("seconds", "_s", "per_second")


def is_timing_key(key: str) -> bool:
    """``started``, ``timings_s``, ``stage_seconds``, ``pairs_per_s``, ``scan_rows_per_second``, ..."""
    return key == "started" or key.endswith(TIMING_SUFFIXES)


class CliServer:
    """A running ``cli_server.py``: :meth:`run` a command to its end, or :meth:`start` it and :meth:`kill_when`."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs, self.env = logs, env
        self._n = 0
        self.proc: subprocess.Popen | None = None
        self._spawn()

    def _spawn(self) -> None:
        """Start the server; it imports in the background until its first command."""
        self.proc = subprocess.Popen([sys.executable, str(SERVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=self.env, bufsize=1)
        self._ready = False

    def _wait_ready(self) -> None:
        if self.proc is None:  # closed after the tests of this folder, and needed again
            self._spawn()
        if not self._ready:
            self._read(timeout=300)  # {"ready": true}: the imports are done
            self._ready = True

    def _read(self, timeout: float) -> dict[str, Any]:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise AssertionError(f"the CLI server answered nothing within {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the CLI server ended (exit code {self.proc.wait()})")
        return json.loads(line)

    def start(self, *argv: Any) -> tuple[int, Path]:
        """Start ``clipguard -q ARGV`` in a new process; returns its pid and the file of its output."""
        self._wait_ready()
        self._n += 1
        log = self.logs / f"{self._n:03d}_{argv[0]}.log"
        req = {"argv": ["-q", *map(str, argv)], "log": str(log)}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout=60)["pid"], log

    def finished(self) -> bool:
        """Whether the last started command has ended (its exit code is waiting to be read)."""
        return bool(select.select([self.proc.stdout], [], [], 0)[0])

    def wait(self, timeout: float = 300) -> int:
        """The exit code of the last started command (``-9``: killed by SIGKILL)."""
        return self._read(timeout)["code"]

    def run(self, *argv: Any) -> str:
        """Run ``clipguard -q ARGV`` to its end; its output. Fails the test on a non-zero exit code."""
        _, log = self.start(*argv)
        code = self.wait()
        out = log.read_text()
        assert code == 0, f"clipguard {' '.join(map(str, argv))} exited with {code}:\n{out}"
        return out

    def kill_when(self, ready: Callable[[], bool], *argv: Any, timeout: float = 120) -> None:
        """Start ``clipguard -q ARGV``, poll ``ready()`` every 2 ms and ``SIGKILL`` the process the first time
        it holds; fails if the command ends first (the job is then too small to be killed mid-way)."""
        pid, log = self.start(*argv)
        deadline = time.monotonic() + timeout
        while not ready():
            if self.finished() or time.monotonic() > deadline:
                code = self.wait(1)
                raise AssertionError(f"clipguard {argv[0]} ended (exit code {code}) before it could be killed "
                                     f"mid-way:\n{log.read_text()}")
            time.sleep(0.002)
        os.kill(pid, 9)
        code = self.wait()
        assert code == -9, f"clipguard {argv[0]} ended with exit code {code}, not by the kill:\n{log.read_text()}"

    def close(self) -> None:
        """Stop the server, if running (idle between commands: nothing of it is kept, so it is killed rather
        than left to spend seconds unloading torch). A later command starts it again."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(30)
            self.proc = None


# ---------------------------------------------------------------------------------------------- the chain

N_TRAIN, N_TEST = 160, 40


def chain_commands(root: Path, seed: int = 0) -> dict[str, list[Any]]:
    """The chain's commands (stage -> argv), every output a sibling folder under ``root``, all on the CPU.

    ``seed`` goes to every command that has one (synth, poison, train, scan); embed and filter have
    none and differ only through their inputs. Sizes: 160 pairs of 32 px, 48 of them poisoned (a poison
    run long enough to be killed mid-way), tiny-rn for 2 epochs of 2 steps, 8 embedding shards, 4 scan parts.
    """
    r, s = root, str(seed)
    return {
        "synth": ["synth", "--out", r / "world", "--n-train", N_TRAIN, "--n-test", N_TEST, "--seed", s],
        "poison": ["poison", r / "world/train/manifest.parquet", "--out", r / "poison", "--rate", "0.3",
                   "--target", "star", "--classes", r / "world/classes.json", "--seed", s],
        "train": ["train", r / "poison/manifest.parquet", "--out", r / "model", "--model", "tiny-rn", "--epochs", "2",
                  "--batch-size", "80", "--warmup-steps", "2", "--seed", s, "--device", "cpu"],
        "embed": ["embed", r / "model", r / "poison/manifest.parquet", "--out", r / "emb", "--shard-size", "20",
                  "--batch-size", "20", "--device", "cpu"],
        "scan": ["scan", r / "emb", "--out", r / "scan", "-k", "8", "--reference", "batch", "--batch-size", "40",
                 "--part-rows", "40", "--seed", s, "--device", "cpu", "--no-report"],
        "filter": ["filter", r / "poison/manifest.parquet", r / "scan", "--out", r / "filter", "--share", "0.1"],
    }


def with_out(argv: list[Any], out: Path) -> list[Any]:
    """``argv`` with the value of ``--out`` replaced by ``out``."""
    i = argv.index("--out")
    return [*argv[:i + 1], out, *argv[i + 2:]]


#: Each stage's output folder under the chain's root.
OUTPUT = {"synth": "world", "poison": "poison", "train": "model", "embed": "emb", "scan": "scan", "filter": "filter"}


def run_chain(cli: CliServer, root: Path, seed: int = 0) -> Path:
    """Run :func:`chain_commands` one after the other on ``cli``; returns ``root``."""
    for argv in chain_commands(root, seed).values():
        cli.run(*argv)
    return root


# ------------------------------------------------------------------------------------------ comparisons

def _normalise(value: Any, paths: dict[str, str], ignore: frozenset[str]) -> Any:
    """``value`` without timing keys and ``ignore`` keys, every string with ``paths`` substituted."""
    if isinstance(value, dict):
        return {k: _normalise(v, paths, ignore) for k, v in value.items()
                if not is_timing_key(str(k)) and k not in ignore}
    if isinstance(value, (list, tuple)):
        return [_normalise(v, paths, ignore) for v in value]
    if isinstance(value, str):
        for old, new in paths.items():
            value = value.replace(old, new)
        return value
    return value


def _same_checkpoint(a: Path, b: Path, paths_a: dict, paths_b: dict, ignore: frozenset[str]) -> str | None:
    """Why two ``torch.save`` checkpoints differ (tensors bit for bit, the rest normalised), or None."""
    import torch

    def split(obj: Any, prefix: str, tensors: dict) -> Any:
        if isinstance(obj, torch.Tensor):
            tensors[prefix] = obj
            return "<tensor>"
        if isinstance(obj, dict):
            return {k: split(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [split(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
        return obj

    ta: dict = {}
    tb: dict = {}
    ra = _normalise(split(torch.load(a, map_location="cpu", weights_only=True), "", ta), paths_a, ignore)
    rb = _normalise(split(torch.load(b, map_location="cpu", weights_only=True), "", tb), paths_b, ignore)
    if ra != rb:
        return "the non-tensor entries differ"
    if ta.keys() != tb.keys():
        return "different tensors"
    bad = [k for k in ta if not (ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]))]
    return f"tensors differ: {bad[:5]}" if bad else None


def output_files(folder: Path) -> dict[str, Path]:
    """Every file under ``folder`` by relative path, except the temporary files of unfinished atomic writes
    (``.<name>.*.tmp``, which a kill can leave and which nothing reads)."""
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
            if p.is_file() and not (p.name.startswith(".") and p.name.endswith(".tmp"))}


def differences(a: Path, b: Path, *, paths_a: dict[str, str] | None = None, paths_b: dict[str, str] | None = None,
                ignore: tuple[str, ...] = ()) -> list[str]:
    """What differs between output folders ``a`` and ``b``: file names, bytes of every data file, JSON and
    ``.pt`` checkpoints compared with timing keys and ``ignore`` keys dropped and ``paths_*`` (old -> new)
    substituted in their strings. Empty when the outputs are the same."""
    pa = {str(a): "<OUT>", **(paths_a or {})}
    pb = {str(b): "<OUT>", **(paths_b or {})}
    skip = frozenset(ignore)
    fa, fb = output_files(a), output_files(b)
    out = [f"only in {a}: {n}" for n in sorted(fa.keys() - fb.keys())]
    out += [f"only in {b}: {n}" for n in sorted(fb.keys() - fa.keys())]
    for name in sorted(fa.keys() & fb.keys()):
        x, y = fa[name], fb[name]
        if name.endswith(".json"):
            same = (_normalise(json.loads(x.read_text()), pa, skip) == _normalise(json.loads(y.read_text()), pb, skip))
            why = None if same else "JSON differs"
        elif name.endswith(".pt"):
            why = _same_checkpoint(x, y, pa, pb, skip)
        else:
            why = None if x.read_bytes() == y.read_bytes() else "bytes differ"
        if why:
            out.append(f"{name}: {why}")
    return out


def assert_same_outputs(a: Path, b: Path, **kwargs: Any) -> int:
    """Fail with every difference of :func:`differences`; returns the number of files compared."""
    diff = differences(a, b, **kwargs)
    assert not diff, "\n".join(diff)
    n = len(output_files(a))
    assert n > 0, f"{a} holds no output"
    return n
