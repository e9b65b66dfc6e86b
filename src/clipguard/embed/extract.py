"""Batched, sharded, resumable embedding extraction in the clip-retrieval layout.

Output folder (readable by ``clipguard scan`` and by clip-retrieval's tools; the naming is
:mod:`clipguard.io.layout`, the writing :mod:`clipguard.io.writer`)::

    out/img_emb/img_emb_{i}.npy          (n_i, D) float32, L2-normalised image embeddings
    out/text_emb/text_emb_{i}.npy        (n_i, D) float32, L2-normalised caption embeddings
    out/metadata/metadata_{i}.parquet    n_i rows: id, image, caption, row (manifest row) and
                                         any ground-truth columns (poisoned, trigger, label, class_name,
                                         plant, natural, mismatched)
    out/skipped/skipped_{i}.csv          rows of shard i that were skipped, with the reason (shard 0 also
                                         lists the lines the manifest's reader left out, as row -1)
    out/run.json

Shard ``i`` covers manifest rows ``[i*shard_size, (i+1)*shard_size)``; rows that cannot be used
(missing/corrupt image, empty caption) are left out of it and listed in its skipped file. A shard
is complete once its metadata file exists (written last, atomically), so a killed run restarted
with the same arguments redoes only unfinished shards and ends with identical files.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import Compose, PILToTensor

from clipguard.data.dataset import ImageCaptionDataset, SkipLog, collate_skipping, record_errors
from clipguard.data.manifest import Manifest
from clipguard.errors import ConfigError
from clipguard.io.layout import shard_path
from clipguard.io.writer import embedding_shard_complete, write_embedding_shard
from clipguard.models.factory import ClipBundle
from clipguard.utils.device import DEFAULT_DEVICE, PRECISIONS, autocast
from clipguard.utils.progress import progress_bar, progress_enabled
from clipguard.utils.runrecord import RunRecord, fingerprint_files
from clipguard.utils.validate import check_choice, check_int

__all__ = ["EmbedResult", "embed_dataset", "GROUND_TRUTH_COLUMNS", "EmbedJob", "ShardOutcome", "make_job",
           "shard_bounds", "embed_shard", "reuse_shard", "embed_record", "finish_embed", "same_file"]

GROUND_TRUTH_COLUMNS = ("poisoned", "trigger", "label", "class_name", "plant", "natural", "mismatched")


@dataclass
class EmbedResult:
    """Summary of an embedding run."""

    out_dir: Path
    n_embedded: int
    n_skipped: int
    shards_written: list[int] = field(default_factory=list)
    shards_reused: list[int] = field(default_factory=list)
    skip_counts: dict[str, int] = field(default_factory=dict)


@dataclass
class EmbedJob:
    """What every shard of one run shares (:func:`make_job`)."""

    bundle: ClipBundle
    manifest: Manifest
    out: Path
    shard_size: int
    batch_size: int
    text: bool
    num_workers: int
    dev: torch.device
    bf16: bool
    gt_cols: list[str]
    bounds: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class ShardOutcome:
    """What embedding one shard did: pairs written, rows skipped ``(row, id, reason)``, and
    seconds per stage (``decode``: waiting for decoded batches, ``model``: the forward passes,
    ``write``)."""

    n_embedded: int
    skips: list[tuple[int, str, str]]
    timings: dict[str, float]


def shard_bounds(manifest: Manifest, shard_size: int) -> list[tuple[int, int]]:
    """``[(lo, hi), ...]`` manifest rows of each shard: one shard per tar of a webdataset input
    (its ``source_shard`` column, rows of a tar contiguous), else ``shard_size`` rows each."""
    n = len(manifest)
    if "source_shard" in manifest.df.columns and n:
        src = manifest.df["source_shard"].to_numpy()
        cuts = np.flatnonzero(np.diff(src)) + 1
        edges = [0, *cuts.tolist(), n]
        return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
    return [(i * shard_size, min(n, (i + 1) * shard_size)) for i in range(max(1, -(-n // shard_size)))]


def split_preprocess(preprocess: Any) -> tuple[Any, Any]:
    """``(on_cpu, on_device)``: open_clip's preprocessing cut before its float conversion, so that
    decoding workers send (3, H, W) uint8 tensors (a quarter of the bytes, no float work on the
    CPU) and the device does ``x / 255`` and the normalisation; ``on_device`` is None when the
    transform is not a ``Compose`` ending in ToTensor + Normalize (then it all runs on the CPU).

    The result is the same tensor: ``ToTensor`` is ``uint8 -> float32 / 255`` and ``Normalize``
    ``(x - mean) / std``, elementwise in float32 on either side.
    """
    steps = list(getattr(preprocess, "transforms", []))
    if len(steps) < 2 or type(steps[-1]).__name__ != "Normalize" or \
            type(steps[-2]).__name__ not in ("ToTensor", "MaybeToTensor"):
        return preprocess, None
    norm = steps[-1]
    mean = torch.tensor(norm.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(norm.std, dtype=torch.float32).view(-1, 1, 1)

    def on_device(x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(255).sub_(mean.to(x.device)).div_(std.to(x.device))

    return Compose(steps[:-2] + [PILToTensor()]), on_device


def _device_for(bundle: ClipBundle, device: str | torch.device | None, precision: str) -> torch.device:
    """Move the model to ``device`` (None: leave it where it is) and check ``precision`` there."""
    check_choice("precision", precision, PRECISIONS)
    if device is not None:
        bundle.to(device)
    dev = bundle.device
    if precision == "bf16" and dev.type != "cuda":
        raise ConfigError("precision bf16 needs a CUDA device (bf16 on a CPU is about 10x slower than fp32); "
                          "use --precision fp32 or --device cuda")
    return dev


def reuse_shard(out: Path, i: int, text: bool) -> ShardOutcome | None:
    """What an earlier run wrote for shard ``i`` (its rows and skips), or None when it is not complete."""
    if not embedding_shard_complete(out, i, text=text):
        return None
    n = len(pd.read_parquet(shard_path(out, "meta", i), columns=["id"]))
    skipped = shard_path(out, "skipped", i)
    skips = []
    if skipped.is_file():
        skips = [(int(r.row), str(r.id), str(r.reason)) for r in pd.read_csv(skipped, dtype={"id": str}).itertuples()]
    return ShardOutcome(n, skips, {})


def _embed_rows(job: EmbedJob, sub: Manifest, shard_skips: SkipLog, bar, timings: dict[str, float]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(rows, image, text)``: the usable rows of ``sub`` (local indices) and their (n, D) float32
    L2-normalised embeddings; the others go to ``shard_skips``. Adds the seconds spent waiting for
    decoded batches (``decode``) and in the model (``model``) to ``timings``."""
    bundle, dev, pin = job.bundle, job.dev, job.dev.type == "cuda"
    # on a GPU the workers send uint8 images, which the GPU normalises (same values)
    cpu_part, dev_part = split_preprocess(bundle.preprocess) if dev.type == "cuda" else (bundle.preprocess, None)
    ds = ImageCaptionDataset(sub, cpu_part, bundle.tokenizer if job.text else None, skip_log=shard_skips)
    loader = DataLoader(ds, batch_size=job.batch_size, shuffle=False, num_workers=job.num_workers,
                        collate_fn=collate_skipping, pin_memory=pin)
    img_parts, txt_parts, rows = [], [], []
    bar.update(len(sub) - len(ds))
    batches = iter(loader)
    while True:
        t0 = time.perf_counter()
        batch = next(batches, None)
        t1 = time.perf_counter()
        timings["decode"] = timings.get("decode", 0.0) + t1 - t0
        if batch is None:
            break
        record_errors(batch, ds)
        bar.update(len(batch["index"]) + len(batch["errors"]))
        if "image" not in batch:
            continue
        with autocast(dev, job.bf16):
            images = batch["image"].to(dev, non_blocking=pin)
            img_f = bundle.model.encode_image(images if dev_part is None else dev_part(images))
            txt_f = bundle.model.encode_text(batch["text"].to(dev, non_blocking=pin)) if job.text else None
        img_parts.append(torch.nn.functional.normalize(img_f.float(), dim=-1).cpu())
        if job.text:
            txt_parts.append(torch.nn.functional.normalize(txt_f.float(), dim=-1).cpu())
        rows.append(batch["index"])
        timings["model"] = timings.get("model", 0.0) + time.perf_counter() - t1
    d = int(bundle.config["embed_dim"])
    idx = torch.cat(rows).numpy() if rows else np.zeros(0, dtype=np.int64)
    img = torch.cat(img_parts).numpy() if img_parts else np.zeros((0, d), np.float32)
    txt = None
    if job.text:
        txt = torch.cat(txt_parts).numpy() if txt_parts else np.zeros((0, d), np.float32)
    return idx, img, txt


@torch.no_grad()
def embed_shard(job: EmbedJob, i: int, bar=None) -> ShardOutcome:
    """Embed shard ``i`` of ``job`` (rows ``job.bounds[i]``) and write it: skipped rows, image,
    text, then the metadata (last, atomically: the shard is complete once it exists).

    ``bar``: a progress bar to advance by the shard's rows (None: none). The worker of a
    distributed embedding (:mod:`clipguard.distributed.embed`) calls this, one shard per task.
    """
    lo, hi = job.bounds[i]
    # same roots; the lines the manifest's reader left out are counted once, with shard 0
    sub = replace(job.manifest, df=job.manifest.df.iloc[lo:hi].reset_index(drop=True),
                  read_skips=job.manifest.read_skips if i == 0 else ())
    shard_skips, timings = SkipLog(), {}
    idx, img, txt = _embed_rows(job, sub, shard_skips, bar if bar is not None else _NoBar(), timings)
    t0 = time.perf_counter()
    skipped = shard_path(job.out, "skipped", i)
    skipped.parent.mkdir(parents=True, exist_ok=True)
    shard_skips.entries = [(r + lo, id_, reason) for r, id_, reason in shard_skips.entries]
    shard_skips.save(skipped)
    meta = sub.df.iloc[idx][["id", "image", "caption", *job.gt_cols]].copy()
    meta.insert(3, "row", idx + lo)
    write_embedding_shard(job.out, i, img.astype(np.float32), meta,
                          None if txt is None else txt.astype(np.float32))
    timings["write"] = time.perf_counter() - t0
    return ShardOutcome(len(idx), list(shard_skips.entries), timings)


class _NoBar:
    def update(self, n: int) -> None:
        pass


def make_job(bundle: ClipBundle, manifest: Manifest, out_dir: str | os.PathLike, *, shard_size: int = 100_000,
             batch_size: int = 256, text: bool = True, num_workers: int = 0,
             device: str | torch.device | None = DEFAULT_DEVICE, precision: str = "fp32") -> EmbedJob:
    """The :class:`EmbedJob` of one run (the model moved to ``device``, in eval mode; shard bounds
    from :func:`shard_bounds`). Arguments as :func:`embed_dataset`."""
    check_int("shard_size", shard_size, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    dev = _device_for(bundle, device, precision)
    bundle.model.eval()
    return EmbedJob(bundle, manifest, Path(out_dir), shard_size, batch_size, text, num_workers, dev,
                    precision == "bf16", [c for c in GROUND_TRUTH_COLUMNS if c in manifest.df.columns],
                    shard_bounds(manifest, shard_size))


def embed_record(job: EmbedJob, precision: str) -> RunRecord:
    """The ``run.json`` record of an embedding run (config and data fingerprint)."""
    m = job.manifest
    rec = RunRecord("embed", {"model": job.bundle.name, "shard_size": job.shard_size, "batch_size": job.batch_size,
                              "text": job.text, "manifest": str(m.path if m.path is not None else m.root),
                              "device": str(job.dev), "precision": precision, "num_workers": job.num_workers})
    if m.path is not None:
        rec["data_fingerprint"] = fingerprint_files([m.path])
    rec.data.update(m.read_counts())
    if job.bundle.trained_on:
        rec["model_trained_on"] = job.bundle.trained_on
        rec["model_trained_on_this_set"] = m.path is not None and same_file(job.bundle.trained_on, m.path)
    return rec


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file (the same inode, or the same resolved path when one is gone)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def finish_embed(rec: RunRecord, job: EmbedJob, outcomes: dict[int, ShardOutcome], reused: list[int],
                 seconds: float) -> EmbedResult:
    """The :class:`EmbedResult` of a run and its ``run.json``: counts, skips by reason, reused
    shards, seconds per stage and the throughput of the shards embedded now (over ``seconds``)."""
    skips = SkipLog()
    for i in sorted(outcomes):
        skips.entries.extend(outcomes[i].skips)
    result = EmbedResult(out_dir=job.out, n_embedded=sum(o.n_embedded for o in outcomes.values()),
                         n_skipped=len(skips), shards_written=sorted(set(outcomes) - set(reused)),
                         shards_reused=sorted(reused), skip_counts=skips.counts())
    rec["n_rows"], rec["n_embedded"], rec["n_skipped"] = len(job.manifest), result.n_embedded, result.n_skipped
    rec["skip_counts"], rec["n_shards"] = result.skip_counts, len(job.bounds)
    rec["shards_reused"] = result.shards_reused
    stages: dict[str, float] = {}
    for i in result.shards_written:
        for key, v in outcomes[i].timings.items():
            stages[key] = stages.get(key, 0.0) + v
    rec["stage_seconds"] = {key: round(v, 4) for key, v in stages.items()}
    n_new = sum(outcomes[i].n_embedded for i in result.shards_written)
    rec["pairs_per_second"] = round(n_new / seconds, 1) if seconds > 0 and n_new else None
    rec.save(job.out)
    return result


@torch.no_grad()
def embed_dataset(bundle: ClipBundle, manifest: Manifest, out_dir: str | os.PathLike, *,
                  shard_size: int = 100_000, batch_size: int = 256, text: bool = True, num_workers: int = 0,
                  progress: bool = True, device: str | torch.device | None = DEFAULT_DEVICE,
                  precision: str = "fp32") -> EmbedResult:
    """Embed every usable pair of ``manifest`` with ``bundle`` into ``out_dir`` (see module docstring).

    Args:
        shard_size: manifest rows per shard (a webdataset input: one shard per tar instead).
        batch_size: images per forward pass.
        text: also embed captions (``text_emb/``).
        num_workers: DataLoader worker processes decoding images (a GPU needs several to be fed).
        progress: show the progress bar (also hidden inside ``progress_enabled(False)``).
        device: where the model runs: ``"auto"`` (default: the GPU if torch sees one, else the
            CPU), ``"cpu"``, ``"cuda"``, or None (where the model already is).
        precision: "fp32", or "bf16" (autocast; CUDA only, about 2x the throughput of fp32 on a
            recent GPU; embeddings are still written as float32).

    The shards run one after the other in this process; :func:`clipguard.distributed.embed_sharded`
    runs the same :func:`embed_shard` on a Ray cluster.
    """
    job = make_job(bundle, manifest, out_dir, shard_size=shard_size, batch_size=batch_size, text=text,
                   num_workers=num_workers, device=device, precision=precision)
    rec = embed_record(job, precision)
    outcomes: dict[int, ShardOutcome] = {}
    reused: list[int] = []
    with contextlib.nullcontext() if progress else progress_enabled(False):
        bar = progress_bar(len(manifest), "embed", unit="pair")
    t0 = time.perf_counter()
    with rec.stage("embed"), bar:
        for i, (lo, hi) in enumerate(job.bounds):
            done = reuse_shard(job.out, i, job.text)
            if done is not None:
                outcomes[i] = done
                reused.append(i)
                bar.update(hi - lo)
                continue
            outcomes[i] = embed_shard(job, i, bar)
    return finish_embed(rec, job, outcomes, reused, time.perf_counter() - t0)
