"""``clipguard scan --distributor sequential|ray``: the scan as a map over parts and one reduce.

The driver reads only the sizes and metadata of the embedding folder, plans the parts
(:func:`~clipguard.detect.sharded.plan_parts`) and builds the random references once
(:func:`~clipguard.detect.sharded.reference_draws`). Every part is a task: a worker reads its
rows from the memory-mapped shards (:class:`~clipguard.io.rows.EmbeddingRows`), normalises them,
searches their neighbours and computes the row-local scores
(:func:`~clipguard.detect.sharded.score_part`); the driver writes each finished part to
``OUT/parts/part_{j}.npz`` as it arrives. The reduce assembles one draw at a time and runs the
whole-set detectors (:func:`~clipguard.detect.sharded.reduce_scores`); the scores equal those
of the single-process :func:`~clipguard.detect.run_scan` (tested bit for bit), and the output
folder is the same (``scores/``, ``run.json``).

Resume: a killed scan rerun with the same arguments reuses the parts already written (their
``spec.json`` must match: same data fingerprint and options) and ends with the same bytes. A part
that fails is retried ``retries`` times; parts that still fail are listed in ``run.json``
(``tasks_failed``) and in the error, and the finished parts are kept for the rerun. After a
complete scan ``parts/`` is deleted unless ``keep_parts``.

Example::

    from clipguard.distributed import scan_sharded

    res = scan_sharded("emb", "scan", distributor="ray", reference="batch")  # local Ray on 127.0.0.1
    res.scores.head(), res.run_json
"""
from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from clipguard.detect.api import ScanResult
from clipguard.detect.config import ScanConfig
from clipguard.detect.detectors.caption_dup import caption_keys
from clipguard.detect.detectors.records import RECORD_KINDS, join_record, record_sources
from clipguard.detect.engine import select_detectors
from clipguard.detect.neighbours.normalize import normalize
from clipguard.detect.reference.graph import NeighbourGraph
from clipguard.detect.reference.plan import ReferencePlan, plan_reference
from clipguard.detect.results import build_score_table, detection_table, n_suspects
from clipguard.detect.sharded import (
    DEFAULT_PART_ROWS,
    PartResult,
    PartSpec,
    ReferenceDraw,
    device_part_scores,
    draw_graph,
    draw_scores,
    not_loaded,
    plan_parts,
    reduce_needs,
    reduce_scores,
    reference_draws,
    score_part,
)
from clipguard.detect.store import new_scan_record, record_data, record_scoring, write_scan
from clipguard.distributed.base import make_distributor
from clipguard.distributed.tasks import PartStore, TaskReport, run_tasks
from clipguard.io.rows import EmbeddingRows
from clipguard.utils.runrecord import RunRecord

__all__ = ["scan_sharded"]


@dataclass
class _ScanJob:
    """What every worker of one scan needs (picklable: paths, sizes, options, the references)."""

    rows: EmbeddingRows
    plan: ReferencePlan
    cfg: ScanConfig
    names: list[str]
    available: set[str]
    part_rows: int
    refs: list[ReferenceDraw] | None
    records: dict[str, np.ndarray] | None = None


def _make_worker(job: _ScanJob) -> Callable[[int], tuple[PartResult, dict[str, float]]]:
    """The worker of :func:`scan_sharded`: part number -> (its PartResult, stage seconds)."""
    parts = plan_parts(len(job.rows), job.plan, job.cfg, job.part_rows)

    def work(j: int) -> tuple[PartResult, dict[str, float]]:
        spec = parts[j]
        t0 = time.perf_counter()
        raw = job.rows.image(spec.rows)
        read_s = time.perf_counter() - t0
        where = lambda i: job.rows.locate(int(spec.rows[i]))  # noqa: E731
        on_gpu = device_part_scores(raw, spec, job.plan, job.cfg, job.names, job.available, describe_row=where)
        if on_gpu is not None:  # the whole part on the GPU: upload, normalise, kNN, scores
            return on_gpu, {"read": read_s, **on_gpu.timings}
        t0 = time.perf_counter()
        text = job.rows.text(spec.rows) if "text" in job.available else None
        t1 = time.perf_counter()
        x = normalize(raw, describe_row=where, out=raw)  # raw is this part's own float32 copy: in place
        del raw
        if text is not None:
            text = normalize(text, describe_row=lambda i: job.rows.locate(int(spec.rows[i]), "text"), out=text)
        t2 = time.perf_counter()
        res = score_part(x, spec, job.plan, job.cfg, job.names, job.available, text=text, references=job.refs)
        return res, {"read": read_s + t1 - t0, "normalize": t2 - t1, **res.timings}

    return work


def _part_arrays(res: PartResult, with_graph: bool) -> dict[str, np.ndarray]:
    """The arrays of one part file: ``keys{r}`` and ``s{r}_{i}`` per draw r, and ``D{r}``, ``I{r}``
    when the reduce reads the neighbour rows (``with_graph``)."""
    out: dict[str, np.ndarray] = {}
    for r, (D, I, scores) in enumerate(zip(res.D, res.I, res.scores)):
        if D is not None and with_graph:
            out[f"D{r}"], out[f"I{r}"] = D, I
        out[f"keys{r}"] = np.array(list(scores), dtype=str)
        for i, v in enumerate(scores.values()):
            out[f"s{r}_{i}"] = v
    return out


def _reduce_inputs(store: PartStore, parts: list[PartSpec], job: _ScanJob, need_graph: bool):
    """``(graph_of, cache_of)`` reading the parts of ``store`` one draw at a time (the neighbour
    rows only when ``need_graph``: a whole-set detector reads them)."""
    n = len(job.rows)

    def graph_of(r: int) -> NeighbourGraph:
        def pieces():
            for p in parts:
                z = store.load(p.index)
                yield p.rows, z[f"D{r}"], z[f"I{r}"]
        with_rows = need_graph and f"D{r}" in store.load(parts[0].index).files
        return draw_graph(job.plan, job.cfg, n, job.refs, r, pieces() if with_rows else None)

    def cache_of(r: int) -> dict[str, np.ndarray]:
        def pieces():
            for p in parts:
                z = store.load(p.index)
                yield p.rows, {key: z[f"s{r}_{i}"] for i, key in enumerate(z[f"keys{r}"].tolist())}
        return draw_scores(n, pieces())

    return graph_of, cache_of


def _normalised(rows: EmbeddingRows, which: np.ndarray, kind: str) -> np.ndarray:
    """(len(which), d) unit rows ``which`` of ``kind`` ("img" or "text"); a bad row is named by its shard file."""
    raw = rows.image(which) if kind == "img" else rows.text(which)  # a fresh float32 array: normalised in place
    return normalize(raw, describe_row=lambda i: rows.locate(int(which[i]), kind), out=raw)


def _reduce(store: PartStore, parts: list[PartSpec], job: _ScanJob, meta) -> tuple[dict, dict]:
    """Every detector's (N,) scores and the scan info, from the parts."""
    n = len(job.rows)
    keys = caption_keys(meta["caption"].to_numpy(dtype=object)) if "captions" in job.available else None
    need_x, need_t, need_graph = reduce_needs(job.names, job.cfg, job.available, keys is not None)
    every = np.arange(n, dtype=np.int64)
    x = _normalised(job.rows, every, "img") if need_x else not_loaded(n, job.rows.dim)
    t = None
    if "text" in job.available:
        t = _normalised(job.rows, every, "text") if need_t else not_loaded(n, job.rows.text_dim)
    graph_of, cache_of = _reduce_inputs(store, parts, job, need_graph)
    return reduce_scores(x, job.plan, job.cfg, job.names, graph_of, cache_of, text=t, captions=keys,
                         records=job.records)


def _prepare(emb_dir: str | Path, detectors: Any, cfg: ScanConfig, part_rows: int,
             sources: list[tuple[str, Any]]):
    """``(job, meta, requested, skipped, rec)``: the folder opened, the records joined
    (``sources``: ``[(kind, source)]``), the detectors chosen, the plan made."""
    t0 = time.perf_counter()
    rows = EmbeddingRows(emb_dir)
    meta = rows.metadata(["id", "caption", "poisoned"])
    available = {"image"} | ({"text"} if rows.has_text else set()) | (
        {"captions"} if "caption" in meta.columns else set())
    values, joined = {}, {}
    if sources:
        ids = meta["id"].to_numpy() if "id" in meta.columns else np.arange(len(rows), dtype=np.int64)
        for kind, source in sources:
            values[kind], joined[kind] = join_record(kind, source, ids)
            available.add(kind)
    requested, names, skipped = select_detectors(detectors, available)
    rec = new_scan_record(str(emb_dir), requested, cfg, time.perf_counter() - t0)
    for kind, info in joined.items():
        rec[kind] = info
    n = len(rows)
    plan = plan_reference(n, cfg.reference, k=cfg.k, batch_size=cfg.batch_size, reference_size=cfg.reference_size,
                          n_references=cfg.n_references, index=cfg.index)
    job = _ScanJob(rows, plan, cfg, names, available, int(part_rows), None, values)
    plan_parts(n, plan, cfg, part_rows)  # refuses what a sharded scan cannot do, before any work
    return job, meta, requested, skipped, rec


def _spec(job: _ScanJob, fingerprint: str) -> dict[str, Any]:
    return {"data_fingerprint": fingerprint, "n": len(job.rows), "detectors": job.names,
            "config": {k: v for k, v in job.cfg.as_dict().items() if k != "device"},
            "plan": job.plan.as_dict(), "part_rows": job.part_rows}


def _finish(job: _ScanJob, meta, scores: dict, info: dict, rec: RunRecord, skipped: dict,
            out_dir: Path) -> ScanResult:
    """The score table, metrics, score files and ``run.json``, as a single-process scan writes them."""
    record_scoring(rec, info, skipped)
    ids = meta["id"].to_numpy() if "id" in meta.columns else np.arange(len(meta), dtype=np.int64)
    base = meta[["shard", "row_in_shard"]].copy()
    base.insert(0, "id", ids)
    if "poisoned" in meta.columns:
        base["poisoned"] = meta["poisoned"].to_numpy()
    table = build_score_table(base, scores, job.cfg.suspect_share)
    rec["n_suspects"] = n_suspects(len(table), job.cfg.suspect_share)
    with rec.stage("metrics"):
        metrics = detection_table(table, job.names, rec)
    rec["detection"] = metrics
    rec.data["config"]["out_dir"] = str(out_dir)
    paths, run_json = write_scan(table, job.names, job.rows.shard_ids + job.rows.skipped_shards, out_dir, rec)
    joined = {kind: rec.data[kind] for kind in RECORD_KINDS if kind in rec.data}
    return ScanResult(scores=table, metrics=metrics, detectors=job.names, out_dir=out_dir, score_paths=paths,
                      run_json=run_json, info=info, skipped_detectors=skipped, dynamics_info=joined.get("dynamics"),
                      records_info=joined)


def _record_rows(job: _ScanJob, rec: RunRecord) -> None:
    """The data's fingerprint, sizes, inputs, detectors and shards into the run record."""
    with rec.stage("fingerprint"):
        rec["data_fingerprint"] = job.rows.fingerprint()
    record_data(rec, n=len(job.rows), d=job.rows.dim, inputs=job.available, detectors=job.names,
                shard_ids=job.rows.shard_ids, shard_sizes=job.rows.shard_sizes,
                skipped_shards=job.rows.skipped_shards, ignored_files=job.rows.ignored_files)


def scan_sharded(
    emb_dir: str | Path,
    out_dir: str | Path,
    *,
    detectors: list[str] | tuple[str, ...] | None = None,
    config: ScanConfig | None = None,
    distributor: str = "sequential",
    address: str | None = None,
    workers: int | None = None,
    object_store_mb: int | None = None,
    part_rows: int = DEFAULT_PART_ROWS,
    retries: int = 2,
    keep_parts: bool = False,
    dynamics: str | os.PathLike | None = None,
    records: Sequence[str | os.PathLike] = (),
    **overrides: Any,
) -> ScanResult:
    """Scan an embedding folder as a map over parts (on ``distributor``) and a reduce.

    Args:
        emb_dir: a clip-retrieval embedding folder (``img_emb/``, optional ``text_emb/``,
            ``metadata/``); it is memory-mapped, never loaded whole by the map.
        out_dir: where ``scores/``, ``run.json`` (and, while running, ``parts/``) are written.
        detectors, config, **overrides: as :func:`~clipguard.detect.run_scan`.
        distributor: ``"sequential"`` (this process) or ``"ray"``.
        address: Ray cluster to attach to (``"auto"``; default ``RAY_ADDRESS``, else a local
            cluster on 127.0.0.1 started and stopped here).
        workers: worker processes (Ray; default one per CPU of the cluster).
        object_store_mb: cap of a locally started Ray object store.
        part_rows: rows per part (whole batches in ``"batch"`` mode).
        retries: further attempts of a failed part.
        keep_parts: keep ``parts/`` after a complete scan.
        dynamics: a training-dynamics record (model folder or ``dynamics.parquet``), joined by
            id as in :func:`~clipguard.detect.run_scan`; its speeds enter the reduce.
        records: per-row records (folders or parquet files, kinds inferred), as
            :func:`~clipguard.detect.run_scan`; their values enter the reduce.

    Returns:
        A :class:`~clipguard.detect.ScanResult`; ``run.json`` adds ``distributed`` (distributor,
        workers, parts run/reused/failed, stage seconds, rows per second).

    Raises:
        EmbeddingError, ConfigError: as :func:`~clipguard.detect.run_scan`. Parts of another scan
            in ``out_dir/parts`` are deleted with a warning.
        TasksFailedError: parts failed after every retry (named; rerun to resume).
    """
    cfg = ScanConfig.resolve(config, **overrides)
    out = Path(out_dir)
    sources = record_sources(dynamics, records)
    job, meta, requested, skipped, rec = _prepare(emb_dir, detectors, cfg, part_rows, sources)
    n = len(job.rows)
    _record_rows(job, rec)
    store = PartStore(out / "parts", _spec(job, rec["data_fingerprint"]))
    need_graph = reduce_needs(job.names, cfg, job.available, "caption" in meta.columns)[2]
    parts = plan_parts(n, job.plan, cfg, part_rows)
    with rec.stage("references"):
        job.refs = reference_draws(lambda r: _normalised(job.rows, r, "img"), n, job.plan, cfg,
                                   (lambda r: _normalised(job.rows, r, "text")) if "text" in job.available else None)
    with make_distributor(distributor, address=address, workers=workers,
                          object_store_mb=object_store_mb) as dist, rec.stage("map"):
        rec["distributed"] = dist.describe()
        report: TaskReport = run_tasks(
            dist, functools.partial(_make_worker, job), [p.index for p in parts],
            done=store.done, save=lambda j, res: store.save(j, _part_arrays(res, need_graph)),
            units=lambda j: len(parts[j].rows), retries=retries, desc="scan parts")
    rec["distributed"].update(n_parts=len(parts), part_rows=int(part_rows), **report.as_dict())
    if report.failed:
        rec.save(out)
    report.raise_failed("part", f"rerun the same command to retry them (the {len(report.done) + len(report.reused)} "
                                f"finished parts in {store.root} are kept)")
    with rec.stage("reduce"):
        scores, info = _reduce(store, parts, job, meta)
    rec["scan_rows_per_second"] = round(n / max(sum(rec["timings_s"].values()), 1e-9), 1)
    result = _finish(job, meta, scores, info, rec, skipped, out)
    if not keep_parts:
        store.remove()
    return result
