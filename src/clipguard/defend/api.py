"""``run_defence``: a registered model defence applied to a model folder, the new model saved.

The evaluation before and after (CA and ASR) and the ``run.json`` of ``clipguard defend`` are added
by :func:`clipguard.pipeline.defend_model`, which calls this.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from clipguard.data.manifest import read_manifest
from clipguard.defend.base import DefenceJob, make_defence
from clipguard.defend.overlap import manifest_overlap
from clipguard.models.factory import ClipBundle, load_model, save_model
from clipguard.train.trainer import TrainConfig
from clipguard.utils.device import DEFAULT_DEVICE, resolve_device
from clipguard.utils.io import read_json_object
from clipguard.utils.validate import check_int, check_known_keys

__all__ = ["DefenceResult", "defence_config", "run_defence"]

log = logging.getLogger("clipguard")


@dataclass
class DefenceResult:
    """What :func:`run_defence` did: the defended model (also saved in ``out_dir``), the method, its
    parameters, the training settings used, the defence's own record and, for a finetuning defence,
    the overlap of the finetuning set with the model's training set."""

    bundle: ClipBundle
    method: str
    kind: str
    params: dict[str, Any]
    config: TrainConfig
    info: dict[str, Any] = field(default_factory=dict)
    overlap: dict[str, int] | None = None


def _model_record(model_dir: Path) -> dict[str, Any]:
    path = (model_dir if model_dir.is_dir() else model_dir.parent) / "model.json"
    return read_json_object(path, "a model record", "pass a folder written by `clipguard train`")


def defence_config(kind: str, defaults: dict[str, Any], model_record: dict[str, Any],
                   overrides: dict[str, Any] | None) -> TrainConfig:
    """The training settings of a defence: a finetune defence starts from its ``defaults``; a retrain
    defence from the settings the model was trained with (``model.json``'s ``train_config``); the
    caller's ``overrides`` (TrainConfig field names) win.

    Raises:
        ConfigError: an override that is not a TrainConfig field, or a value out of range.
    """
    names = [f.name for f in fields(TrainConfig)]
    check_known_keys("training setting", overrides or {}, names)
    base = defaults if kind == "finetune" else {k: v for k, v in (model_record.get("train_config") or {}).items()
                                                   if k in names and k != "record_epochs"}
    return TrainConfig(**{**base, **(overrides or {})}).check()


def _check_overlap(data: Path, record: dict[str, Any], progress: bool) -> dict[str, int] | None:
    """Warn when the finetuning set shares rows with the model's training set (``trained_on``)."""
    trained_on = record.get("trained_on")
    if not trained_on or not Path(trained_on).is_file():
        return None
    ov = manifest_overlap(read_manifest(data), read_manifest(trained_on), progress=progress)
    if ov.by_image:
        log.warning("%d of %d rows of %s also appear in the model's training set %s (%d by image content, %d by id); "
                    "a clean finetuning set should be disjoint from it", ov.either, ov.n_rows, data, trained_on,
                    ov.by_image, ov.by_id)
    elif ov.by_id:
        log.warning("%d of %d rows of %s share an id with the model's training set %s, but no image: if the ids "
                    "are only reused names (two `clipguard synth` worlds number their rows alike), this is fine",
                    ov.by_id, ov.n_rows, data, trained_on)
    return ov.as_dict()


def run_defence(method: str, model_dir: str | os.PathLike, data: str | os.PathLike, out_dir: str | os.PathLike, *,
                params: dict[str, Any] | None = None, train: dict[str, Any] | None = None, workers: int = 0,
                device: str | None = DEFAULT_DEVICE, progress: bool = True) -> DefenceResult:
    """Apply defence ``method`` to the model in ``model_dir``; save the new model in ``out_dir``.

    Args:
        method: a name of :data:`clipguard.defend.DEFENCES` (``clipguard defend --help`` lists them).
        model_dir: the (possibly backdoored) model folder.
        data: for a finetuning defence the CLEAN finetuning set; for ``filter-retrain`` / ``abl`` the
            training set itself (manifest).
        out_dir: the new model (``model.safetensors``, ``model.json``), checkpoints, intermediate files.
        params: the defence's parameters (e.g. ``{"lambda2": 2}``).
        train: training settings overriding the defence's (TrainConfig fields: epochs, lr, ...).
        workers: data-loader worker processes (augmentation runs there).
        device: where to train ("auto": the GPU if torch sees one).

    Raises:
        ConfigError: an unknown method, parameter or setting; a model folder whose weights do not match
            its architecture; bad data (every row unusable, a missing ``label`` column for ``supervised``).
    """
    defence = make_defence(method, params)
    workers = check_int("workers", workers, minimum=0)
    model_dir, data, out = Path(model_dir), Path(data), Path(out_dir)
    record = _model_record(model_dir)
    config = defence_config(defence.kind, defence.TRAIN_DEFAULTS, record, train)
    bundle = load_model(model_dir, device=device)
    overlap = _check_overlap(data, record, progress) if defence.kind == "finetune" else None
    out.mkdir(parents=True, exist_ok=True)
    job = DefenceJob(bundle, model_dir, data, out, config, workers, resolve_device(device), progress)
    outcome = defence.run(job)
    save_model(outcome.bundle, out, extra={"defence": method, "defence_params": defence.params(),
                                           "defended_model": str(model_dir), "trained_on": str(data),
                                           "train_config": asdict(config)})
    return DefenceResult(outcome.bundle, method, defence.kind, defence.params(), config, outcome.info, overlap)
