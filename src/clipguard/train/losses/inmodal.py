"""CleanCLIP's self-supervised in-modal loss: each image against an augmented view of itself, each
caption against an augmented caption, under the model's one learned temperature.

With ``s = exp(logit_scale)`` and all embeddings (B, D) L2-normalised::

    L_inmodal = ( CE(s * I @ I_aug^T, arange(B)) + CE(s * T @ T_aug^T, arange(B)) ) / 2

one direction per modality (rows are the original views, columns the augmented ones), as in the
official CleanCLIP code (REFERENCE.md section 6). CleanCLIP minimises
``l1 * L_CLIP + l2 * L_inmodal``:
``Objective([(l1, ClipTerm()), (l2, InModalTerm())])``; ``Objective([(1, InModalTerm())])`` is the
"SSL only" control.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch
import torch.nn.functional as F

from clipguard.train.objective import StepInputs

__all__ = ["InModalTerm", "inmodal_loss"]


def _one_direction(features: torch.Tensor, views: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``scale * features @ views^T`` (B, B) against the diagonal."""
    logits = scale * features @ views.t()
    labels = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, labels)


def inmodal_loss(image: torch.Tensor, image_aug: torch.Tensor, text: torch.Tensor, text_aug: torch.Tensor,
                 logit_scale: torch.Tensor) -> torch.Tensor:
    """The in-modal contrastive loss of CleanCLIP (module docstring).

    Args:
        image: (B, D) L2-normalised image embeddings.
        image_aug: (B, D) L2-normalised embeddings of an augmented view of each image (row i of image i).
        text: (B, D) L2-normalised caption embeddings.
        text_aug: (B, D) L2-normalised embeddings of an augmented version of each caption.
        logit_scale: scalar log inverse temperature (``exp`` is applied here), shared with the CLIP loss.

    Returns:
        Scalar loss (>= 0): the mean of the image and the caption cross-entropies.
    """
    scale = logit_scale.exp()
    return 0.5 * (_one_direction(image, image_aug, scale) + _one_direction(text, text_aug, scale))


class InModalTerm:
    """:func:`inmodal_loss` as a :class:`~clipguard.train.objective.LossTerm` (``needs`` image,
    image_aug, text, text_aug); it has no parameters of its own."""

    name = "inmodal"
    needs = frozenset({"image", "image_aug", "text", "text_aug"})

    def __call__(self, inputs: StepInputs) -> torch.Tensor:
        return inmodal_loss(inputs["image"], inputs["image_aug"], inputs["text"], inputs["text_aug"],
                            inputs.logit_scale)

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return iter(())

    def describe(self) -> dict[str, Any]:
        return {}
