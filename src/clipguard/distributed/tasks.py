"""Resumable task runs: every finished task's output is a file; a rerun skips those, and a task
that still fails after its retries is named at the end (never a silently missing shard).

:class:`PartStore` is a folder of task outputs (``part_{j:05d}.npz``, written atomically, so a
killed run never leaves a half-written part that looks finished) with a ``spec.json`` that says
which run they belong to: a rerun with other data or options refuses to mix its parts with them.
:func:`run_tasks` runs the unfinished tasks on a :class:`~clipguard.distributed.base.Distributor`,
saves each result as it arrives, sums the per-stage timings the workers report, and shows the
throughput on the progress bar.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from clipguard.distributed.base import Distributor
from clipguard.errors import ClipguardError
from clipguard.utils.io import atomic_path, read_json, write_json
from clipguard.utils.progress import progress_bar

__all__ = ["PartStore", "TaskReport", "run_tasks", "TasksFailedError"]

log = logging.getLogger("clipguard")


class TasksFailedError(ClipguardError):
    """Some tasks failed after every retry; the message names them and says how to resume."""


class PartStore:
    """Task outputs of one run in ``root`` (see the module docstring).

    Args:
        root: the folder (created).
        spec: JSON-serialisable description of the run (data fingerprint, options); parts
            already in ``root`` are reused only when their ``spec.json`` is equal.

    Parts of a run with another spec (other data or options) are deleted, with a warning.
    """

    def __init__(self, root: str | Path, spec: dict[str, Any]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "spec.json"
        spec = read_json_roundtrip(spec)
        if path.is_file() and any(self.root.glob("part_*.npz")):
            old = read_json(path)
            if old != spec:
                diff = sorted(k for k in set(old) | set(spec) if old.get(k) != spec.get(k))
                log.warning("%s held the parts of another run (different %s); they are deleted",
                            self.root, ", ".join(diff))
                for p in self.root.glob("part_*.npz"):
                    p.unlink()
        write_json(path, spec)

    def path(self, j: int) -> Path:
        """``root/part_{j:05d}.npz``."""
        return self.root / f"part_{int(j):05d}.npz"

    def done(self, j: int) -> bool:
        """Whether part ``j`` was written completely."""
        return self.path(j).is_file()

    def save(self, j: int, arrays: dict[str, np.ndarray]) -> None:
        """Write part ``j`` (uncompressed ``.npz``) atomically."""
        with atomic_path(self.path(j)) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)

    def load(self, j: int) -> Any:
        """Part ``j`` as a lazy ``NpzFile`` (arrays read when indexed)."""
        return np.load(self.path(j), allow_pickle=False)

    def remove(self) -> None:
        """Delete the folder and every part in it."""
        shutil.rmtree(self.root, ignore_errors=True)


def read_json_roundtrip(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` (plain JSON types) as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(obj))


@dataclass
class TaskReport:
    """What :func:`run_tasks` did.

    Attributes:
        done: tasks run now; ``reused``: tasks whose output an earlier run had written;
        failed: ``{task: last error}``; timings: seconds per stage summed over the tasks run now
        (the workers' own stages, plus ``write``); seconds: wall time of the run;
        units: rows (or pairs) processed now.
    """

    done: list[Any] = field(default_factory=list)
    reused: list[Any] = field(default_factory=list)
    failed: dict[Any, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    units: int = 0

    def as_dict(self) -> dict[str, Any]:
        """For ``run.json``: counts, failed tasks, stage timings and throughput."""
        return {"tasks_run": len(self.done), "tasks_reused": len(self.reused),
                "tasks_failed": {str(k): v for k, v in self.failed.items()},
                "stage_seconds": {k: round(v, 4) for k, v in self.timings.items()},
                "wall_seconds": round(self.seconds, 4),
                "units_per_second": round(self.units / self.seconds, 1) if self.seconds > 0 and self.units else None}

    def raise_failed(self, what: str, fix: str) -> None:
        """TasksFailedError naming the failed tasks, when there are any."""
        if self.failed:
            listed = "; ".join(f"{what} {k}: {v}" for k, v in list(self.failed.items())[:5])
            more = f" (and {len(self.failed) - 5} more)" if len(self.failed) > 5 else ""
            raise TasksFailedError(f"{len(self.failed)} {what}(s) failed after every retry: {listed}{more}; {fix}")


def run_tasks(distributor: Distributor, make_worker: Callable[[], Callable[[Any], Any]], tasks: Sequence[Any], *,
              done: Callable[[Any], bool], save: Callable[[Any, Any], dict[str, float]],
              units: Callable[[Any], int], retries: int = 2, desc: str = "tasks", unit: str = "row"
              ) -> TaskReport:
    """Run the unfinished ``tasks`` on ``distributor`` and save each result as it arrives.

    Args:
        make_worker: picklable ``() -> worker``; ``worker(task)`` returns ``(result, timings)``
            with ``timings`` ``{stage: seconds}``.
        done: ``task -> bool``: its output exists (the task is skipped).
        save: ``(task, result) -> {stage: seconds}`` writes the output (runs in this process).
        units: rows of a task, for the progress bar and the throughput.
        retries: further attempts of a failed task.

    Returns:
        A :class:`TaskReport`.
    """
    report = TaskReport()
    todo = [t for t in tasks if not done(t)]
    report.reused = [t for t in tasks if t not in set(todo)]
    bar = progress_bar(sum(units(t) for t in tasks), desc, unit=unit)
    bar.update(sum(units(t) for t in report.reused))
    t0 = time.perf_counter()

    def on_result(task: Any, out: Any) -> None:
        result, timings = out
        t_save = time.perf_counter()
        extra = save(task, result) or {}
        for k, v in {**timings, **extra, "write": time.perf_counter() - t_save}.items():
            report.timings[k] = report.timings.get(k, 0.0) + float(v)
        report.done.append(task)
        report.units += units(task)
        bar.update(units(task))
        rate = report.units / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix_str(f"{rate:,.0f} {unit}/s; " + ", ".join(
            f"{k} {v:.1f}s" for k, v in sorted(report.timings.items())))

    try:
        report.failed = distributor.map(make_worker, todo, on_result, retries=retries)
    finally:
        bar.close()
    report.seconds = time.perf_counter() - t0
    return report
