"""One CLIP training loop: AdamW, linear warm-up + cosine decay, optional gradient clipping,
learned temperature capped at 100, a checkpoint after every epoch, resumable after a kill, seeded.

A killed run restarted with the same arguments continues from the last finished epoch and ends
with the same weights as an uninterrupted run: the data order of epoch e is drawn from a generator
seeded with ``(seed, e)``, and whatever the forward pass draws from torch's global generator (e.g.
dropout) is drawn inside :func:`~clipguard.utils.seeding.seeded_torch_rng` seeded with
``(seed, "epoch-rng", e)``, so the caller's global generator state is left as it was.

With ``record_epochs = E > 0`` the image-caption cosine of every pair is recorded at the end of
each of the first ``E`` epochs to ``out_dir/dynamics.parquet`` (:mod:`clipguard.train.dynamics`);
recording draws no random number and changes no weight, so the trained weights are the same.
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

from clipguard.data.dataset import ImageCaptionDataset, collate_skipping, record_errors
from clipguard.errors import ConfigError, ManifestError
from clipguard.models.factory import ClipBundle
from clipguard.train.dynamics import DYNAMICS_FILE, pair_cosines, write_epoch
from clipguard.train.losses.clip import MAX_LOGIT_SCALE, ExtraLoss, clip_loss
from clipguard.utils.device import PRECISIONS, autocast
from clipguard.utils.io import atomic_path
from clipguard.utils.progress import progress_bar, progress_write
from clipguard.utils.seeding import derive_seed, seeded_torch_rng
from clipguard.utils.validate import check_choice, check_int, check_real

__all__ = ["Pairs", "TrainConfig", "TrainResult", "load_pairs", "lr_at", "train_clip"]

log = logging.getLogger("clipguard")



@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train_clip` (defaults suit the tiny models on the shapes world)."""

    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    grad_clip: float | None = 1.0  # max gradient norm; None or 0: no clipping
    seed: int = 0
    precision: str = "fp32"  # or "bf16": autocast on a GPU (weights and optimiser stay fp32)
    record_epochs: int = 0  # record every pair's image-caption cosine after each of the first N epochs; 0: off

    def check(self) -> "TrainConfig":
        """Return self, or raise ConfigError naming the first setting out of range."""
        check_int("epochs", self.epochs, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1)
        check_real("lr", self.lr, low=0, low_open=True)
        check_real("weight_decay", self.weight_decay, low=0)
        check_int("warmup_steps", self.warmup_steps, minimum=0)
        if self.grad_clip is not None:
            check_real("grad_clip", self.grad_clip, low=0)
        check_int("seed", self.seed)
        check_choice("precision", self.precision, PRECISIONS)
        check_int("record_epochs", self.record_epochs, minimum=0)
        return self


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
    """Image-caption pairs decoded in memory: images (N,3,H,W) float32, tokens (N,L) int64, rows (N,).

    ``rows`` are the pairs' manifest rows; ``ids`` (N,) their manifest ids (None for pairs built by
    hand: the training-dynamics record then uses the row numbers as ids).
    """

    images: torch.Tensor
    tokens: torch.Tensor
    rows: torch.Tensor
    ids: list[str] | None = None


def load_pairs(dataset: ImageCaptionDataset, *, batch_size: int = 512, num_workers: int = 0,
               progress: bool = True, desc: str = "decode") -> Pairs:
    """Decode and preprocess every pair of ``dataset`` once (bad images are skipped and logged).

    The tiny models train far faster from memory than from a loader that re-decodes PNGs every
    epoch; 20k pairs at 32 px take about 250 MB.

    Raises:
        ManifestError: no row of the manifest gives a usable pair (all skipped).
    """
    if dataset.tokenizer is None:
        raise ConfigError("the dataset needs a tokenizer to load pairs (ImageCaptionDataset(..., tokenizer=...))")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_skipping)
    imgs, toks, rows = [], [], []
    with progress_bar(len(loader), desc, unit="batch", enabled=progress) as bar:
        for batch in loader:
            record_errors(batch, dataset)
            if "image" in batch:
                imgs.append(batch["image"])
                toks.append(batch["text"])
                rows.append(batch["index"])
            bar.update(1)
    if not imgs:
        counts = ", ".join(f"{n} {reason}" for reason, n in dataset.skip_log.counts().items()) or "no rows"
        where = dataset.manifest.path or "the manifest"
        raise ManifestError(f"{where}: no usable image-caption pair, all {len(dataset.manifest)} rows skipped "
                            f"({counts}); fix the image paths and captions (skipped.csv lists each row)")
    rows_t = torch.cat(rows)
    ids = dataset.manifest.df["id"].astype(str).to_numpy()[rows_t.numpy()].tolist()
    return Pairs(torch.cat(imgs), torch.cat(toks), rows_t, ids)


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


@dataclass
class _Run:
    """The state of one training run, shared by its epochs."""

    model: torch.nn.Module
    opt: torch.optim.Optimizer
    pairs: Pairs
    config: TrainConfig
    device: torch.device
    batch: int  # pairs per step
    steps_per_epoch: int
    extra_loss: ExtraLoss | None

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.epochs


def _resume(ckpt: Path, run: _Run, result: TrainResult) -> int:
    """Load ``ckpt`` into the run if it was written with the same config and data; returns the start epoch."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    if _weight_settings(state["config"]) != _weight_settings(asdict(run.config)) \
            or state["n_pairs"] != len(run.pairs.rows):
        log.warning("%s was written with another config or data; starting afresh", ckpt)
        return 0
    run.model.load_state_dict(state["model"])
    run.opt.load_state_dict(state["optimizer"])
    result.history = list(state["history"])
    log.info("resuming from %s at epoch %d", ckpt, int(state["epoch"]))
    return int(state["epoch"])


def _weight_settings(config: dict) -> dict:
    """The settings that decide the weights: all but ``record_epochs`` (which only adds a record)."""
    return {k: v for k, v in config.items() if k != "record_epochs"}


def _record(run: _Run, epoch: int, out_dir: Path, progress: bool) -> None:
    """Append epoch ``epoch`` (0-based)'s image-caption cosine of every pair to ``dynamics.parquet``."""
    pairs = run.pairs
    cos = pair_cosines(run.model, pairs.images, pairs.tokens, run.device, batch_size=run.batch,
                       bf16=run.config.precision == "bf16", progress=progress,
                       desc=f"record {epoch + 1}/{run.config.record_epochs}")
    rows = pairs.rows.tolist()
    ids = pairs.ids if pairs.ids is not None else [str(r) for r in rows]
    write_epoch(out_dir / DYNAMICS_FILE, epoch + 1, ids, rows, cos)


def _step(run: _Run, idx: torch.Tensor, step: int) -> float:
    """One optimiser step on the pairs ``idx``; returns the loss."""
    model, pin = run.model, run.device.type == "cuda"
    for g in run.opt.param_groups:
        g["lr"] = lr_at(step, run.total_steps, run.config)
    images = run.pairs.images[idx].to(run.device, non_blocking=pin)
    tokens = run.pairs.tokens[idx].to(run.device, non_blocking=pin)
    with autocast(run.device, run.config.precision == "bf16"):
        img_f = torch.nn.functional.normalize(model.encode_image(images).float(), dim=-1)
        txt_f = torch.nn.functional.normalize(model.encode_text(tokens).float(), dim=-1)
    loss = clip_loss(img_f, txt_f, model.logit_scale)
    if run.extra_loss is not None:
        loss = loss + run.extra_loss(img_f, txt_f, run.pairs.rows[idx])
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    if run.config.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), run.config.grad_clip)
    run.opt.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    return loss.item()


def _epoch(run: _Run, epoch: int, progress: bool) -> dict:
    """Train one epoch (seeded by ``(seed, epoch)``); returns its history record."""
    cfg, bs, n_steps = run.config, run.batch, run.steps_per_epoch
    perm = torch.randperm(len(run.pairs.rows), generator=torch.Generator().manual_seed(
        derive_seed(cfg.seed, "epoch", epoch)))
    losses, te = [], time.perf_counter()
    with seeded_torch_rng(derive_seed(cfg.seed, "epoch-rng", epoch), run.device), \
            progress_bar(n_steps, f"epoch {epoch + 1}/{cfg.epochs}", unit="step", enabled=progress) as bar:
        for s in range(n_steps):
            losses.append(_step(run, perm[s * bs:(s + 1) * bs], epoch * n_steps + s))
            bar.update(1)
            if s % 10 == 0:
                bar.set_postfix(loss=f"{losses[-1]:.3f}", pairs_s=f"{(s + 1) * bs / (time.perf_counter() - te):.0f}")
    secs = time.perf_counter() - te
    return {"epoch": epoch + 1, "loss": sum(losses) / max(1, len(losses)), "seconds": round(secs, 2),
            "pairs_per_s": round(n_steps * bs / max(secs, 1e-9), 1),
            "logit_scale": float(run.model.logit_scale.detach().exp())}


def _save_checkpoint(ckpt: Path, run: _Run, epoch: int, history: list[dict]) -> None:
    """Weights, optimiser, epoch, config and history, written atomically."""
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(ckpt) as tmp:
        torch.save({"model": run.model.state_dict(), "optimizer": run.opt.state_dict(), "epoch": epoch,
                    "config": asdict(run.config), "n_pairs": len(run.pairs.rows), "history": history}, tmp)


def _start(bundle: ClipBundle, pairs: Pairs, config: TrainConfig, device: str | torch.device | None,
           extra_loss: ExtraLoss | None) -> _Run:
    """Check the config, move the model, build the optimiser and the step counts."""
    config.check()
    if device is not None:
        bundle.to(device)
    dev = bundle.device
    if config.precision == "bf16" and dev.type != "cuda":
        raise ConfigError("precision bf16 needs a CUDA device (bf16 on a CPU is about 10x slower than fp32); "
                          "use --precision fp32 or --device cuda")
    n = len(pairs.rows)
    bs = min(config.batch_size, n)
    opt = torch.optim.AdamW(_param_groups(bundle.model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98),
                            eps=1e-6)
    # drop the ragged last batch: contrastive batches should be full
    return _Run(bundle.model, opt, pairs, config, dev, bs, n // bs, extra_loss)


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
            after every epoch) and, with ``config.record_epochs > 0``, ``dynamics.parquet`` (rows
            ``id, row, epoch, cosine``: see :mod:`clipguard.train.dynamics`).
        resume: continue from ``checkpoints/state.pt`` if present and written with the same config
            (``record_epochs`` aside); the epochs already in ``dynamics.parquet`` are kept.
        extra_loss: optional term added to the loss (see :data:`clipguard.train.losses.ExtraLoss`).
        on_epoch_end: optional ``f(epoch, record)`` called after each epoch's checkpoint, with the
            model in train mode (e.g. to log zero-shot accuracy per epoch).
        device: where to train (``None``: where the model already is; "auto": the GPU if there is
            one). ``pairs`` stay in host memory; each batch is copied to the device. Runs on a GPU
            are seeded but not bit-identical to CPU runs.

    Returns:
        A :class:`TrainResult` with per-epoch mean loss, pairs/s and logit scale.

    Raises:
        ConfigError: a setting out of range, or bf16 without a CUDA device.
    """
    run = _start(bundle, pairs, config, device, extra_loss)
    ckpt = Path(out_dir) / "checkpoints" / "state.pt"
    result = TrainResult(epochs_run=0, n_pairs=len(pairs.rows))
    start_epoch = _resume(ckpt, run, result) if resume and ckpt.is_file() else 0
    if start_epoch == 0:  # a fresh run: a record left in the folder belongs to another run
        (Path(out_dir) / DYNAMICS_FILE).unlink(missing_ok=True)
    t0 = time.perf_counter()
    run.model.train()
    for epoch in range(start_epoch, config.epochs):
        rec = _epoch(run, epoch, progress)
        result.history.append(rec)
        if epoch < config.record_epochs:  # before the checkpoint: a kill in between re-records this epoch
            _record(run, epoch, Path(out_dir), progress)
        progress_write(f"epoch {epoch + 1}/{config.epochs}: loss {rec['loss']:.4f}  {rec['pairs_per_s']:.0f} pairs/s",
                       enabled=progress)
        _save_checkpoint(ckpt, run, epoch + 1, result.history)
        result.epochs_run += 1
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, rec)
            run.model.train()
    run.model.eval()
    result.seconds = time.perf_counter() - t0
    return result
