"""The supervised-finetuning control of CleanCLIP (REFERENCE.md section 6): a linear head on the
image encoder, trained with cross-entropy on labelled clean images.

``Objective([(1, SupervisedTerm(embed_dim, n_classes))])`` finetunes the image encoder (and the
head, whose parameters the trainer adds to the optimiser) on the manifest's ``label`` column.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from clipguard.errors import ConfigError
from clipguard.train.objective import StepInputs
from clipguard.utils.seeding import derive_seed, seeded_torch_rng
from clipguard.utils.validate import check_int

__all__ = ["SupervisedTerm"]


class SupervisedTerm(torch.nn.Module):
    """Cross-entropy of a linear head on the raw image embedding, as a
    :class:`~clipguard.train.objective.LossTerm` (``needs`` image_raw, label).

    Args:
        embed_dim: D, the width of the model's image embedding (``image_raw`` is (B, D)).
        n_classes: C, the number of classes; labels are int64 in [0, C).
        seed: seed of the head's initialisation (the same seed gives the same head).

    The head (``self.head``, ``Linear(D, C)``) moves to the inputs' device on first use;
    :meth:`parameters` yields its weight and bias.
    """

    name = "supervised"
    needs = frozenset({"image_raw", "label"})

    def __init__(self, embed_dim: int, n_classes: int, seed: int = 0) -> None:
        super().__init__()
        self.embed_dim = check_int("supervised embed_dim", embed_dim, minimum=1)
        self.n_classes = check_int("supervised n_classes", n_classes, minimum=2)
        self.seed = check_int("supervised seed", seed, minimum=0)
        with seeded_torch_rng(derive_seed(self.seed, "supervised head")):
            self.head = torch.nn.Linear(self.embed_dim, self.n_classes)

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        """Scalar mean cross-entropy of ``head(image_raw)`` (B, C) against ``label`` (B,)."""
        feats, labels = inputs["image_raw"], inputs["label"]
        if feats.shape[-1] != self.embed_dim:
            raise ConfigError(f"the supervised head expects {self.embed_dim}-d image embeddings, got "
                              f"{feats.shape[-1]}; pass the model's embed_dim")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.n_classes):
            raise ConfigError(f"column `label` holds class {int(labels.min())}..{int(labels.max())} but the "
                              f"head has {self.n_classes} classes; labels must be integers in [0, n_classes)")
        if self.head.weight.device != feats.device:
            self.head.to(feats.device)
        return F.cross_entropy(self.head(feats.float()), labels.long())

    def describe(self) -> dict[str, Any]:
        return {"n_classes": self.n_classes, "embed_dim": self.embed_dim, "seed": self.seed}
