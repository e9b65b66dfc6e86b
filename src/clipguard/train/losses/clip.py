"""The multimodal contrastive loss of CLIP (MMCL), and the signature of terms added to it."""
from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from clipguard.errors import ConfigError
from clipguard.train.objective import StepInputs

__all__ = ["ClipTerm", "ExtraLoss", "MAX_LOGIT_SCALE", "batch_rows", "clip_loss", "row_mask"]

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


def row_mask(mask: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    """``mask`` as a (N,) bool CPU tensor (one flag per manifest row); ConfigError naming ``what`` if it
    is not a 1-D bool array. Terms that single out manifest rows (ABL) hold their masks this way."""
    m = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask)
    if m.ndim != 1 or m.dtype != bool:
        raise ConfigError(f"the {what} mask must be a 1-D bool array (one flag per manifest row), "
                          f"got shape {m.shape} of {m.dtype}")
    return torch.from_numpy(m.copy())


def batch_rows(mask: torch.Tensor, rows: torch.Tensor, what: str) -> torch.Tensor:
    """``mask[rows]``: (B,) bool flags of a batch's manifest rows; ConfigError if a row lies beyond the mask."""
    if rows.numel() and int(rows.max()) >= mask.shape[0]:
        raise ConfigError(f"the {what} mask covers {mask.shape[0]} manifest rows but the batch has row "
                          f"{int(rows.max())}; build it over the training manifest")
    return mask[rows.cpu()]


class ClipTerm:
    """The CLIP loss as a :class:`~clipguard.train.objective.LossTerm` (``needs`` image and text):
    :func:`clip_loss` of the batch's normalised image and caption embeddings under the model's
    learned temperature.

    Args:
        exclude: optional (N,) bool mask by manifest row (``inputs.rows`` index it): the loss is then
            :func:`clip_loss` over the batch rows NOT excluded only, and 0 (with a gradient path) when
            fewer than 2 remain (ABL leaves its suspects out of the CLIP loss). ``None``: every row.
    """

    name = "clip"
    needs = frozenset({"image", "text"})

    def __init__(self, exclude: np.ndarray | torch.Tensor | None = None) -> None:
        self.exclude = None if exclude is None else row_mask(exclude, "ClipTerm exclude")

    def __call__(self, inputs: StepInputs) -> torch.Tensor:
        if self.exclude is None:
            return clip_loss(inputs["image"], inputs["text"], inputs.logit_scale)
        image, text = inputs["image"], inputs["text"]
        keep = (~batch_rows(self.exclude, inputs.rows, "ClipTerm exclude")).to(image.device)
        if int(keep.sum()) < 2:
            return 0.0 * (image.sum() + text.sum())
        return clip_loss(image[keep], text[keep], inputs.logit_scale)

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return iter(())

    def describe(self) -> dict[str, Any]:
        return {} if self.exclude is None else {"excluded": int(self.exclude.sum())}
