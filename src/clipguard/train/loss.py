"""The multimodal contrastive loss of CLIP (MMCL)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: open_clip's logit scale is log(1/T); CLIP caps exp(logit_scale) at 100.
MAX_LOGIT_SCALE = math.log(100.0)


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
