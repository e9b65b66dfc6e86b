"""The ABL baseline adapted to CLIP (REFERENCE.md section 6): unlearn the pairs a clean model finds
least aligned.

Under a clean pretrained model, the pairs with the LOWEST image-caption cosine are treated as
poisoned (:func:`abl_suspects`). Training then excludes them from the CLIP loss and pushes their
cosine to 0 (:class:`UnlearnTerm`)::

    Objective([(1, ClipTerm(exclude=mask)), (w, UnlearnTerm(mask))])

The CleanCLIP paper reports this baseline as not effective; it is here to be measured.
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np
import torch

from clipguard.errors import ConfigError
from clipguard.train.losses.clip import batch_rows, row_mask
from clipguard.train.objective import StepInputs
from clipguard.utils.validate import check_int, check_real

__all__ = ["UnlearnTerm", "abl_suspects", "unlearn_loss"]


def _suspect_count(n: int, share: float | None, top: int | None) -> int:
    """How many rows :func:`abl_suspects` marks: ``top``, or ``ceil(share * n)`` (at least 1)."""
    if (share is None) == (top is None):
        raise ConfigError("ABL suspects: give exactly one of share (a fraction in (0, 1)) or top (a count), "
                          f"got share={share!r}, top={top!r}")
    if top is not None:
        return check_int("ABL top", top, minimum=1, maximum=n)
    share = check_real("ABL share", share, low=0, high=1, low_open=True, high_open=True)
    return min(n, max(1, math.ceil(share * n - 1e-9)))


def abl_suspects(cosines: np.ndarray | torch.Tensor, *, share: float | None = None,
                 top: int | None = None) -> np.ndarray:
    """The pairs ABL unlearns: those with the lowest image-caption cosine under a clean model.

    Args:
        cosines: (N,) cosine of each pair's image and caption embeddings under a clean model, by
            manifest row (higher = better aligned = less suspicious).
        share: the fraction of rows to mark, in (0, 1): ``ceil(share * N)`` rows (at least 1).
        top: or the number of rows to mark, in [1, N]. Give exactly one of ``share`` and ``top``.

    Returns:
        (N,) bool mask, True for the marked rows; ties are broken by row order (the lower row first).

    Raises:
        ConfigError: neither or both of ``share`` / ``top``, a value out of range, or cosines that are
            not a non-empty finite 1-D array.
    """
    c = cosines.detach().cpu().numpy() if isinstance(cosines, torch.Tensor) else np.asarray(cosines)
    if c.ndim != 1 or c.size == 0 or not np.issubdtype(c.dtype, np.number) or not np.isfinite(c).all():
        raise ConfigError(f"ABL cosines must be a non-empty 1-D array of finite numbers (one per manifest row), "
                          f"got shape {c.shape} of {c.dtype}")
    k = _suspect_count(c.size, share, top)
    mask = np.zeros(c.size, dtype=bool)
    mask[np.argsort(c, kind="stable")[:k]] = True
    return mask


def unlearn_loss(image: torch.Tensor, text: torch.Tensor, suspect: torch.Tensor) -> torch.Tensor:
    """Mean of ``cos(image_i, text_i)^2`` over the suspect rows of a batch.

    Args:
        image: (B, D) L2-normalised image embeddings.
        text: (B, D) L2-normalised caption embeddings, row i paired with image i.
        suspect: (B,) bool, True for the rows to unlearn (same device as the features).

    Returns:
        Scalar >= 0, minimised by a cosine of 0; exactly 0 -- still with a gradient path to the
        features -- when no row is a suspect.
    """
    cos2 = (image * text).sum(dim=-1).pow(2)
    weights = suspect.to(cos2.dtype)
    return (cos2 * weights).sum() / weights.sum().clamp_min(1.0)


class UnlearnTerm:
    """:func:`unlearn_loss` of the batch's suspect rows, as a
    :class:`~clipguard.train.objective.LossTerm` (``needs`` image, text).

    Args:
        suspect_mask: (N,) bool by manifest row (:func:`abl_suspects`); ``inputs.rows`` index it.
    """

    name = "unlearn"
    needs = frozenset({"image", "text"})

    def __init__(self, suspect_mask: np.ndarray | torch.Tensor) -> None:
        self.mask = row_mask(suspect_mask, "ABL suspect")

    def __call__(self, inputs: StepInputs) -> torch.Tensor:
        image = inputs["image"]
        suspect = batch_rows(self.mask, inputs.rows, "ABL suspect").to(image.device, non_blocking=True)
        return unlearn_loss(image, inputs["text"], suspect)

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return iter(())

    def describe(self) -> dict[str, Any]:
        return {"suspects": int(self.mask.sum())}
