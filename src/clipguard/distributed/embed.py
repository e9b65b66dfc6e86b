"""``clipguard embed --distributor ray``: the embedding shards as tasks, the model loaded once per worker.

Every shard (``shard_size`` manifest rows, or one tar of a webdataset input) is a task. A worker
process loads the model and reads the manifest once (:func:`_make_worker`) and then embeds the
shards it is given with :func:`~clipguard.embed.embed_shard` -- the function the single-process
:func:`~clipguard.embed.embed_dataset` runs -- writing each one into the output folder, which
must therefore be visible to every worker (a local disk for a local cluster; a shared file
system on a real one). With GPUs each worker reserves ``gpus_per_worker`` of them (default 1
where the cluster has GPUs, so one worker per GPU). A shard whose files are complete is not
redone; a failed shard is retried, and the shards that still fail are named at the end.

Example::

    from clipguard.distributed import embed_sharded

    embed_sharded("model", "shards/{00000..00099}.tar", "emb", distributor="ray")
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from clipguard.data import read_source
from clipguard.distributed.base import make_distributor
from clipguard.distributed.tasks import run_tasks
from clipguard.embed import (
    EmbedResult,
    ShardOutcome,
    embed_record,
    embed_shard,
    finish_embed,
    make_job,
    reuse_shard,
)
from clipguard.models import load_model
from clipguard.utils.fs import is_url

__all__ = ["embed_sharded"]


@dataclass(frozen=True)
class _EmbedSpec:
    """What a worker needs to rebuild the job (picklable: paths and options)."""

    model_dir: str
    source: str
    out: str
    shard_size: int
    batch_size: int
    text: bool
    num_workers: int
    device: str
    precision: str


def _absolute(path: str | os.PathLike) -> str:
    """A local path made absolute (a brace pattern too); an fsspec URL as it is."""
    return str(path) if is_url(str(path)) else str(Path(path).absolute())


def _job(spec: _EmbedSpec, manifest: Any = None):
    bundle = load_model(spec.model_dir)
    return make_job(bundle, manifest if manifest is not None else read_source(spec.source), spec.out,
                    shard_size=spec.shard_size, batch_size=spec.batch_size, text=spec.text,
                    num_workers=spec.num_workers, device=spec.device, precision=spec.precision)


def _make_worker(spec: _EmbedSpec) -> Callable[[int], tuple[ShardOutcome, dict[str, float]]]:
    """The worker: the model loaded and the manifest read once; shard index -> (outcome, stage seconds)."""
    t0 = time.perf_counter()
    job = _job(spec)
    load_s = time.perf_counter() - t0

    def work(i: int) -> tuple[ShardOutcome, dict[str, float]]:
        nonlocal load_s
        outcome = embed_shard(job, i)
        timings, load_s = {**outcome.timings, "load_model": load_s}, 0.0  # counted once per worker
        return outcome, timings

    return work


def embed_sharded(model_dir: str | os.PathLike, source: str | os.PathLike, out_dir: str | os.PathLike, *,
                  distributor: str = "ray", address: str | None = None, workers: int | None = None,
                  gpus_per_worker: float | None = None, object_store_mb: int | None = None,
                  shard_size: int = 100_000, batch_size: int = 256, text: bool = True, num_workers: int = 0,
                  device: str = "auto", precision: str = "fp32", retries: int = 2) -> EmbedResult:
    """Embed a manifest or webdataset with the model in ``model_dir``, shard by shard on ``distributor``.

    Args:
        model_dir: a model folder (:func:`~clipguard.models.save_model`); every worker loads it.
        source: a manifest path/URL or webdataset tar shards (:func:`~clipguard.data.read_source`).
        out_dir: the embedding folder (clip-retrieval layout; shared by the workers).
        distributor: ``"ray"`` or ``"sequential"``; ``address``, ``workers``,
            ``object_store_mb`` as :class:`~clipguard.distributed.Distributor`.
        gpus_per_worker: GPUs per worker (None: 1 when the cluster has GPUs, else 0).
        shard_size, batch_size, text, num_workers, device, precision: as
            :func:`~clipguard.embed.embed_dataset`.
        retries: further attempts of a failed shard.

    Returns:
        The :class:`~clipguard.embed.EmbedResult`; ``run.json`` adds ``distributed``.

    Raises:
        TasksFailedError: shards failed after every retry (named; rerun to resume).
        ClipguardError: as :func:`~clipguard.embed.embed_dataset`.
    """
    # absolute paths: a worker process of a cluster may run in another working directory
    spec = _EmbedSpec(_absolute(model_dir), _absolute(source), _absolute(out_dir), int(shard_size), int(batch_size),
                      bool(text), int(num_workers), str(device), str(precision))
    manifest = read_source(spec.source)
    # the model and options checked here, before any task (on the CPU: the workers have the GPUs)
    job = _job(dataclasses.replace(spec, device="cpu", precision="fp32"), manifest)
    rec = embed_record(job, precision)
    rec.data["config"].update(device=device, precision=precision)
    outcomes: dict[int, ShardOutcome] = {}
    reused = []
    for i in range(len(job.bounds)):
        done = reuse_shard(job.out, i, job.text)
        if done is not None:
            outcomes[i] = done
            reused.append(i)
    with make_distributor(distributor, address=address, workers=workers,
                          object_store_mb=object_store_mb) as dist, rec.stage("embed"):
        has_gpus = bool(dist.describe().get("cluster_gpus")) and device != "cpu"
        dist.gpus_per_worker = gpus_per_worker if gpus_per_worker is not None else float(has_gpus)
        rec["distributed"] = dist.describe()
        report = run_tasks(dist, functools.partial(_make_worker, spec), list(range(len(job.bounds))),
                           done=lambda i: i in outcomes, save=lambda i, o: outcomes.__setitem__(i, o),
                           units=lambda i: job.bounds[i][1] - job.bounds[i][0], retries=retries,
                           desc="embed shards", unit="pair")
    rec["distributed"].update(n_shards=len(job.bounds), **report.as_dict())
    result = finish_embed(rec, job, outcomes, reused, report.seconds)
    report.raise_failed("shard", f"rerun the same command to retry them (the finished shards in {Path(out_dir)} "
                                 "are kept)")
    return result
