"""The distributor seam: run a plain worker function over task ids, here or on a cluster.

A *worker* is made once per worker process by ``make_worker()`` (a picklable zero-argument
callable: it loads the model, opens the memory maps...) and then called once per task:
``worker(task) -> result``. Results come back to the driver, which hands each one to
``on_result(task, result)`` as it arrives (to write it, so a killed run keeps what is finished).
This is the shape of clip-retrieval's and img2dataset's distributors: the worker knows nothing
about the engine that runs it.

Registered distributors (:data:`DISTRIBUTORS`): ``"sequential"`` (this process, one task after
the other; the single-machine path) and ``"ray"`` (:mod:`clipguard.distributed.ray_engine`: an
actor per worker on a local or existing Ray cluster). Both retry a failed task up to
``retries`` times and return the tasks that still failed, with their last error: a run never
drops a task silently.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any, Callable, Hashable, Sequence

from clipguard.errors import ClipguardError, ConfigError
from clipguard.registry import Registry
from clipguard.utils.validate import check_int

__all__ = ["Distributor", "DISTRIBUTORS", "SequentialDistributor", "make_distributor", "error_line",
           "input_error"]

log = logging.getLogger("clipguard")

Worker = Callable[[Any], Any]


def error_line(exc: BaseException) -> str:
    """``"ValueError: message"``: the first line of an exception (the cause of a wrapped one)."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}".strip()


def input_error(exc: BaseException) -> ClipguardError | None:
    """The :class:`~clipguard.errors.ClipguardError` behind ``exc`` (a wrapped one too), else None.

    Such an error is about the input (a NaN embedding row, a bad option): the same on every
    attempt, so it is not retried but ends the run with its own message, as in a single process.
    """
    cause = getattr(exc, "cause", None) or exc
    return cause if isinstance(cause, ClipguardError) else None


class Distributor(ABC):
    """Runs ``worker(task)`` for every task, in worker processes made by ``make_worker``.

    Args:
        workers: worker processes (None: one per CPU of the cluster; the sequential distributor
            always has one).
        address: cluster to attach to (``"auto"``, ``"ray://host:10001"``...; None: the
            ``RAY_ADDRESS`` environment variable, else a local cluster started here).
        gpus_per_worker: GPUs reserved by each worker (0 on a CPU cluster).
        object_store_mb: cap of a locally started cluster's object store (MiB; None = Ray's default).

    Use it as a context manager: a cluster it started is shut down at the end.
    """

    name = "base"

    def __init__(self, *, workers: int | None = None, address: str | None = None,
                 gpus_per_worker: float = 0.0, object_store_mb: int | None = None) -> None:
        if workers is not None:
            check_int("workers", workers, minimum=1)
        self.workers = workers
        self.address = address
        self.gpus_per_worker = float(gpus_per_worker)
        self.object_store_mb = object_store_mb

    @abstractmethod
    def map(self, make_worker: Callable[[], Worker], tasks: Sequence[Hashable],
            on_result: Callable[[Any, Any], None], *, retries: int = 2) -> dict[Any, str]:
        """Run every task; call ``on_result(task, result)`` in this process as each one ends.

        Args:
            make_worker: picklable ``() -> worker``; called once per worker process.
            tasks: task ids (picklable, hashable), run in any order.
            on_result: consumes a result (an exception there counts as a failed attempt).
            retries: further attempts of a task that failed.

        Returns:
            ``{task: last error line}`` of the tasks that failed ``retries + 1`` times.

        Raises:
            ClipguardError: a task raised one (bad input, see :func:`input_error`): not
                retried, the run stops with that message.
        """

    def describe(self) -> dict[str, Any]:
        """What ran the tasks, for ``run.json``."""
        return {"distributor": self.name, "workers": self.workers}

    def close(self) -> None:
        """Release what the distributor started (nothing for the sequential one)."""

    def __enter__(self) -> "Distributor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


DISTRIBUTORS: Registry[type[Distributor]] = Registry("distributor")
"""The distributors by name: ``"sequential"``, ``"ray"``."""


def _attempt(worker: Worker, task: Any, on_result: Callable[[Any, Any], None]) -> str | None:
    """One attempt of ``task``: None on success, else the error line."""
    try:
        on_result(task, worker(task))
        return None
    except ClipguardError:
        raise  # bad input: the same on every attempt
    except Exception as e:  # noqa: BLE001 - a failed task is retried, then reported by name
        return error_line(e)


@DISTRIBUTORS.register("sequential")
class SequentialDistributor(Distributor):
    """Every task in this process, one after the other, with one worker (the single-machine path)."""

    def map(self, make_worker, tasks, on_result, *, retries: int = 2) -> dict[Any, str]:  # noqa: D102
        check_int("retries", retries, minimum=0)
        worker = make_worker()
        failed: dict[Any, str] = {}
        for task in tasks:
            for attempt in range(retries + 1):
                err = _attempt(worker, task, on_result)
                if err is None:
                    break
                log.warning("task %s failed (attempt %d of %d): %s", task, attempt + 1, retries + 1, err)
            else:
                failed[task] = err  # type: ignore[assignment]
        return failed

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {"distributor": self.name, "workers": 1}


def make_distributor(name: str, **options: Any) -> Distributor:
    """The distributor ``name`` (``"sequential"`` or ``"ray"``) with ``options`` (see
    :class:`Distributor`). ConfigError for an unknown name; the Ray one says how to install Ray
    when it is missing."""
    cls = DISTRIBUTORS.get(name)  # ConfigError naming the distributors
    if cls is SequentialDistributor and options.get("address"):
        raise ConfigError("--address names a cluster, which the sequential distributor does not use; "
                          "add --distributor ray")
    return cls(**options)
