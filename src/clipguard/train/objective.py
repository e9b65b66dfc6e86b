"""What a training run minimises: a weighted sum of pluggable loss terms over one batch.

The one trainer (:func:`clipguard.train.train_clip`) runs pretraining and every finetuning defence;
they differ only in their :class:`Objective` -- a list of ``(weight, term)`` pairs -- and in the
views the batches carry (:class:`clipguard.train.data.Views`). A term is not a branch in the loop:

* it says which encoded inputs it needs (:attr:`LossTerm.needs`, a subset of :data:`INPUTS`);
* the trainer encodes exactly those, once per step, into a :class:`StepInputs`;
* ``term(inputs)`` returns a scalar tensor; the objective adds ``weight * term(inputs)``.

Terms with parameters of their own (the linear head of supervised finetuning) expose them through
:meth:`LossTerm.parameters`; the trainer puts them in the optimiser. Terms with a frozen model of
their own (PAR's poisoned reference) run it inside their ``__call__`` under ``torch.no_grad()``.

Inputs (:data:`INPUTS`):

===========  ==================================================================================
image        (B, D) L2-normalised embedding of the batch's (possibly lightly augmented) images
text         (B, D) L2-normalised embedding of the batch's captions
image_aug    (B, D) embedding of a second, augmented view of each image (CleanCLIP: AutoAugment)
text_aug     (B, D) embedding of an augmented caption (CleanCLIP: one EDA operation)
image_raw    (B, D) the image embedding before normalisation (a linear head reads it)
label        (B,) int64 class index of each image (supervised finetuning; manifest column ``label``)
===========  ==================================================================================

``StepInputs.rows`` (the manifest rows of the batch), ``pixels`` / ``tokens`` (the model inputs, for
a term that runs a frozen model on them) and ``logit_scale`` are always present.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Protocol, Sequence, runtime_checkable

import torch

from clipguard.errors import ConfigError

__all__ = ["INPUTS", "LossTerm", "Objective", "StepInputs"]

INPUTS = ("image", "text", "image_aug", "text_aug", "image_raw", "label")
"""The encoded inputs a term may ask for (module docstring)."""


@dataclass
class StepInputs:
    """One batch, encoded as the objective's terms need it.

    Attributes:
        features: ``{input: tensor}`` for every input of :data:`INPUTS` some term needs (shapes in
            the module docstring); features are float32 on the training device.
        logit_scale: the model's learned log inverse temperature (scalar parameter; ``exp`` it).
        rows: (B,) int64 manifest rows of the batch (CPU).
        pixels: (B, 3, H, W) the image tensor fed to the model (on the device).
        tokens: (B, L) the caption tokens fed to the model (on the device).
        model: the model being trained (train mode).
    """

    features: dict[str, torch.Tensor]
    logit_scale: torch.Tensor
    rows: torch.Tensor
    pixels: torch.Tensor
    tokens: torch.Tensor
    model: torch.nn.Module
    extra: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self.features[name]
        except KeyError:
            raise ConfigError(f"the loss asked for {name!r}, which this batch was not encoded with "
                              f"(has {sorted(self.features)}); declare it in the term's `needs`") from None


@runtime_checkable
class LossTerm(Protocol):
    """A pluggable loss term. ``name`` labels it in logs and ``run.json``; ``needs`` lists the inputs
    (:data:`INPUTS`) it reads; calling it on a :class:`StepInputs` returns a scalar tensor."""

    name: str
    needs: frozenset[str]

    def __call__(self, inputs: StepInputs) -> torch.Tensor: ...

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...

    def describe(self) -> dict[str, Any]: ...


class Objective:
    """``sum(weight * term(inputs))`` over the batch; see the module docstring.

    Args:
        terms: ``(weight, term)`` pairs, at least one; weights are finite floats (a negative weight
            is allowed: a term to maximise).
    """

    def __init__(self, terms: Sequence[tuple[float, LossTerm]]) -> None:
        if not terms:
            raise ConfigError("an objective needs at least one loss term")
        for w, t in terms:
            if not isinstance(t, LossTerm):
                raise ConfigError(f"{t!r} is not a loss term (needs name, needs, __call__, parameters, describe)")
            unknown = set(t.needs) - set(INPUTS)
            if unknown:
                raise ConfigError(f"loss term {t.name!r} needs unknown inputs {sorted(unknown)}; known: {INPUTS}")
            if not isinstance(w, (int, float)) or w != w or w in (float("inf"), float("-inf")):
                raise ConfigError(f"the weight of loss term {t.name!r} must be a finite number, got {w!r}")
        self.terms = [(float(w), t) for w, t in terms]

    @property
    def needs(self) -> frozenset[str]:
        """Every input some term reads."""
        return frozenset().union(*(t.needs for _, t in self.terms))

    def parameters(self) -> Iterable[torch.nn.Parameter]:
        """The terms' own trainable parameters (e.g. a linear head), to optimise with the model's."""
        for _, t in self.terms:
            yield from t.parameters()

    def __call__(self, inputs: StepInputs) -> tuple[torch.Tensor, dict[str, float]]:
        """``(total loss, {term name: value})`` of one batch."""
        total, parts = None, {}
        for w, t in self.terms:
            v = t(inputs)
            parts[t.name] = float(v.detach())
            total = w * v if total is None else total + w * v
        return total, parts

    def describe(self) -> list[dict[str, Any]]:
        """``[{"term": name, "weight": w, **term.describe()}]`` for ``run.json``."""
        return [{"term": t.name, "weight": w, **t.describe()} for w, t in self.terms]
