"""A ViT image tower repaired at inference: infected heads and late MLPs replaced by clean means.

The repair of "A Closer Look at Backdoor Attacks on CLIP": decompose each image's embedding into
per-head and per-MLP terms (:mod:`clipguard.models.decompose`); a head whose term has a score
``<c_h(x), mu_h> <= eps_h`` against its clean prototype ``mu_h`` is *infected* for that input and its term
is replaced by ``mu_h``; the MLP terms of the chosen blocks are replaced by their clean means for
every input; the terms are summed again. No weight changes, no retraining.

:class:`RepairedVisual` wraps ``model.visual`` so that the repaired model is used wherever a model is
(``encode_image``); :func:`split_state` and :func:`attach_repair` let the model folder keep the
original weights under their own names plus ``repair.safetensors``. It is inference-only (the
decomposition runs without gradients).

Shapes: L blocks, H heads per block, D output dim.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from clipguard.errors import ConfigError
from clipguard.models.decompose import Decomposition, decompose_images, tower_shape

__all__ = ["HeadRepair", "RepairedVisual", "attach_repair", "head_scores", "mlp_scores", "repaired_sum",
           "split_state"]


def head_scores(d: Decomposition, prototypes: torch.Tensor) -> torch.Tensor:
    """(B, L, H) ``<c_h(x), mu_h>`` of every head term with its prototype (L, H, D); lower = more infected."""
    return (d.heads * prototypes.to(d.heads)).sum(-1)


def mlp_scores(d: Decomposition, means: torch.Tensor) -> torch.Tensor:
    """(B, L) ``<m_l(x), mean_l>`` of every MLP term with its clean mean (L, D); lower = more infected."""
    return (d.mlps * means.to(d.mlps)).sum(-1)


@dataclass
class HeadRepair:
    """What a repair replaces.

    Attributes:
        head_prototypes: (L, H, D) mean head terms over clean images.
        head_eps: (L, H) a head is infected for x when its score is <= eps (``-inf``: never).
        mlp_means: (L, D) mean MLP terms over clean images.
        mlp_layers: blocks whose MLP term is replaced by its mean for every input.
        info: JSON-able record (calibration, how the layers were chosen), kept in ``model.json``.
    """

    head_prototypes: torch.Tensor
    head_eps: torch.Tensor
    mlp_means: torch.Tensor
    mlp_layers: tuple[int, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        L, H, D = self.head_prototypes.shape
        if self.head_eps.shape != (L, H) or self.mlp_means.shape != (L, D):
            raise ConfigError(f"head repair: shapes disagree (prototypes {tuple(self.head_prototypes.shape)}, "
                              f"eps {tuple(self.head_eps.shape)}, MLP means {tuple(self.mlp_means.shape)})")
        bad = [i for i in self.mlp_layers if not 0 <= int(i) < L]
        if bad:
            raise ConfigError(f"head repair: MLP layers {bad} out of range 0..{L - 1}")
        self.mlp_layers = tuple(sorted({int(i) for i in self.mlp_layers}))

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors to store (``repair.safetensors``)."""
        return {"head_prototypes": self.head_prototypes.float().contiguous().cpu(),
                "head_eps": self.head_eps.float().contiguous().cpu(),
                "mlp_means": self.mlp_means.float().contiguous().cpu()}

    def record(self) -> dict[str, Any]:
        """The JSON part (``model.json["repair"]``)."""
        return {"mlp_layers": list(self.mlp_layers), **self.info}

    @classmethod
    def from_parts(cls, tensors: dict[str, torch.Tensor], record: dict[str, Any]) -> "HeadRepair":
        try:
            info = {k: v for k, v in record.items() if k != "mlp_layers"}
            return cls(tensors["head_prototypes"], tensors["head_eps"], tensors["mlp_means"],
                       tuple(record.get("mlp_layers", ())), info)
        except KeyError as exc:
            raise ConfigError(f"repair.safetensors lacks {exc}; write the folder with `clipguard heads repair`") from None


def repaired_sum(d: Decomposition, repair: HeadRepair) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-sum the terms of ``d`` with ``repair`` applied.

    Returns:
        ((B, D) repaired unnormalised embeddings, (B, L, H) bool mask of the infected heads).
    """
    protos = repair.head_prototypes.to(d.heads)
    infected = head_scores(d, protos) <= repair.head_eps.to(d.heads)
    heads = torch.where(infected.unsqueeze(-1), protos.expand_as(d.heads), d.heads)
    mlps = d.mlps.clone()
    if repair.mlp_layers:
        idx = list(repair.mlp_layers)
        mlps[:, idx] = repair.mlp_means.to(mlps)[idx]
    return d.embedding + heads.sum((1, 2)) + mlps.sum(1) + d.bias, infected


class RepairedVisual(torch.nn.Module):
    """``model.visual`` with a :class:`HeadRepair` applied to every image (inference only).

    ``forward(images (B, 3, H, W)) -> (B, D)`` unnormalised embeddings, like the tower it wraps.
    """

    def __init__(self, visual: torch.nn.Module, repair: HeadRepair) -> None:
        super().__init__()
        L, H, D = tower_shape(visual)
        if tuple(repair.head_prototypes.shape) != (L, H, D):
            raise ConfigError(f"head repair of shape {tuple(repair.head_prototypes.shape)} does not fit this "
                              f"tower ({L} blocks x {H} heads, output {D})")
        self.inner = visual
        self.repair = repair
        for name, t in repair.tensors().items():
            self.register_buffer(name, t.to(next(visual.parameters()).device), persistent=False)

    def current(self) -> HeadRepair:
        """The repair with its tensors on the module's device."""
        return HeadRepair(self.head_prototypes, self.head_eps, self.mlp_means, self.repair.mlp_layers,
                          self.repair.info)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return repaired_sum(decompose_images(self.inner, images), self.current())[0]


def attach_repair(model: torch.nn.Module, repair: HeadRepair) -> torch.nn.Module:
    """Wrap ``model.visual`` (unwrapping an earlier repair first); returns ``model``."""
    visual = model.visual.inner if isinstance(model.visual, RepairedVisual) else model.visual
    model.visual = RepairedVisual(visual, repair)
    return model


def split_state(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], HeadRepair | None]:
    """(state dict under the original open_clip names, the repair or None) of a possibly repaired model."""
    state = {k.replace("visual.inner.", "visual.", 1): v for k, v in model.state_dict().items()}
    repair = model.visual.current() if isinstance(model.visual, RepairedVisual) else None
    return state, repair
