"""Defend a model and measure it: CA and ASR before, the defence, CA and ASR after, one ``run.json``.

``clipguard defend METHOD MODEL --data DATA --out DIR [--test T --classes C --attack A]``.

``out_dir/run.json`` holds the method, its parameters, the training settings, the data
fingerprint, versions and timings, the defence's own record (per-epoch losses; for
``filter-retrain`` the rows removed) and, when a labelled test split and its classes are given,
``before`` / ``after`` (zero-shot CA; ASR too with the attack's ``attack.json``) and
``asr_reduction`` = 1 - ASR_after / ASR_before (the papers' relative cut) and ``ca_change`` in
points (ASR convention: the share of triggered test images whose true class is not the target
that are classified as the target).
"""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from clipguard.data.manifest import read_manifest
from clipguard.defend import run_defence
from clipguard.evaluate.api import before_after, evaluate_model, headline
from clipguard.errors import ConfigError
from clipguard.models.factory import load_model
from clipguard.utils.device import DEFAULT_DEVICE
from clipguard.utils.runrecord import RunRecord, fingerprint_files

__all__ = ["defend_model"]

def defend_model(method: str, model_dir: str | os.PathLike, data: str | os.PathLike, out_dir: str | os.PathLike, *,
                 test: str | os.PathLike | None = None, classes: str | os.PathLike | None = None,
                 attack_spec: str | os.PathLike | None = None, params: dict[str, Any] | None = None,
                 train: dict[str, Any] | None = None, workers: int = 0, seed: int = 0,
                 device: str | None = DEFAULT_DEVICE, progress: bool = True) -> dict[str, Any]:
    """Apply a model defence (:func:`clipguard.defend.run_defence`) and evaluate before and after.

    Args:
        method, model_dir, data, out_dir, params, train, workers, device: as :func:`run_defence`
            (``train`` = training settings overriding the defence's, e.g. ``{"epochs": 5}``).
        test, classes: a labelled test split and its ``classes.json``: CA before and after.
        attack_spec: the attack's ``attack.json``: ASR before and after (needs ``test``).
        seed: the training seed (unless ``train`` sets one) and the evaluation's trigger seed.

    Returns:
        The ``run.json`` record as a dict.

    Raises:
        ConfigError: as :func:`run_defence`; ``attack_spec`` or ``classes`` without ``test``.
        ManifestError: ``data`` is missing or cannot be read (before anything runs).
    """
    if (classes or attack_spec) and not test or test and not classes:
        raise ConfigError("evaluation needs --test TEST_MANIFEST and --classes CLASSES_JSON together "
                          "(and --attack ATTACK_JSON for the ASR)")
    train = {"seed": seed, **(train or {})}
    rec = RunRecord("defend", {"method": method, "model": str(model_dir), "data": str(data), "test": str(test or ""),
                               "classes": str(classes or ""), "attack_spec": str(attack_spec or ""),
                               "params": params or {}, "train": train, "workers": workers})
    manifest = read_manifest(data)  # a missing or malformed manifest is refused before any evaluation or training
    rec["data_fingerprint"] = fingerprint_files([manifest.path])

    def measure(model: Any) -> dict[str, Any]:
        return headline(evaluate_model(model, test, classes, attack_spec=attack_spec, seed=seed,
                                        progress=progress, device=device))

    if test:
        with rec.stage("evaluate_before"):
            rec["before"] = measure(load_model(model_dir, device=device))
    with rec.stage("defend"):
        res = run_defence(method, model_dir, data, out_dir, params=params, train=train, workers=workers,
                          device=device, progress=progress)
    rec["kind"], rec["params"], rec["train_config"] = res.kind, res.params, asdict(res.config)
    rec["overlap"], rec["defence"] = res.overlap, res.info
    if test:
        with rec.stage("evaluate_after"):
            rec["after"] = measure(res.bundle)
        rec.data.update(before_after(rec["before"], rec["after"]))
    rec.save(Path(out_dir))
    return rec.data
