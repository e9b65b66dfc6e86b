"""Which heads and MLPs are infected for which inputs, and the input filter built on it.

Shapes: N inputs, L blocks, H heads per block. Scores and counts: higher = more suspicious.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from clipguard.analyze.profile import HeadProfile, filter_score
from clipguard.models.decompose import Decomposition

__all__ = ["Infection", "infection"]


@dataclass
class Infection:
    """Per-input infection of heads and MLPs under a profile.

    Attributes:
        heads: (N, L, H) bool, head infected for that input.
        mlps: (N, L) bool, MLP infected for that input.
        score: (N,) the tie-broken filter score (see :func:`~clipguard.analyze.profile.filter_score`).
        zeta: the filter's threshold on the count (reject when ``count > zeta``).
        zeta_score: the threshold on ``score`` (reject when ``score > zeta_score``).
    """

    heads: torch.Tensor
    mlps: torch.Tensor
    score: np.ndarray
    zeta: int
    zeta_score: float

    @property
    def count(self) -> np.ndarray:
        """(N,) number of infected heads per input: the filter score (higher = more suspicious)."""
        return self.heads.sum((1, 2)).numpy()

    @property
    def rejected(self) -> np.ndarray:
        """(N,) bool: the filter rejects the input (more than ``zeta`` infected heads)."""
        return self.count > self.zeta

    @property
    def rejected_by_score(self) -> np.ndarray:
        """(N,) bool: rejected by the tie-broken score (``score > zeta_score``)."""
        return self.score > self.zeta_score

    @property
    def head_rates(self) -> np.ndarray:
        """(L, H) share of the inputs for which each head is infected."""
        return self.heads.float().mean(0).numpy()

    @property
    def mlp_rates(self) -> np.ndarray:
        """(L,) share of the inputs for which each MLP is infected."""
        return self.mlps.float().mean(0).numpy()

def infection(profile: HeadProfile, d: Decomposition) -> Infection:
    """Evaluate ``profile``'s infection tests on the decomposition of N inputs."""
    scores = profile.head_scores(d)
    return Infection(heads=scores <= profile.head_eps, mlps=profile.infected_mlps(d),
                     score=filter_score(scores, profile.head_eps, profile.head_prototypes), zeta=profile.zeta,
                     zeta_score=profile.zeta_score)
