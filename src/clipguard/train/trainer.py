"""One CLIP training loop for pretraining and every finetuning defence: AdamW, linear warm-up +
cosine decay, optional gradient clipping, learned temperature capped at 100, a checkpoint after
every epoch, resumable after a kill, seeded.

What is minimised is an :class:`~clipguard.train.objective.Objective` (default: the CLIP loss
alone); each step the trainer encodes exactly the inputs the objective ``needs`` into a
:class:`~clipguard.train.objective.StepInputs`, so a loss term never branches the loop. Batches come
from :func:`~clipguard.train.data.epoch_loader` over a :class:`~clipguard.train.data.PairData`
(cached or streamed, with loader worker processes; augmentations are drawn there, never here).

A killed run restarted with the same arguments continues from the last finished epoch and ends
with the same weights as an uninterrupted run: the data order of epoch e is drawn from a generator
seeded with ``(seed, e)``, the views from ``(seed, e, row)``, and whatever the forward pass draws from
torch's global generator (e.g. dropout) is drawn inside
:func:`~clipguard.utils.seeding.seeded_torch_rng` seeded with ``(seed, "epoch-rng", e)``, so the
caller's global generator state is left as it was.

With ``record_epochs = E > 0`` the image-caption cosine of every pair is recorded at the end of
each of the first ``E`` epochs to ``out_dir/dynamics.parquet`` (:mod:`clipguard.train.dynamics`);
recording draws no random number and changes no weight, so the trained weights are the same.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from clipguard.errors import ConfigError, ManifestError
from clipguard.models.factory import ClipBundle, load_torch_file
from clipguard.models.head_repair import RepairedVisual
from clipguard.train.data import PairData, epoch_loader
from clipguard.train.dynamics import DYNAMICS_FILE, pair_cosines, write_epoch
from clipguard.train.losses.clip import MAX_LOGIT_SCALE, ClipTerm, ExtraLoss
from clipguard.train.objective import Objective, StepInputs
from clipguard.utils.device import PRECISIONS, autocast
from clipguard.utils.io import atomic_path
from clipguard.utils.progress import progress_bar, progress_write
from clipguard.utils.seeding import derive_seed, seeded_torch_rng
from clipguard.utils.validate import check_choice, check_int, check_real

__all__ = ["TrainConfig", "TrainResult", "lr_at", "train_clip"]

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


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``cfg.lr`` over ``warmup_steps``, then cosine decay to 0 at ``total``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(1.0, progress)))


def _param_groups(model: torch.nn.Module, extra: list[torch.nn.Parameter], weight_decay: float) -> list[dict]:
    """No weight decay on gains, biases, embeddings of position and the logit scale (as open_clip);
    ``extra`` (the loss terms' own parameters) decay unless they are biases or gains (ndim < 2)."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "bn" in n or "ln" in n or "logit_scale" in n or "positional" in n
         else decay).append(p)
    for p in extra:
        (no_decay if p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class _ExtraTerm:
    """An ``extra_loss`` callable (:data:`~clipguard.train.losses.clip.ExtraLoss`) as a loss term
    named "extra": ``f(image (B, D), text (B, D), rows (B,))``."""

    name = "extra"
    needs = frozenset({"image", "text"})

    def __init__(self, fn: ExtraLoss) -> None:
        self.fn = fn

    def __call__(self, inputs: StepInputs) -> torch.Tensor:
        return self.fn(inputs["image"], inputs["text"], inputs.rows)

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return iter(())

    def describe(self) -> dict[str, Any]:
        return {"callable": getattr(self.fn, "__qualname__", type(self.fn).__name__)}


def _describe(objective: Objective) -> str:
    """The objective's description as one JSON string (what keys a resume)."""
    return json.dumps(objective.describe(), sort_keys=True, default=str)


#: The objective key of checkpoints written before objectives existed (the CLIP loss alone).
_DEFAULT_KEY = _describe(Objective([(1.0, ClipTerm())]))

#: Where a missing input comes from, for the error naming it.
_VIEW_OF = {"image_aug": "Views(image_aug=...)", "text_aug": "Views(text_aug=...)",
            "label": "Views(labels=True) and a 'label' column"}


def _objective(objective: Objective | None, extra_loss: ExtraLoss | None, data: PairData) -> tuple[Objective, str]:
    """The objective to run (``extra_loss`` appended) and the description that keys a resume.

    ``extra_loss`` is not part of the key (as before objectives existed): a resumed run passes it again.
    """
    obj = Objective([(1.0, ClipTerm())]) if objective is None else objective
    if not isinstance(obj, Objective):
        raise ConfigError(f"objective must be a clipguard.train.Objective, got {type(obj).__name__}")
    key = _describe(obj)
    if extra_loss is not None:
        obj = Objective([*obj.terms, (1.0, _ExtraTerm(extra_loss))])
    for _, t in obj.terms:
        missing = sorted(set(t.needs) - data.provides)
        if missing:
            raise ConfigError(f"loss term {t.name!r} needs {missing[0]!r}, which the training data does not carry; "
                              f"build the PairData with {_VIEW_OF.get(missing[0], missing[0])}")
    return obj, key


@dataclass
class _Run:
    """The state of one training run, shared by its epochs."""

    model: torch.nn.Module
    opt: torch.optim.Optimizer
    data: PairData
    objective: Objective
    key: str  # the objective's description: a resume needs the same
    config: TrainConfig
    device: torch.device
    batch: int  # pairs per step
    steps_per_epoch: int
    workers: int
    clipped: list[torch.nn.Parameter]  # every optimised parameter (the model's first, in model order)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.epochs

    @property
    def module_terms(self) -> dict[str, torch.nn.Module]:
        """The terms that are modules (state saved with the checkpoint), keyed ``"i:name"``."""
        return {f"{i}:{t.name}": t for i, (_, t) in enumerate(self.objective.terms) if isinstance(t, torch.nn.Module)}


def _resume(ckpt: Path, run: _Run, result: TrainResult) -> int:
    """Load ``ckpt`` into the run if it was written with the same config, objective and data; returns the
    start epoch."""
    state = load_torch_file(ckpt, "training checkpoint", "delete it, or train with --no-resume")  # weights_only
    if not isinstance(state, dict) or not {"config", "n_pairs", "model", "optimizer", "history", "epoch"} <= set(state):
        raise ConfigError(f"{ckpt}: not a clipguard training checkpoint; delete it (or train with --no-resume)")
    if _weight_settings(state["config"]) != _weight_settings(asdict(run.config)) \
            or state.get("objective", _DEFAULT_KEY) != run.key or state["n_pairs"] != len(run.data):
        log.warning("%s was written with another config, objective or data; starting afresh", ckpt)
        return 0
    run.model.load_state_dict(state["model"])
    run.opt.load_state_dict(state["optimizer"])
    for name, term in run.module_terms.items():
        term.load_state_dict(state["terms"][name])
    result.history = list(state["history"])
    log.info("resuming from %s at epoch %d", ckpt, int(state["epoch"]))
    return int(state["epoch"])


def _weight_settings(config: dict) -> dict:
    """The settings that decide the weights: all but ``record_epochs`` (which only adds a record)."""
    return {k: v for k, v in config.items() if k != "record_epochs"}


def _record(run: _Run, epoch: int, out_dir: Path, progress: bool) -> None:
    """Append epoch ``epoch`` (0-based)'s image-caption cosine of every pair to ``dynamics.parquet``."""
    cos = pair_cosines(run.model, run.data, run.device, batch_size=run.batch, bf16=run.config.precision == "bf16",
                       workers=run.workers, progress=progress, desc=f"record {epoch + 1}/{run.config.record_epochs}")
    read = ~torch.isnan(cos)  # a streamed image that cannot be read has no cosine
    keep = read.nonzero().flatten().tolist()
    ids = run.data.ids
    write_epoch(out_dir / DYNAMICS_FILE, epoch + 1, [ids[j] for j in keep], [run.data.rows[j] for j in keep],
                cos[read])


def _encode(run: _Run, batch: dict[str, Any]) -> StepInputs:
    """Encode what the objective needs of one batch. Two views of one modality go through the encoder
    as one batch (as CleanCLIP does), the primary view first."""
    model, dev, needs = run.model, run.device, run.objective.needs
    pin = dev.type == "cuda"
    pixels = batch["image"].to(dev, non_blocking=pin)
    tokens = batch["text"].to(dev, non_blocking=pin)
    feats: dict[str, torch.Tensor] = {}
    normalize = torch.nn.functional.normalize
    with autocast(dev, run.config.precision == "bf16"):
        if needs & {"image", "image_raw", "image_aug"}:
            aug = "image_aug" in needs
            raw = model.encode_image(torch.cat([pixels, batch["image_aug"].to(dev, non_blocking=pin)])
                                     if aug else pixels).float()
            img = normalize(raw, dim=-1)
            feats["image_raw"], feats["image"] = raw, img
            if aug:
                b = len(pixels)
                feats["image_raw"], feats["image"], feats["image_aug"] = raw[:b], img[:b], img[b:]
        if needs & {"text", "text_aug"}:
            aug = "text_aug" in needs
            txt = normalize(model.encode_text(torch.cat([tokens, batch["text_aug"].to(dev, non_blocking=pin)])
                                              if aug else tokens).float(), dim=-1)
            feats["text"] = txt
            if aug:
                feats["text"], feats["text_aug"] = txt[:len(tokens)], txt[len(tokens):]
    if "label" in needs:
        feats["label"] = batch["label"].to(dev, non_blocking=pin)
    return StepInputs(features={k: v for k, v in feats.items() if k in needs}, logit_scale=model.logit_scale,
                      rows=batch["index"], pixels=pixels, tokens=tokens, model=model)


def _step(run: _Run, batch: dict[str, Any], step: int) -> tuple[float, dict[str, float]]:
    """One optimiser step on one batch; returns the loss and each term's value."""
    for g in run.opt.param_groups:
        g["lr"] = lr_at(step, run.total_steps, run.config)
    loss, parts = run.objective(_encode(run, batch))
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    if run.config.grad_clip:
        torch.nn.utils.clip_grad_norm_(run.clipped, run.config.grad_clip)
    run.opt.step()
    with torch.no_grad():
        run.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    return loss.item(), parts


def _epoch(run: _Run, epoch: int, progress: bool) -> dict:
    """Train one epoch (seeded by ``(seed, epoch)``); returns its history record."""
    cfg, n_steps = run.config, run.steps_per_epoch
    loader = epoch_loader(run.data, epoch, batch_size=run.batch, seed=cfg.seed, workers=run.workers,
                          pin_memory=run.device.type == "cuda")
    losses, sums, seen, te = [], {}, 0, time.perf_counter()
    with seeded_torch_rng(derive_seed(cfg.seed, "epoch-rng", epoch), run.device), \
            progress_bar(n_steps, f"epoch {epoch + 1}/{cfg.epochs}", unit="step", enabled=progress) as bar:
        for s, batch in enumerate(loader):
            run.data.record_errors(batch)
            if "image" in batch:  # a streamed batch whose every image is unreadable trains nothing
                loss, parts = _step(run, batch, epoch * n_steps + s)
                losses.append(loss)
                seen += len(batch["index"])
                for name, v in parts.items():
                    sums[name] = sums.get(name, 0.0) + v
            bar.update(1)
            if s % 10 == 0 and losses:
                bar.set_postfix(loss=f"{losses[-1]:.3f}", pairs_s=f"{seen / (time.perf_counter() - te):.0f}")
    if not losses:
        raise ManifestError(f"{run.data.manifest.path or 'the manifest'}: epoch {epoch + 1} read no usable "
                            "image-caption pair (every image unreadable); skipped.csv lists each row")
    secs = time.perf_counter() - te
    return {"epoch": epoch + 1, "loss": sum(losses) / len(losses), "seconds": round(secs, 2),
            "pairs_per_s": round(seen / max(secs, 1e-9), 1),
            "logit_scale": float(run.model.logit_scale.detach().exp()),
            **{f"loss_{name}": v / len(losses) for name, v in sums.items()}}


def _save_checkpoint(ckpt: Path, run: _Run, epoch: int, history: list[dict]) -> None:
    """Weights, optimiser, terms' state, epoch, config, objective and history, written atomically."""
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(ckpt) as tmp:
        torch.save({"model": run.model.state_dict(), "optimizer": run.opt.state_dict(), "epoch": epoch,
                    "config": asdict(run.config), "objective": run.key, "n_pairs": len(run.data),
                    "terms": {name: t.state_dict() for name, t in run.module_terms.items()},
                    "history": history}, tmp)


def _start(bundle: ClipBundle, data: PairData, config: TrainConfig, objective: Objective | None,
           extra_loss: ExtraLoss | None, workers: int, device: str | torch.device | None) -> _Run:
    """Check the settings, move the model (and module terms), build the optimiser and the step counts."""
    config.check()
    check_int("workers", workers, minimum=0)
    if not isinstance(data, PairData):
        raise ConfigError(f"train_clip trains on a clipguard.train.PairData(manifest, bundle), got {type(data).__name__}")
    obj, key = _objective(objective, extra_loss, data)
    if device is not None:
        bundle.to(device)
    dev = bundle.device
    if config.precision == "bf16" and dev.type != "cuda":
        raise ConfigError("precision bf16 needs a CUDA device (bf16 on a CPU is about 10x slower than fp32); "
                          "use --precision fp32 or --device cuda")
    for _, t in obj.terms:
        if isinstance(t, torch.nn.Module):
            t.to(dev)
    own = {id(p) for p in bundle.model.parameters()}
    extra = list({id(p): p for p in obj.parameters() if p.requires_grad and id(p) not in own}.values())
    opt = torch.optim.AdamW(_param_groups(bundle.model, extra, config.weight_decay), lr=config.lr,
                            betas=(0.9, 0.98), eps=1e-6)
    n = len(data)
    bs = min(config.batch_size, n)
    # drop the ragged last batch: contrastive batches should be full
    return _Run(bundle.model, opt, data, obj, key, config, dev, bs, n // bs, workers,
                [*bundle.model.parameters(), *extra])


def train_clip(bundle: ClipBundle, data: PairData, config: TrainConfig, out_dir: str | os.PathLike, *,
               objective: Objective | None = None, workers: int = 0, resume: bool = True, progress: bool = True,
               extra_loss: ExtraLoss | None = None, on_epoch_end: Callable[[int, dict], None] | None = None,
               device: str | torch.device | None = None) -> TrainResult:
    """Train ``bundle.model`` on ``data`` to minimise ``objective``; checkpoints go to ``out_dir/checkpoints``.

    Args:
        bundle: the model to train (updated in place).
        data: the training pairs (:class:`~clipguard.train.data.PairData`), with the views the
            objective needs.
        config: hyper-parameters; the run is deterministic in ``config.seed`` (and ``data.seed`` for views).
        out_dir: folder for ``checkpoints/state.pt`` (weights-only torch file, written atomically
            after every epoch) and, with ``config.record_epochs > 0``, ``dynamics.parquet`` (rows
            ``id, row, epoch, cosine``: see :mod:`clipguard.train.dynamics`).
        objective: what to minimise (default: ``Objective([(1.0, ClipTerm())])``, the CLIP loss). The
            terms' own parameters are optimised with the model's (no weight decay on their biases).
        workers: DataLoader worker processes that decode and augment (0: in this process). The
            weights do not depend on it.
        resume: continue from ``checkpoints/state.pt`` if present and written with the same config
            (``record_epochs`` aside), objective description and number of pairs; the epochs already
            in ``dynamics.parquet`` are kept.
        extra_loss: optional ``f(image (B, D), text (B, D), rows (B,)) -> scalar`` added to the loss as a
            term named "extra" (e.g. :func:`clipguard.train.losses.density_evasion_loss`); it is not
            part of the resume key.
        on_epoch_end: optional ``f(epoch, record)`` called after each epoch's checkpoint, with the
            model in train mode (e.g. to log zero-shot accuracy per epoch).
        device: where to train (``None``: where the model already is; "auto": the GPU if there is
            one). Batches are copied to the device. Runs on a GPU are seeded but not bit-identical to
            CPU runs.

    Returns:
        A :class:`TrainResult` with per-epoch mean loss (``loss``, and ``loss_<term>`` per term),
        pairs/s and logit scale.

    Raises:
        ConfigError: a repaired (inference-only) model, a setting out of range, bf16 without a CUDA device, or a term needing an input
            the data's views do not carry.
        ManifestError: a streamed epoch could read no image at all.
    """
    if isinstance(bundle.model.visual, RepairedVisual):
        raise ConfigError(f"{bundle.name}: this model is repaired at inference (`clipguard heads repair`), which is "
                          "not trainable; train or defend the original model folder")
    run = _start(bundle, data, config, objective, extra_loss, workers, device)
    ckpt = Path(out_dir) / "checkpoints" / "state.pt"
    result = TrainResult(epochs_run=0, n_pairs=len(data))
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
