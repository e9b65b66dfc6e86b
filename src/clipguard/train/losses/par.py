"""PAR, Perturb and Recover (arXiv 2412.00727): finetune away from the poisoned model, within a bound.

PAR minimises ``L_CLIP - 0.5 * (d_img + d_txt)``, where ``d`` is the batch-mean squared L2 distance
between the current model's embeddings and those of the frozen poisoned model on the same inputs::

    d_img = mean_i || I_i - I_ref_i ||^2        (rows L2-normalised, so 0 <= d <= 4)

Each distance is switched off once it exceeds ``tau`` (2.15 in the paper): above ``tau`` its term is
exactly 0 and passes no gradient, so the model is pushed away from the poisoned one only until it is
far enough (REFERENCE.md section 7). The objective is
``Objective([(1, ClipTerm()), (0.5, ParTerm(reference))])``: :class:`ParTerm` returns
``-(d_img * [d_img <= tau] + d_txt * [d_txt <= tau])``.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch
import torch.nn.functional as F

from clipguard.errors import ConfigError
from clipguard.train.objective import StepInputs
from clipguard.utils.validate import check_real

__all__ = ["DEFAULT_TAU", "ParTerm", "par_distances", "par_penalty"]

#: PAR's cut-off of the squared embedding distance (the paper's tau).
DEFAULT_TAU = 2.15


def par_distances(feats: torch.Tensor, ref_feats: torch.Tensor) -> torch.Tensor:
    """Batch-mean squared L2 distance between two aligned sets of embeddings.

    Args:
        feats: (B, D) L2-normalised embeddings of the model being trained.
        ref_feats: (B, D) L2-normalised embeddings of the frozen reference, row i of the same input.

    Returns:
        Scalar ``mean_i ||feats_i - ref_feats_i||^2``, in [0, 4] for unit rows.
    """
    return (feats - ref_feats).pow(2).sum(dim=-1).mean()


def par_penalty(d_img: torch.Tensor, d_txt: torch.Tensor, tau: float = DEFAULT_TAU) -> torch.Tensor:
    """``-(d_img * [d_img <= tau] + d_txt * [d_txt <= tau])``: a distance above ``tau`` contributes
    exactly 0 and no gradient.

    Args:
        d_img: scalar image distance (:func:`par_distances`).
        d_txt: scalar caption distance.
        tau: the cut-off.

    Returns:
        Scalar (<= 0), to be added to the CLIP loss with weight 0.5.
    """
    zero = d_img.new_zeros(())
    return -(torch.where(d_img <= tau, d_img, zero) + torch.where(d_txt <= tau, d_txt, zero))


class ParTerm:
    """PAR's distance term as a :class:`~clipguard.train.objective.LossTerm` (``needs`` image, text).

    Each call runs the frozen reference on the batch's model inputs (``inputs.pixels``,
    ``inputs.tokens``) under ``torch.no_grad()``, normalises its embeddings and returns
    :func:`par_penalty` of the two :func:`par_distances`.

    Args:
        reference_model: the frozen poisoned model, an open_clip model (``encode_image``,
            ``encode_text``) -- a deep copy made by the caller before finetuning starts. It is put in
            eval mode, its parameters stop requiring grad, and it moves to the inputs' device on
            first use.
        tau: the cut-off of each distance, > 0 (2.15 in the paper).

    Attributes:
        last_distances: ``{"d_img": float, "d_txt": float}`` of the last batch (empty before the
            first), for the trainer's history.
    """

    name = "par"
    needs = frozenset({"image", "text"})

    def __init__(self, reference_model: torch.nn.Module, tau: float = DEFAULT_TAU) -> None:
        if not all(hasattr(reference_model, m) for m in ("encode_image", "encode_text", "parameters")):
            raise ConfigError(f"PAR's reference must be a CLIP model with encode_image/encode_text, got "
                              f"{type(reference_model).__name__}; pass a deep copy of the poisoned model")
        self.tau = check_real("PAR tau", tau, low=0, low_open=True)
        self.reference = reference_model.eval()
        for p in self.reference.parameters():
            p.requires_grad_(False)
        self.last_distances: dict[str, float] = {}

    def _reference_features(self, inputs: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) normalised image and caption embeddings of the frozen reference, without grad."""
        device = inputs.pixels.device
        first = next(self.reference.parameters(), None)
        if first is not None and first.device != device:
            self.reference.to(device)
        if self.reference.training:
            self.reference.eval()
        with torch.no_grad():
            img = F.normalize(self.reference.encode_image(inputs.pixels).float(), dim=-1)
            txt = F.normalize(self.reference.encode_text(inputs.tokens).float(), dim=-1)
        return img, txt

    def __call__(self, inputs: StepInputs) -> torch.Tensor:
        ref_img, ref_txt = self._reference_features(inputs)
        d_img = par_distances(inputs["image"], ref_img)
        d_txt = par_distances(inputs["text"], ref_txt)
        self.last_distances = {"d_img": float(d_img.detach()), "d_txt": float(d_txt.detach())}
        return par_penalty(d_img, d_txt, self.tau)

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return iter(())

    def describe(self) -> dict[str, Any]:
        return {"tau": self.tau}
