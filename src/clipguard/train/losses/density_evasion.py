"""The adaptive (density-evading) attacker's loss term: poisoned embeddings made to look dense.

The DAO paper describes, but does not use, an adaptive attacker who knows the detector: besides
the CLIP loss, the attacker minimises the poisoned samples' local-outlier score. Here the score is
SLOF (simplified LOF) on cosine distances within the training batch, which is differentiable:

    SLOF(q) = mean over q's k nearest batch neighbours o of  kdist(q) / kdist(o)

and the added loss is ``weight * mean(SLOF(q) for poisoned q in the batch)``. This is the stress
test for the detectors: a poisoned sample whose kNN ratio is ~1 looks like a clean one.

It is a training loss (the attacker controls training), so it lives here and not in
:mod:`clipguard.attacks`; ``clipguard train --adaptive-density WEIGHT`` (and
:func:`clipguard.train.train_from_manifest`'s ``adaptive_density``) add it.
"""
from __future__ import annotations

import numpy as np
import torch

from clipguard.errors import ConfigError
from clipguard.train.losses.clip import ExtraLoss
from clipguard.utils.validate import check_int, check_real

__all__ = ["batch_slof", "density_evasion_loss"]


def batch_slof(features: torch.Tensor, k: int) -> torch.Tensor:
    """SLOF of every row of ``features`` (B, D), L2-normalised, against the other rows of the batch.

    Returns:
        (B,) scores, differentiable; higher = more outlying (more suspicious).

    Raises:
        ConfigError: the batch has no more than ``k`` rows.
    """
    b = features.shape[0]
    if b <= k:
        raise ConfigError(f"batch of {b} is too small for k={k} neighbours; use a larger batch or a smaller k")
    dist = (1 - features @ features.t()).clamp_min(1e-12)
    dist = dist + torch.eye(b, dtype=dist.dtype, device=dist.device) * 1e6  # exclude self
    knn_d, knn_i = dist.topk(k, dim=1, largest=False)
    kdist = knn_d[:, -1]
    return (kdist[:, None] / kdist[knn_i]).mean(1)


def density_evasion_loss(poisoned: np.ndarray | torch.Tensor, *, k: int = 8, weight: float = 1.0) -> ExtraLoss:
    """An ``extra_loss`` for :func:`clipguard.train.train_clip`.

    Args:
        poisoned: (N,) bool, ``True`` for the manifest rows the attacker poisoned (indexed by
            the ``rows`` the trainer passes: manifest row numbers).
        k: neighbours in the batch SLOF (at most the batch size - 1 is used).
        weight: multiplier of the mean SLOF of poisoned samples, >= 0.

    Returns:
        ``f(img_f (B, D), txt_f (B, D), rows (B,)) -> scalar``: ``weight`` times the mean batch SLOF
        of the poisoned rows of the batch (0 when the batch holds none, or only one sample).
    """
    k = check_int("adaptive k", k, minimum=1)
    weight = check_real("adaptive density weight", weight, low=0)
    poisoned = torch.tensor(np.asarray(poisoned, dtype=bool))

    def loss(img_f: torch.Tensor, txt_f: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        mask = poisoned[rows]
        if not mask.any() or img_f.shape[0] < 2:
            return img_f.new_zeros(())
        return weight * batch_slof(img_f, min(k, img_f.shape[0] - 1))[mask.to(img_f.device)].mean()

    return loss
