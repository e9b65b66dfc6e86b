"""The model defences' registry and what every defence receives and returns.

A model defence takes a (possibly backdoored) CLIP model and a dataset and returns a new model.
Two kinds, registered by name in :data:`DEFENCES` like attacks and detectors:

* ``finetune`` -- start from the model's weights and finetune on a CLEAN set (``cleanclip``,
  ``mmcl``, ``ssl``, ``par``, ``supervised``): ``data`` is the clean finetuning set;
* ``retrain`` -- train the model's architecture from scratch on the (poisoned) training set,
  with the suspects removed or unlearned (``filter-retrain``, ``abl``): ``data`` is that set.

Each defence class takes its own parameters as keyword arguments (checked: an unknown name is a
one-line error listing the known ones) and implements :meth:`Defence.objective` /
:meth:`Defence.views` (finetune) or :meth:`Defence.run` (anything else). ``TRAIN_DEFAULTS`` gives
the training settings it uses unless the caller overrides them.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from clipguard.data.manifest import read_manifest
from clipguard.errors import ConfigError
from clipguard.models.factory import ClipBundle
from clipguard.registry import Registry
from clipguard.train.data import PairData, Views
from clipguard.train.objective import Objective
from clipguard.train.trainer import TrainConfig, train_clip

__all__ = ["DEFENCES", "Defence", "DefenceJob", "DefenceOutcome", "make_defence", "skip_record"]

DEFENCES: Registry = Registry("defence")
"""Every model defence by name (``clipguard defend METHOD``)."""


@dataclass
class DefenceJob:
    """What a defence works on.

    Attributes:
        bundle: the model to repair (finetune defences change it in place; retrain defences use
            its architecture and build a fresh one).
        model_dir: its folder (``model.json`` says what it was trained on, and how).
        data: the manifest the defence trains on (clean finetuning set, or the training set).
        out_dir: the defence's output folder (checkpoints, intermediate scans).
        config: the training settings (the defence's ``TRAIN_DEFAULTS`` with the caller's overrides).
        workers: data-loader worker processes.
        device: where to train (a resolved torch device).
        progress: show progress bars.
    """

    bundle: ClipBundle
    model_dir: Path
    data: Path
    out_dir: Path
    config: TrainConfig
    workers: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool = True


@dataclass
class DefenceOutcome:
    """A defence's result: the new model and what to record about the run (JSON-able ``info``)."""

    bundle: ClipBundle
    info: dict[str, Any] = field(default_factory=dict)


class Defence:
    """Base class. Subclasses set ``kind`` ("finetune" or "retrain"), ``summary`` (one line) and
    ``TRAIN_DEFAULTS`` (TrainConfig fields), take their parameters as keyword-only arguments, and
    implement :meth:`objective` and :meth:`views` (finetune) or override :meth:`run`."""

    name: ClassVar[str] = "defence"
    kind: ClassVar[str] = "finetune"
    summary: ClassVar[str] = ""
    TRAIN_DEFAULTS: ClassVar[dict[str, Any]] = {}

    def params(self) -> dict[str, Any]:
        """The defence's parameters (its constructor's keyword arguments) and their values."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names}

    def views(self, job: DefenceJob) -> Views:
        """The views the training batches carry (default: none)."""
        return Views()

    def objective(self, job: DefenceJob, data: PairData) -> Objective:
        """The loss the finetuning minimises."""
        raise NotImplementedError

    def run(self, job: DefenceJob) -> DefenceOutcome:
        """Finetune ``job.bundle`` on ``job.data`` with :meth:`objective` and :meth:`views` (the
        default of finetune defences; retrain defences override it)."""
        data = PairData(read_manifest(job.data), job.bundle, views=self.views(job), seed=job.config.seed,
                        progress=job.progress)
        objective = self.objective(job, data)
        result = train_clip(job.bundle, data, job.config, job.out_dir, objective=objective, workers=job.workers,
                            progress=job.progress, device=job.device)
        return DefenceOutcome(job.bundle, {"objective": objective.describe(), "history": result.history,
                                           "n_pairs": result.n_pairs, **skip_record(data, job.out_dir),
                                           "train_seconds": round(result.seconds, 2)})


def skip_record(data: PairData, out_dir: Path) -> dict[str, Any]:
    """``{"n_skipped", "skip_counts"}`` (by reason) of the rows ``data`` left out; ``out_dir/skipped.csv``
    lists each of them (when there is one)."""
    if len(data.skip_log):
        out_dir.mkdir(parents=True, exist_ok=True)
        data.skip_log.save(out_dir / "skipped.csv")
    return {"n_skipped": len(data.skip_log), "skip_counts": data.skip_log.counts()}


def make_defence(method: str, params: dict[str, Any] | None = None) -> Defence:
    """The registered defence ``method`` built with ``params``.

    Raises:
        ConfigError: an unknown method (the message lists the known ones) or parameter.
    """
    cls = DEFENCES.get(method)
    known = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params or {}) - set(known))
    if unknown:
        raise ConfigError(f"defence {method!r} has no parameter {', '.join(map(repr, unknown))}; "
                          f"its parameters: {', '.join(known) or 'none'}")
    return cls(**(params or {}))
