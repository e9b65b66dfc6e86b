"""One CLIP training loop: AdamW, linear warm-up + cosine decay, optional gradient clipping,
learned temperature capped at 100, a checkpoint after every epoch, resumable after a kill, seeded.

A killed run restarted with the same arguments continues from the last finished epoch and ends
with the same weights as an uninterrupted run (the data order of epoch e depends only on
``(seed, e)``).
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from clipguard.data.dataset import ImageCaptionDataset, collate_skipping, record_errors
from clipguard.models.factory import ClipBundle
from clipguard.errors import ConfigError
from clipguard.train.loss import MAX_LOGIT_SCALE, clip_loss
from clipguard.utils.device import autocast
from clipguard.utils.io import atomic_path
from clipguard.utils.seeding import derive_seed

log = logging.getLogger("clipguard")

#: hook for training-time losses added to MMCL (e.g. adaptive attacks):
#: f(image_features, text_features, batch_rows) -> scalar tensor
ExtraLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train_clip` (defaults suit the tiny models on the shapes world)."""

    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    grad_clip: float | None = 1.0
    seed: int = 0
    precision: str = "fp32"  # or "bf16": autocast on a GPU (weights and optimiser stay fp32)


@dataclass
class TrainResult:
    """What a training run returns: per-epoch history and timing."""

    epochs_run: int
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    n_pairs: int = 0
    n_skipped: int = 0


@dataclass
class Pairs:
    """Image-caption pairs decoded in memory: images (N,3,H,W) float32, tokens (N,L) int64, rows (N,)."""

    images: torch.Tensor
    tokens: torch.Tensor
    rows: torch.Tensor


def load_pairs(dataset: ImageCaptionDataset, *, batch_size: int = 512, num_workers: int = 0,
               progress: bool = True, desc: str = "decode") -> Pairs:
    """Decode and preprocess every pair of ``dataset`` once (bad images are skipped and logged).

    The tiny models train far faster from memory than from a loader that re-decodes PNGs every
    epoch; 20k pairs at 32 px take about 250 MB.
    """
    if dataset.tokenizer is None:
        raise ValueError("dataset needs a tokenizer to load pairs")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_skipping)
    imgs, toks, rows = [], [], []
    for batch in tqdm(loader, desc=desc, disable=None if progress else True, unit="batch", mininterval=1.0):
        record_errors(batch, dataset)
        if "image" in batch:
            imgs.append(batch["image"])
            toks.append(batch["text"])
            rows.append(batch["index"])
    if not imgs:
        raise ValueError("no usable image-caption pair in the dataset (all rows skipped; see skipped.csv)")
    return Pairs(torch.cat(imgs), torch.cat(toks), torch.cat(rows))


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``cfg.lr`` over ``warmup_steps``, then cosine decay to 0 at ``total``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(1.0, progress)))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on gains, biases, embeddings of position and the logit scale (as open_clip)."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "bn" in n or "ln" in n or "logit_scale" in n or "positional" in n
         else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_clip(bundle: ClipBundle, pairs: Pairs, config: TrainConfig, out_dir: str | os.PathLike, *,
               resume: bool = True, progress: bool = True, extra_loss: ExtraLoss | None = None,
               on_epoch_end: Callable[[int, dict], None] | None = None,
               device: str | torch.device | None = None) -> TrainResult:
    """Train ``bundle.model`` with the CLIP loss on ``pairs``; checkpoints go to ``out_dir/checkpoints``.

    Args:
        bundle: the model to train (updated in place).
        pairs: decoded pairs from :func:`load_pairs`.
        config: hyper-parameters; the run is deterministic in ``config.seed``.
        out_dir: folder for ``checkpoints/state.pt`` (weights-only torch file, written atomically
            after every epoch).
        resume: continue from ``checkpoints/state.pt`` if present and written with the same config.
        extra_loss: optional term added to the loss (see :data:`ExtraLoss`).
        on_epoch_end: optional ``f(epoch, record)`` called after each epoch's checkpoint, with the
            model in train mode (e.g. to log zero-shot accuracy per epoch).
        device: where to train (``None``: where the model already is; "auto": the GPU if there is
            one). ``pairs`` stay in host memory; each batch is copied to the device. Runs on a GPU
            are seeded but not bit-identical to CPU runs.

    Returns:
        A :class:`TrainResult` with per-epoch mean loss, pairs/s and logit scale.
    """
    if config.precision not in ("fp32", "bf16"):
        raise ConfigError(f"precision {config.precision!r}: use fp32 or bf16")
    if device is not None:
        bundle.to(device)
    model = bundle.model
    dev = bundle.device
    if config.precision == "bf16" and dev.type != "cuda":
        raise ConfigError("precision bf16 needs a CUDA device (bf16 on a CPU is about 10x slower than fp32); "
                          "use --precision fp32 or --device cuda")
    pin = dev.type == "cuda"
    n = len(pairs.rows)
    bs = min(config.batch_size, n)
    steps_per_epoch = n // bs  # drop the ragged last batch: contrastive batches should be full
    total = steps_per_epoch * config.epochs
    ckpt = Path(out_dir) / "checkpoints" / "state.pt"
    opt = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98), eps=1e-6)
    result = TrainResult(epochs_run=0, n_pairs=n)
    start_epoch = 0
    if resume and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if state["config"] == asdict(config) and state["n_pairs"] == n:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            start_epoch = int(state["epoch"])
            result.history = list(state["history"])
            log.info("resuming from %s at epoch %d", ckpt, start_epoch)
        else:
            log.warning("%s was written with another config or data; starting afresh", ckpt)
    t0 = time.perf_counter()
    model.train()
    for epoch in range(start_epoch, config.epochs):
        gen = torch.Generator().manual_seed(derive_seed(config.seed, "epoch", epoch))
        torch.manual_seed(derive_seed(config.seed, "epoch-rng", epoch))
        perm = torch.randperm(n, generator=gen)
        losses, te = [], time.perf_counter()
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", disable=None if progress else True,
                   unit="step", mininterval=1.0, leave=False)
        for s in bar:
            step = epoch * steps_per_epoch + s
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, config)
            idx = perm[s * bs:(s + 1) * bs]
            images = pairs.images[idx].to(dev, non_blocking=pin)
            tokens = pairs.tokens[idx].to(dev, non_blocking=pin)
            with autocast(dev, config.precision == "bf16"):
                img_f = torch.nn.functional.normalize(model.encode_image(images).float(), dim=-1)
                txt_f = torch.nn.functional.normalize(model.encode_text(tokens).float(), dim=-1)
            loss = clip_loss(img_f, txt_f, model.logit_scale)
            if extra_loss is not None:
                loss = loss + extra_loss(img_f, txt_f, pairs.rows[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            losses.append(loss.item())
            if s % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", pairs_s=f"{(s + 1) * bs / (time.perf_counter() - te):.0f}")
        secs = time.perf_counter() - te
        rec = {"epoch": epoch + 1, "loss": sum(losses) / max(1, len(losses)), "seconds": round(secs, 2),
               "pairs_per_s": round(steps_per_epoch * bs / max(secs, 1e-9), 1),
               "logit_scale": float(model.logit_scale.detach().exp())}
        result.history.append(rec)
        if progress:
            tqdm.write(f"epoch {epoch + 1}/{config.epochs}: loss {rec['loss']:.4f}  {rec['pairs_per_s']:.0f} pairs/s")
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(ckpt) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                        "config": asdict(config), "n_pairs": n, "history": result.history}, tmp)
        result.epochs_run += 1
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, rec)
            model.train()
    model.eval()
    result.seconds = time.perf_counter() - t0
    return result
