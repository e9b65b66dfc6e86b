"""Trigger reverse-engineering against a zero-shot target (Neural Cleanse / DECREE style), the core of issue 12.

Find a mask ``m`` (H, W) and a pattern ``p`` (3, H, W), both in [0, 1] through a sigmoid, such that
clean images stamped as ``x' = (1 - m) * x + m * p`` are classified as the target caption by the
model's zero-shot head (the target's text embedding among the other classes' embeddings), with an L1
penalty on the mask. The penalty's weight adapts as in Neural Cleanse: after ``patience`` steps above
the success threshold it grows by ``cost_step``, after ``patience`` steps below it shrinks, so the search
ends near the smallest mask that still sends the images to the target. A real backdoor needs a small
mask; a natural class needs a large one.

With ``max_mask`` set, the search answers the converse question -- how far can a mask of at most that size
get? -- as the controls of an audit need: the adaptive weight is replaced by a hinge
``budget_weight * max(0, L1 - max_mask)`` and the best trigger is the most successful one within the budget.

Images are in pixel space, (N, 3, H, W) in [0, 1] at the model's input size; the model's normalisation
(CLIP mean / std) is applied inside. Scores: ``success`` = share of images sent to the target.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from clipguard.errors import ConfigError
from clipguard.utils.progress import progress_bar
from clipguard.utils.validate import check_int, check_real

__all__ = ["ReverseConfig", "ReversedTrigger", "clip_normalise", "reverse_trigger"]



@dataclass
class ReverseConfig:
    """Settings of :func:`reverse_trigger`."""

    steps: int = 300
    lr: float = 0.1
    batch_size: int = 64
    init_cost: float = 1e-3
    cost_step: float = 1.5
    patience: int = 5
    target_success: float = 0.9
    logit_scale: float = 100.0
    max_mask: float | None = None
    budget_weight: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_mask is not None:
            check_real("max_mask", self.max_mask, low=0.0, high=1.0, low_open=True)
        check_int("steps", self.steps, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1)
        check_int("patience", self.patience, minimum=1)
        check_real("lr", self.lr, low=0.0, low_open=True)
        check_real("init_cost", self.init_cost, low=0.0)
        check_real("cost_step", self.cost_step, low=1.0, low_open=True)
        check_real("target_success", self.target_success, low=0.0, high=1.0, low_open=True)


@dataclass
class ReversedTrigger:
    """A reversed trigger: mask (H, W) and pattern (H, W, 3), both in [0, 1].

    Attributes:
        mask_l1: mean of the best mask (share of the image it covers).
        success: share of the optimisation images sent to the target by the best trigger.
        history: per-step loss, cross-entropy, mask L1, success and penalty weight.
    """

    mask: np.ndarray
    pattern: np.ndarray
    mask_l1: float
    success: float
    history: list[dict[str, Any]] = field(default_factory=list)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """Stamp (N, 3, H, W) pixel images in [0, 1]."""
        m = torch.from_numpy(self.mask).to(images)
        p = torch.from_numpy(self.pattern).permute(2, 0, 1).to(images)
        return (1 - m) * images + m * p


def clip_normalise(x: torch.Tensor) -> torch.Tensor:
    """Pixel images (N, 3, H, W) in [0, 1] -> CLIP-normalised model input."""
    mean = torch.tensor(OPENAI_DATASET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _arrays(m: torch.Tensor, p: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(mask (H, W), pattern (H, W, 3)) as float32 arrays."""
    return (m.detach().cpu()[0, 0].numpy().astype(np.float32),
            p.detach().cpu()[0].permute(1, 2, 0).numpy().astype(np.float32))


def _step_weight(cost: float, above: int, below: int, cfg: ReverseConfig) -> tuple[float, int, int]:
    """Neural Cleanse's schedule: grow the penalty after ``patience`` successful steps, shrink it after
    ``patience`` failed ones."""
    if above >= cfg.patience:
        return (cost * cfg.cost_step if cost > 0 else cfg.init_cost), 0, 0
    if below >= cfg.patience:
        return cost / cfg.cost_step, 0, 0
    return cost, above, below


def _penalty(l1: torch.Tensor, cost: float, cfg: ReverseConfig, pixels: int) -> torch.Tensor:
    """The mask term of the loss: adaptive L1, or the hinge above ``max_mask``."""
    if cfg.max_mask is None:
        return cost * l1 * pixels
    return cfg.budget_weight * torch.relu(l1 - cfg.max_mask) * pixels


def _better(best: tuple | None, l1: float, success: float, cfg: ReverseConfig) -> bool:
    """Whether a step's trigger replaces the best so far: the smallest successful mask, or (with a budget) the
    most successful mask within 5 % of the budget."""
    if cfg.max_mask is None:
        return success >= cfg.target_success and (best is None or l1 < best[0])
    return l1 <= 1.05 * cfg.max_mask and (best is None or success > best[3] or (success == best[3] and l1 < best[0]))


def reverse_trigger(model: torch.nn.Module, images: torch.Tensor, classifier: torch.Tensor, target: int, *,
                    config: ReverseConfig = ReverseConfig(), progress: bool = True) -> ReversedTrigger:
    """Optimise a mask and pattern that send ``images`` to class ``target``.

    Args:
        model: an open_clip CLIP (``encode_image``); its weights are not changed.
        images: (N, 3, H, W) clean pixel images in [0, 1].
        classifier: (C, D) L2-normalised zero-shot class embeddings, the target among them.
        target: row of ``classifier`` to reach.

    Raises:
        ConfigError: no images, pixel values outside [0, 1], or ``target`` not a row of ``classifier``.
    """
    if images.dim() != 4 or images.shape[1] != 3 or len(images) == 0:
        raise ConfigError(f"reverse_trigger needs (N, 3, H, W) images, got {tuple(images.shape)}")
    if float(images.min()) < 0 or float(images.max()) > 1:
        raise ConfigError("reverse_trigger needs pixel images in [0, 1] (before the CLIP normalisation)")
    if not 0 <= target < len(classifier):
        raise ConfigError(f"target {target} is not one of the {len(classifier)} classes")
    dev = next(model.parameters()).device
    gen = torch.Generator().manual_seed(config.seed)
    H, W = images.shape[2:]
    theta_m = torch.full((1, 1, H, W), -3.0, device=dev, requires_grad=True)
    theta_p = (0.1 * torch.randn(1, 3, H, W, generator=gen)).to(dev).requires_grad_(True)
    opt = torch.optim.Adam([theta_m, theta_p], lr=config.lr, betas=(0.5, 0.9))
    clf = classifier.to(dev).float()
    cost, above, below = config.init_cost, 0, 0
    best: tuple[float, np.ndarray, np.ndarray, float] | None = None
    history = []
    requires = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        with progress_bar(config.steps, "reverse trigger", unit="step", enabled=progress) as bar:
            for step in range(config.steps):
                idx = torch.randint(0, len(images), (min(config.batch_size, len(images)),), generator=gen)
                x = images[idx].to(dev)
                m, p = torch.sigmoid(theta_m), torch.sigmoid(theta_p)
                emb = F.normalize(model.encode_image(clip_normalise((1 - m) * x + m * p)).float(), dim=-1)
                logits = config.logit_scale * emb @ clf.t()
                ce = F.cross_entropy(logits, torch.full((len(x),), target, device=dev))
                l1 = m.mean()
                loss = ce + _penalty(l1, cost, config, H * W)
                opt.zero_grad()
                loss.backward()
                opt.step()
                success = float((logits.argmax(1) == target).float().mean())
                history.append({"step": step, "loss": loss.item(), "ce": ce.item(), "mask_l1": l1.item(),
                                "success": success, "cost": cost})
                if _better(best, l1.item(), success, config):
                    best = (l1.item(), *_arrays(m, p), success)
                above, below = (above + 1, 0) if success >= config.target_success else (0, below + 1)
                cost, above, below = _step_weight(cost, above, below, config)
                bar.update(1)
    finally:
        for param, r in zip(model.parameters(), requires):
            param.requires_grad_(r)
    if best is None:  # never reached the threshold: report the last trigger
        best = (history[-1]["mask_l1"], *_arrays(torch.sigmoid(theta_m), torch.sigmoid(theta_p)),
                history[-1]["success"])
    return ReversedTrigger(mask=best[1], pattern=best[2], mask_l1=best[0], success=best[3], history=history)
