"""Batched, sharded, resumable embedding extraction in the clip-retrieval layout.

Output folder (readable by ``clipguard scan`` and by clip-retrieval's tools; the naming is
:mod:`clipguard.io.layout`, the writing :mod:`clipguard.io.writer`)::

    out/img_emb/img_emb_{i}.npy          (n_i, D) float32, L2-normalised image embeddings
    out/text_emb/text_emb_{i}.npy        (n_i, D) float32, L2-normalised caption embeddings
    out/metadata/metadata_{i}.parquet    n_i rows: id, image, caption, row (manifest row) and
                                         any ground-truth columns (poisoned, trigger, label, class_name,
                                         plant, natural, mismatched)
    out/skipped/skipped_{i}.csv          rows of shard i that were skipped, with the reason
    out/run.json

Shard ``i`` covers manifest rows ``[i*shard_size, (i+1)*shard_size)``; rows that cannot be used
(missing/corrupt image, empty caption) are left out of it and listed in its skipped file. A shard
is complete once its metadata file exists (written last, atomically), so a killed run restarted
with the same arguments redoes only unfinished shards and ends with identical files.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from clipguard.data.dataset import ImageCaptionDataset, SkipLog, collate_skipping, record_errors
from clipguard.data.manifest import Manifest
from clipguard.errors import ConfigError
from clipguard.io.layout import shard_path
from clipguard.io.writer import embedding_shard_complete, write_embedding_shard
from clipguard.models.factory import ClipBundle
from clipguard.utils.device import DEFAULT_DEVICE, PRECISIONS, autocast
from clipguard.utils.progress import progress_bar, progress_enabled
from clipguard.utils.runrecord import RunRecord, fingerprint_files
from clipguard.utils.validate import check_choice

__all__ = ["EmbedResult", "embed_dataset", "GROUND_TRUTH_COLUMNS"]

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
class _Job:
    """What every shard of one run shares."""

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


def _reuse_shard(job: _Job, i: int, result: EmbedResult, skip_total: SkipLog) -> bool:
    """Count a shard finished by an earlier run (its rows and skips); False when it must be embedded."""
    if not embedding_shard_complete(job.out, i, text=job.text):
        return False
    result.n_embedded += len(pd.read_parquet(shard_path(job.out, "meta", i), columns=["id"]))
    skipped = shard_path(job.out, "skipped", i)
    if skipped.is_file():
        for r in pd.read_csv(skipped, dtype={"id": str}).itertuples():
            skip_total.entries.append((int(r.row), str(r.id), str(r.reason)))
    result.shards_reused.append(i)
    return True


def _embed_rows(job: _Job, sub: Manifest, shard_skips: SkipLog, bar) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(rows, image, text)``: the usable rows of ``sub`` (local indices) and their (n, D) float32
    L2-normalised embeddings; the others go to ``shard_skips``."""
    bundle, dev, pin = job.bundle, job.dev, job.dev.type == "cuda"
    ds = ImageCaptionDataset(sub, bundle.preprocess, bundle.tokenizer, skip_log=shard_skips)
    loader = DataLoader(ds, batch_size=job.batch_size, shuffle=False, num_workers=job.num_workers,
                        collate_fn=collate_skipping, pin_memory=pin)
    img_parts, txt_parts, rows = [], [], []
    bar.update(len(sub) - len(ds))
    for batch in loader:
        record_errors(batch, ds)
        bar.update(len(batch["index"]) + len(batch["errors"]))
        if "image" not in batch:
            continue
        with autocast(dev, job.bf16):
            img_f = bundle.model.encode_image(batch["image"].to(dev, non_blocking=pin))
            txt_f = bundle.model.encode_text(batch["text"].to(dev, non_blocking=pin)) if job.text else None
        img_parts.append(torch.nn.functional.normalize(img_f.float(), dim=-1).cpu())
        if job.text:
            txt_parts.append(torch.nn.functional.normalize(txt_f.float(), dim=-1).cpu())
        rows.append(batch["index"])
    d = int(bundle.config["embed_dim"])
    idx = torch.cat(rows).numpy() if rows else np.zeros(0, dtype=np.int64)
    img = torch.cat(img_parts).numpy() if img_parts else np.zeros((0, d), np.float32)
    txt = None
    if job.text:
        txt = torch.cat(txt_parts).numpy() if txt_parts else np.zeros((0, d), np.float32)
    return idx, img, txt


def _embed_shard(job: _Job, i: int, result: EmbedResult, skip_total: SkipLog, bar) -> None:
    """Embed shard ``i`` and write it (skipped rows, image, text, then the metadata)."""
    lo, hi = i * job.shard_size, min(len(job.manifest), (i + 1) * job.shard_size)
    sub = Manifest(job.manifest.df.iloc[lo:hi].reset_index(drop=True), job.manifest.root, job.manifest.path)
    shard_skips = SkipLog()
    idx, img, txt = _embed_rows(job, sub, shard_skips, bar)
    skipped = shard_path(job.out, "skipped", i)
    skipped.parent.mkdir(parents=True, exist_ok=True)
    shard_skips.entries = [(r + lo, id_, reason) for r, id_, reason in shard_skips.entries]
    shard_skips.save(skipped)
    skip_total.entries.extend(shard_skips.entries)
    meta = sub.df.iloc[idx][["id", "image", "caption", *job.gt_cols]].copy()
    meta.insert(3, "row", idx + lo)
    write_embedding_shard(job.out, i, img.astype(np.float32), meta,
                          None if txt is None else txt.astype(np.float32))
    result.n_embedded += len(idx)
    result.shards_written.append(i)


def _finish_record(rec: RunRecord, job: _Job, result: EmbedResult, n_shards: int) -> None:
    """Counts, reused shards and the throughput of the shards embedded now; writes ``run.json``."""
    rec["n_rows"], rec["n_embedded"], rec["n_skipped"] = len(job.manifest), result.n_embedded, result.n_skipped
    rec["skip_counts"], rec["n_shards"] = result.skip_counts, n_shards
    rec["shards_reused"] = result.shards_reused
    embed_s = rec["timings_s"].get("embed", 0.0)
    n_new = result.n_embedded - sum(len(pd.read_parquet(shard_path(job.out, "meta", i), columns=["id"]))
                                    for i in result.shards_reused)
    rec["pairs_per_second"] = round(n_new / embed_s, 1) if embed_s > 0 and n_new else None
    rec.save(job.out)


@torch.no_grad()
def embed_dataset(bundle: ClipBundle, manifest: Manifest, out_dir: str | os.PathLike, *,
                  shard_size: int = 100_000, batch_size: int = 256, text: bool = True, num_workers: int = 0,
                  progress: bool = True, device: str | torch.device | None = DEFAULT_DEVICE,
                  precision: str = "fp32") -> EmbedResult:
    """Embed every usable pair of ``manifest`` with ``bundle`` into ``out_dir`` (see module docstring).

    Args:
        shard_size: manifest rows per shard.
        batch_size: images per forward pass.
        text: also embed captions (``text_emb/``).
        num_workers: DataLoader worker processes decoding images (a GPU needs several to be fed).
        progress: show the progress bar (also hidden inside ``progress_enabled(False)``).
        device: where the model runs: ``"auto"`` (default: the GPU if torch sees one, else the
            CPU), ``"cpu"``, ``"cuda"``, or None (where the model already is).
        precision: "fp32", or "bf16" (autocast; CUDA only, about 2x the throughput of fp32 on a
            recent GPU; embeddings are still written as float32).
    """
    dev = _device_for(bundle, device, precision)
    out = Path(out_dir)
    job = _Job(bundle, manifest, out, shard_size, batch_size, text, num_workers, dev, precision == "bf16",
               [c for c in GROUND_TRUTH_COLUMNS if c in manifest.df.columns])
    rec = RunRecord("embed", {"model": bundle.name, "shard_size": shard_size, "batch_size": batch_size,
                              "text": text, "manifest": str(manifest.path),
                              "device": str(dev), "precision": precision, "num_workers": num_workers})
    if manifest.path is not None:
        rec["data_fingerprint"] = fingerprint_files([manifest.path])
    bundle.model.eval()
    n_rows = len(manifest)
    n_shards = max(1, -(-n_rows // shard_size))
    result = EmbedResult(out_dir=out, n_embedded=0, n_skipped=0)
    skip_total = SkipLog()
    with contextlib.nullcontext() if progress else progress_enabled(False):
        bar = progress_bar(n_rows, "embed", unit="pair")
    with rec.stage("embed"), bar:
        for i in range(n_shards):
            if _reuse_shard(job, i, result, skip_total):
                bar.update(min(n_rows, (i + 1) * shard_size) - i * shard_size)
                continue
            _embed_shard(job, i, result, skip_total, bar)
    result.n_skipped = len(skip_total)
    result.skip_counts = skip_total.counts()
    _finish_record(rec, job, result, n_shards)
    return result
