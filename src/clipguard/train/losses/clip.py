"""The multimodal contrastive loss of CLIP (MMCL), and the signature of terms added to it."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["ExtraLoss", "MAX_LOGIT_SCALE", "clip_loss"]

#: open_clip's logit scale is log(1/T); CLIP caps exp(logit_scale) at 100.
MAX_LOGIT_SCALE = math.log(100.0)

#: A training-time term added to MMCL (e.g. an adaptive attack or a defence):
#: f(image_features (B, D), text_features (B, D), batch_rows (B,)) -> scalar tensor.
ExtraLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy over the image-text similarity matrix.

    Args:
        image_features: (B, D) L2-normalised image embeddings.
        text_features: (B, D) L2-normalised caption embeddings, row i paired with image i.
        logit_scale: scalar log inverse temperature (``exp`` is applied here).

    Returns:
        Scalar loss: mean of image->text and text->image cross-entropies.
    """
    logits = logit_scale.exp() * image_features @ text_features.t()
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
