"""Choose the repair: which late MLPs to replace by their clean means, under a clean-accuracy budget.

Head repair is per input (an infected head's term becomes its prototype). MLP repair, for global
triggers that live in late MLPs, replaces the MLP terms of the last ``m`` blocks for every input; it
costs clean accuracy, so ``m`` is chosen on clean images: the largest ``m`` whose zero-shot accuracy
(against labels, or against the unrepaired model's own predictions when the clean images carry no
labels -- a lower bound on CA: CA_after >= CA_before - (1 - agreement)) stays within ``budget`` of the
unrepaired model's, with head repair applied too. The paper's hard-coded set of late layers is not used.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from clipguard.analyze.profile import HeadProfile
from clipguard.errors import ConfigError
from clipguard.models.decompose import Decomposition
from clipguard.models.head_repair import repaired_sum
from clipguard.utils.validate import check_real

__all__ = ["choose_mlp_layers", "zero_shot_predict"]


def zero_shot_predict(embeddings: torch.Tensor, classifier: torch.Tensor) -> np.ndarray:
    """(N,) class index of each (unnormalised) embedding (N, D) under a (C, D) zero-shot classifier."""
    emb = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    return (emb @ classifier.float().t()).argmax(1).numpy()


def choose_mlp_layers(profile: HeadProfile, clean: Decomposition, classifier: torch.Tensor, *,
                      labels: Sequence[int] | None = None, budget: float = 0.03
                      ) -> tuple[tuple[int, ...], dict[str, Any]]:
    """The longest suffix of blocks whose MLP mean-ablation keeps clean accuracy within ``budget``.

    Args:
        profile: the clean profile (prototypes, eps, MLP means).
        clean: decomposition of clean images (N inputs).
        classifier: (C, D) zero-shot class embeddings.
        labels: (N,) true classes; ``None``: agreement with the unrepaired model's predictions.
        budget: largest allowed drop of accuracy (a share, 0.03 = 3 points).

    Returns:
        (chosen blocks, record with the accuracy of every suffix tried).
    """
    budget = check_real("budget", budget, low=0.0, high=1.0)
    base_pred = zero_shot_predict(clean.total(), classifier)
    ref = base_pred if labels is None else np.asarray(labels)
    if len(ref) != len(base_pred):
        raise ConfigError(f"{len(ref)} labels for {len(base_pred)} clean images")
    base = float((base_pred == ref).mean())
    L = profile.shape[0]
    tried, chosen = [], ()
    for m in range(0, L + 1):
        layers = tuple(range(L - m, L))
        emb, _ = repaired_sum(clean, profile.to_repair(layers))
        acc = float((zero_shot_predict(emb, classifier) == ref).mean())
        tried.append({"mlp_layers": list(layers), "accuracy": acc, "drop": base - acc})
        if base - acc > budget:
            break
        chosen = layers
    return chosen, {"measure": "accuracy" if labels is not None else "agreement with the unrepaired model",
                    "budget": budget, "unrepaired": base, "tried": tried, "n_images": int(len(ref))}
