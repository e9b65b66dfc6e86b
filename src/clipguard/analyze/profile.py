"""Clean profile of a ViT's heads and MLPs: prototypes and calibrated infection thresholds.

From clean images only (no labels, no poisoned data):

* the prototype of head h is its mean term ``mu_h`` over clean images, the same for every MLP;
* the score of head h on an input x is ``<c_h(x), mu_h>`` (lower = more infected); head h is infected
  for x when the score is ``<= eps_h``. The paper's fixed eps (0.0025 / 0.002 / 0.001 for ViT-B/32)
  depend on the model and the data, so ``eps_h`` is calibrated per head at a chosen clean
  false-positive rate ``fpr``: a conformal lower quantile of held-out clean scores, so that a new
  clean image is flagged with probability at most ``fpr``;
* the input filter rejects x when more than ``zeta`` heads are infected, ``zeta`` calibrated the same
  way at ``filter_fpr`` on a third share of the clean images.

The clean images are split at random (seeded) into three disjoint shares: prototypes, eps and zeta,
so that neither threshold is fitted on the images that made the prototypes.

Shapes: N images, L blocks, H heads per block, D output dim.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from clipguard.errors import ConfigError
from clipguard.models.decompose import Decomposition, decompose_images
from clipguard.models.head_repair import HeadRepair, head_scores, mlp_scores
from clipguard.utils.io import atomic_path, read_json_object, write_json
from clipguard.utils.progress import progress_bar
from clipguard.utils.validate import check_real

__all__ = ["HeadProfile", "decompose_batched", "filter_score", "fit_profile", "lower_threshold", "upper_threshold"]

DEFAULT_FPR = 0.01
DEFAULT_FILTER_FPR = 0.05
DEFAULT_SPLIT = (0.4, 0.3, 0.3)


def decompose_batched(visual: torch.nn.Module, images: torch.Tensor, *, batch_size: int = 64,
                      progress: bool = True, desc: str = "decompose") -> Decomposition:
    """:func:`~clipguard.models.decompose.decompose_images` over (N, 3, H, W) in batches; terms on the CPU."""
    dev = next(visual.parameters()).device
    parts = []
    with progress_bar(len(images), desc, unit="img", enabled=progress) as bar:
        for s in range(0, len(images), batch_size):
            parts.append(decompose_images(visual, images[s:s + batch_size].to(dev)).to("cpu"))
            bar.update(min(batch_size, len(images) - s))
    if not parts:
        raise ConfigError("no images to decompose")
    return Decomposition(*(torch.cat([getattr(p, f) for p in parts]) for f in ("embedding", "heads", "mlps", "bias")),
                         tokens={}, sigma=torch.cat([p.sigma for p in parts]))


def lower_threshold(scores: torch.Tensor, fpr: float) -> tuple[torch.Tensor, int]:
    """Per-column conformal lower threshold of clean ``scores`` (n, ...): flag ``score <= t``.

    ``t`` is the k-th smallest score with ``k = floor(fpr * (n + 1))``, so a new exchangeable clean
    score falls at or below it with probability ``k / (n + 1) <= fpr``. ``k = 0`` (too few images for
    that rate) gives ``-inf``: never flagged. Returns (thresholds, k).
    """
    n = scores.shape[0]
    k = int(math.floor(fpr * (n + 1)))
    if k == 0:
        return torch.full(scores.shape[1:], float("-inf")), 0
    return scores.sort(0).values[k - 1], k


def upper_threshold(values: np.ndarray, fpr: float) -> float:
    """Conformal upper threshold of clean ``values``: reject ``value > t``, with
    ``P(new clean value > t) <= fpr`` (the ceil((1 - fpr)(n + 1))-th smallest value; the largest
    value when there are too few images)."""
    c = np.sort(np.asarray(values))
    idx = int(math.ceil((1 - fpr) * (len(c) + 1))) - 1
    return c[min(idx, len(c) - 1)].item()


def filter_score(scores: torch.Tensor, eps: torch.Tensor, prototypes: torch.Tensor) -> np.ndarray:
    """(N,) the filter's score of N inputs from their head scores (N, L, H); higher = more suspicious.

    ``score = count + m / (1 + m)``: ``count`` the infected heads, ``m`` the summed positive margins
    ``(eps - score) / |mu|^2`` (``|mu|^2`` is the mean clean score, so margins of different heads
    compare): the count, with ties broken by how far the heads fall below eps.
    """
    scale = prototypes.norm(dim=-1).pow(2).clamp_min(1e-12)
    margin = torch.where(torch.isfinite(eps), (eps - scores) / scale, torch.zeros_like(scores))
    count = (scores <= eps).sum((1, 2)).numpy()
    extra = margin.clamp_min(0).sum((1, 2)).numpy()
    return count + extra / (1.0 + extra)


@dataclass
class HeadProfile:
    """Prototypes and thresholds of one model, fitted on clean images.

    Attributes:
        head_prototypes: (L, H, D) mean head terms over the prototype share.
        mlp_means: (L, D) mean MLP terms over the prototype share.
        head_eps: (L, H) head h infected for x when ``<c_h(x), mu_h> <= eps``.
        mlp_eps: (L,) the same for MLPs (analysis only; MLP repair is by layer).
        zeta: the filter rejects an input with more than ``zeta`` infected heads.
        zeta_score: the same rule on the tie-broken :func:`filter_score` (reject ``score > zeta_score``):
            integer counts can only reach a few false-positive rates, the tie-broken score any.
        info: calibration record (rates, share sizes, conformal ranks).
    """

    head_prototypes: torch.Tensor
    mlp_means: torch.Tensor
    head_eps: torch.Tensor
    mlp_eps: torch.Tensor
    zeta: int
    zeta_score: float = float("inf")
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """(L blocks, H heads per block)."""
        return tuple(self.head_eps.shape)  # type: ignore[return-value]

    def head_scores(self, d: Decomposition) -> torch.Tensor:
        """(N, L, H) head scores of a decomposition (lower = more infected)."""
        return head_scores(d, self.head_prototypes)

    def infected_mlps(self, d: Decomposition) -> torch.Tensor:
        """(N, L) bool: MLP infected for that input (score <= its eps)."""
        return mlp_scores(d, self.mlp_means) <= self.mlp_eps

    def to_repair(self, mlp_layers: Sequence[int] = (), info: dict[str, Any] | None = None) -> HeadRepair:
        """The :class:`HeadRepair` that replaces infected heads and the MLPs of ``mlp_layers``."""
        return HeadRepair(self.head_prototypes, self.head_eps, self.mlp_means, tuple(mlp_layers),
                          {"profile": self.info, **(info or {})})

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``profile.safetensors`` + ``profile.json`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {"head_prototypes": self.head_prototypes, "mlp_means": self.mlp_means,
                   "head_eps": self.head_eps, "mlp_eps": self.mlp_eps}
        with atomic_path(out / "profile.safetensors") as tmp:
            save_file({k: v.float().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
        write_json(out / "profile.json", {"zeta": self.zeta, "zeta_score": self.zeta_score, **self.info})
        return out

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "HeadProfile":
        """Read a profile written by :meth:`save` (``clipguard heads analyze``).

        Raises:
            ConfigError: a missing, truncated or corrupt ``profile.safetensors``, one that lacks a tensor or
                holds tensors whose shapes disagree ((L, H, D), (L, D), (L, H), (L,)), or a ``profile.json``
                without a numeric ``zeta`` -- one line naming the file and the fix.
        """
        folder = Path(folder)
        path = folder / "profile.safetensors"
        fix = "write it again with `clipguard heads analyze`"
        if not path.is_file():
            raise ConfigError(f"{folder}: no profile.safetensors; write one with `clipguard heads analyze`")
        meta = read_json_object(folder / "profile.json", "a head profile", "write one with `clipguard heads analyze`")
        try:
            t = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error type (and OSError) for a damaged file
            raise ConfigError(f"{path}: not a readable safetensors file ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:200]}); {fix}") from None
        _check_profile_tensors(t, path, fix)
        try:
            zeta, zeta_score = int(meta["zeta"]), float(meta.get("zeta_score", float("inf")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{folder / 'profile.json'}: no numeric 'zeta' ({type(exc).__name__}: {exc}); "
                              f"{fix}") from None
        info = {k: v for k, v in meta.items() if k not in ("zeta", "zeta_score")}
        return cls(t["head_prototypes"], t["mlp_means"], t["head_eps"], t["mlp_eps"], zeta, zeta_score, info)


def _check_profile_tensors(t: dict[str, torch.Tensor], path: Path, fix: str) -> None:
    """Refuse, in one line, tensors that are not a head profile: a missing one, or shapes that disagree
    (head_prototypes (L, H, D), mlp_means (L, D), head_eps (L, H), mlp_eps (L,))."""
    missing = [k for k in ("head_prototypes", "mlp_means", "head_eps", "mlp_eps") if k not in t]
    if missing:
        raise ConfigError(f"{path}: not a head profile, missing tensor(s) {', '.join(missing)} (found: "
                          f"{', '.join(sorted(t)[:8]) or 'none'}); {fix}")
    proto = tuple(t["head_prototypes"].shape)
    if len(proto) != 3:
        raise ConfigError(f"{path}: head_prototypes has shape {proto}, expected (layers, heads, dim); {fix}")
    L, H, D = proto
    want = {"mlp_means": (L, D), "head_eps": (L, H), "mlp_eps": (L,)}
    for name, shape in want.items():
        if tuple(t[name].shape) != shape:
            raise ConfigError(f"{path}: {name} has shape {tuple(t[name].shape)}, expected {shape} to match "
                              f"head_prototypes {proto}; {fix}")
    for name, x in t.items():
        if name in want or name == "head_prototypes":
            if not x.is_floating_point():
                raise ConfigError(f"{path}: {name} holds {x.dtype}, not floating-point numbers; {fix}")


def _split(n: int, shares: Sequence[float], seed: int) -> list[np.ndarray]:
    if len(shares) != 3 or any(s <= 0 for s in shares):
        raise ConfigError(f"split needs three positive shares (prototypes, eps, zeta), got {list(shares)}")
    order = np.random.default_rng(seed).permutation(n)
    total = float(sum(shares))
    cuts = np.cumsum([int(round(n * s / total)) for s in shares[:2]])
    parts = np.split(order, cuts)
    if min(len(p) for p in parts) < 2:
        raise ConfigError(f"{n} clean images are too few to split into prototype, eps and zeta shares; "
                          "pass at least 30 (a few hundred for a 1 % rate)")
    return parts


def fit_profile(clean: Decomposition, *, fpr: float = DEFAULT_FPR, filter_fpr: float = DEFAULT_FILTER_FPR,
                split: Sequence[float] = DEFAULT_SPLIT, seed: int = 0) -> HeadProfile:
    """Fit prototypes on one share of the clean decomposition, eps on a second, zeta on a third.

    Args:
        clean: decomposition of N clean images (see :func:`decompose_batched`).
        fpr: per-head (and per-MLP) clean false-positive rate of the infection test.
        filter_fpr: clean false-positive rate of the input filter.
        split: relative sizes of the prototype, eps and zeta shares.
        seed: the random split.
    """
    fpr = check_real("fpr", fpr, low=0.0, high=1.0, low_open=True, high_open=True)
    filter_fpr = check_real("filter_fpr", filter_fpr, low=0.0, high=1.0, low_open=True, high_open=True)
    proto_idx, eps_idx, zeta_idx = _split(len(clean.heads), split, seed)
    proto = clean.subset(proto_idx)
    prototypes, means = proto.heads.mean(0), proto.mlps.mean(0)
    eps_part = clean.subset(eps_idx)
    head_eps, k = lower_threshold(head_scores(eps_part, prototypes), fpr)
    mlp_eps, _ = lower_threshold(mlp_scores(eps_part, means), fpr)
    zeta_scores = head_scores(clean.subset(zeta_idx), prototypes)
    counts = (zeta_scores <= head_eps).sum((1, 2)).numpy()
    zeta = int(upper_threshold(counts, filter_fpr))
    zeta_score = float(upper_threshold(filter_score(zeta_scores, head_eps, prototypes), filter_fpr))
    info = {"fpr": fpr, "filter_fpr": filter_fpr, "n_clean": int(len(clean.heads)),
            "n_prototype": int(len(proto_idx)), "n_eps": int(len(eps_idx)), "n_zeta": int(len(zeta_idx)),
            "eps_rank": k, "seed": seed,
            "eps_rule": "eps_h = k-th smallest clean score of the eps share, k = floor(fpr (n + 1))",
            "zeta_rule": "zeta = ceil((1 - filter_fpr)(n + 1))-th smallest clean infected-head count of the zeta share",
            "zeta_share_count_mean": float(counts.mean())}
    if k == 0:
        info["warning"] = (f"{len(eps_idx)} images in the eps share are too few for fpr {fpr}: no head is ever "
                           "flagged; pass more clean images or a larger --fpr")
    return HeadProfile(prototypes, means, head_eps, mlp_eps, zeta, zeta_score, info)
