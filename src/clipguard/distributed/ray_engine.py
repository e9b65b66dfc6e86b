"""The ``"ray"`` distributor: the tasks as Ray tasks on a Ray cluster, the local one or the user's.

Every Ray worker process calls ``make_worker()`` once per run, on its first task, and keeps the
worker for the run's later tasks (so an embedding worker loads its model once per process, as a
callable class does in Ray Data's ``map_batches``; Ray reuses its worker processes, so a process
does not pay the imports again). At most ``workers`` tasks run at once (default: the cluster's
CPUs, or its GPUs / ``gpus_per_worker``); each reserves one CPU and ``gpus_per_worker`` GPUs. The
driver hands each result to ``on_result`` as it arrives, resubmits a failed task (also when its
process died) up to ``retries`` times, and returns the tasks that still failed. Ray is an
optional dependency: ``pip install 'clipguard[ray]'``.

Cluster: ``address`` (or the ``RAY_ADDRESS`` environment variable) attaches to a running cluster
(``"auto"``: the one started on this machine by ``ray start``); without one a local cluster is
started, bound to 127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), with ``workers`` CPUs
(default: every CPU) and, when given, an object store capped at ``object_store_mb``; it is shut
down by :meth:`RayDistributor.close`. A driver already connected to Ray (``ray.init`` called by
the user) is used as it is and left running.
"""
from __future__ import annotations

import logging
import os
import uuid
from collections import deque
from typing import Any, Callable

from clipguard.distributed.base import DISTRIBUTORS, Distributor, Worker, error_line, input_error
from clipguard.errors import ConfigError
from clipguard.utils.validate import check_int

__all__ = ["RayDistributor", "import_ray", "INSTALL_HINT"]

log = logging.getLogger("clipguard")

INSTALL_HINT = "Ray is not installed; install it with: pip install 'clipguard[ray]'"


def import_ray(*, local: bool = False) -> Any:
    """The ``ray`` module, or ConfigError with the one-line install command. ``local``: a local
    cluster will be started, bound to 127.0.0.1 (set before Ray is first imported)."""
    if local:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return ray


_WORKERS: dict[str, Worker] = {}
"""The worker of the current run in this (Ray worker) process, by run key: made once per process."""


def _run_task(key: str, make_worker: Callable[[], Worker], task: Any) -> Any:
    """A Ray task: the process's worker for run ``key`` (made on first use) applied to ``task``."""
    worker = _WORKERS.get(key)
    if worker is None:
        _WORKERS.clear()  # one run's worker per process (a model is not kept after its run)
        worker = _WORKERS[key] = make_worker()
    return worker(task)


@DISTRIBUTORS.register("ray")
class RayDistributor(Distributor):
    """Tasks on a Ray cluster (see the module docstring)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        address = self.address or os.environ.get("RAY_ADDRESS")
        self.ray = import_ray(local=not address)
        self.started = False
        if self.ray.is_initialized():
            return
        if address:
            self.ray.init(address=address, log_to_driver=False)
            return
        store = None if self.object_store_mb is None else int(self.object_store_mb) << 20
        self.ray.init(num_cpus=self.workers or os.cpu_count(), object_store_memory=store,
                      include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
        self.started = True

    def _n_slots(self, n_tasks: int) -> int:
        if self.workers is not None:
            return max(1, min(self.workers, n_tasks))
        cpus = int(self.ray.cluster_resources().get("CPU", 1))
        if self.gpus_per_worker > 0:
            cpus = min(cpus, int(self.ray.cluster_resources().get("GPU", 0) / self.gpus_per_worker) or 1)
        return max(1, min(cpus, n_tasks))

    def map(self, make_worker, tasks, on_result, *, retries: int = 2) -> dict[Any, str]:  # noqa: D102
        check_int("retries", retries, minimum=0)
        ray = self.ray
        queue: deque[tuple[Any, int]] = deque((t, 0) for t in tasks)
        if not queue:
            return {}
        remote = ray.remote(num_cpus=1, num_gpus=self.gpus_per_worker or 0, max_retries=0)(_run_task)
        key, maker = uuid.uuid4().hex, ray.put(make_worker)
        slots = self._n_slots(len(queue))
        pending: dict[Any, tuple[Any, int]] = {}
        failed: dict[Any, str] = {}
        try:
            while queue or pending:
                while queue and len(pending) < slots:
                    task, attempt = queue.popleft()
                    pending[remote.remote(key, maker, task)] = (task, attempt)
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                task, attempt = pending.pop(ref)
                err = self._collect(ref, task, on_result)
                if err is None:
                    continue
                log.warning("task %s failed (attempt %d of %d): %s", task, attempt + 1, retries + 1, err)
                if attempt < retries:
                    queue.append((task, attempt + 1))
                else:
                    failed[task] = err
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
        return failed

    def _collect(self, ref: Any, task: Any, on_result: Callable[[Any, Any], None]) -> Any:
        """None when the task's result was consumed, else its error line."""
        try:
            result = self.ray.get(ref)
        except self.ray.exceptions.WorkerCrashedError as e:
            return f"worker process died: {error_line(e)}"
        except Exception as e:  # noqa: BLE001 - reported by task, retried
            bad_input = input_error(e)
            if bad_input is not None:
                raise bad_input from None
            return error_line(e)
        try:
            on_result(task, result)
        except Exception as e:  # noqa: BLE001
            return error_line(e)
        return None

    def describe(self) -> dict[str, Any]:  # noqa: D102
        res = self.ray.cluster_resources()
        return {"distributor": self.name, "workers": self.workers, "address": self.address,
                "started_local_cluster": self.started, "cluster_cpus": res.get("CPU"),
                "cluster_gpus": res.get("GPU", 0), "gpus_per_worker": self.gpus_per_worker,
                "node_ip": self.ray.util.get_node_ip_address()}

    def close(self) -> None:  # noqa: D102
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
        self.started = False
