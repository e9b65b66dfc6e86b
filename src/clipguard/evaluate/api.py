"""``clipguard eval`` as a function: a model folder, a labelled test split, optionally an attack spec."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from clipguard.attacks.base import trigger_from_spec
from clipguard.attacks.multi import MultiTrigger
from clipguard.attacks.tdpa import TargetedPoison
from clipguard.data.dataset import load_rgb
from clipguard.data.manifest import Manifest, read_manifest
from clipguard.data.templates import DEFAULT_TEMPLATES, check_templates
from clipguard.errors import ConfigError
from clipguard.evaluate.zeroshot import build_classifier, evaluate_zero_shot, image_embeddings, label_indices
from clipguard.models.factory import ClipBundle, load_model
from clipguard.utils.device import DEFAULT_DEVICE
from clipguard.utils.io import read_json_object

__all__ = ["before_after", "evaluate_model", "evaluate_targeted", "headline", "read_classes"]

HEADLINE = ("clean_accuracy", "attack_success_rate", "n_test", "n_asr", "target", "asr_convention", "n_test_skipped",
            "test_skip_counts")


def read_classes(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Read ``{"classes": [...], "templates": [...]}``; returns (classes, templates).

    ``templates`` is optional: without it, :data:`clipguard.data.templates.DEFAULT_TEMPLATES`.

    Raises:
        ConfigError: the file is missing or not JSON, ``classes`` is not a non-empty list of names,
            or a template lacks the ``{}`` where the class name goes.
    """
    path = Path(path)
    info = read_json_object(path, "a class list (a JSON file with 'classes' and optional 'templates')")
    classes = info.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c.strip() for c in classes):
        raise ConfigError(f"{path}: needs a non-empty 'classes' list of class names")
    templates = info.get("templates") or DEFAULT_TEMPLATES
    if isinstance(templates, str) or not isinstance(templates, (list, tuple)):
        raise ConfigError(f"{path}: 'templates' must be a list of strings such as 'a photo of a {{}}.'")
    try:
        return list(classes), list(check_templates(templates))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def headline(res: dict) -> dict:
    """The headline figures of an :func:`evaluate_model` result (CA, ASR, sizes, target, convention)."""
    return {k: res[k] for k in HEADLINE if k in res}


def before_after(before: dict, after: dict) -> dict:
    """``ca_change`` in points and, with ASRs, ``asr_reduction`` = 1 - ASR_after / ASR_before (None when
    ASR_before is 0) of two :func:`headline` results."""
    out: dict = {"ca_change": round(100 * (after["clean_accuracy"] - before["clean_accuracy"]), 3)}
    if "attack_success_rate" in before and "attack_success_rate" in after:
        b = before["attack_success_rate"]
        out["asr_reduction"] = None if b == 0 else 1 - after["attack_success_rate"] / b
    return out


def _multi_trigger_asr(bundle: ClipBundle, test: Manifest, classnames: list[str], templates: list[str],
                       trigger: MultiTrigger, target: str, seed: int, progress: bool) -> dict:
    """CA and the ASR of each member trigger (its own target), with their means as the headline."""
    per = [evaluate_zero_shot(bundle, test, classnames, templates, trigger=m, target=trigger.target_of(j, target),
                              seed=seed, progress=progress) for j, m in enumerate(trigger.members)]
    out = dict(per[0])
    out["attack_success_rate_per_trigger"] = {trigger.member_name(j): p["attack_success_rate"]
                                              for j, p in enumerate(per)}
    out["attack_success_rate"] = float(np.mean([p["attack_success_rate"] for p in per]))
    out["attack_success_rate_template_mean"] = float(np.mean([p["attack_success_rate_template_mean"] for p in per]))
    out["attack_success_rate_per_template"] = {
        t: float(np.mean([p["attack_success_rate_per_template"][t] for p in per])) for t in templates}
    out["target"] = [trigger.target_of(j, target) for j in range(len(trigger.members))]
    return out


def evaluate_model(model: ClipBundle | str | os.PathLike, test_manifest: str | os.PathLike,
                   classes: str | os.PathLike, *, attack_spec: str | os.PathLike | None = None, seed: int = 0,
                   progress: bool = True, device: str | None = DEFAULT_DEVICE) -> dict:
    """Zero-shot CA, and ASR if an attack spec (``attack.json`` of ``clipguard poison``) is given.

    Args:
        model: a model folder (loaded onto ``device``) or a :class:`ClipBundle`, evaluated where
            it already is (its caller chose its device).
        test_manifest: a labelled test split (column ``label``: class indices or class names).
        classes: ``classes.json`` (see :func:`read_classes`).
        attack_spec: ``attack.json``; its trigger is applied to the test images (test variant).
        seed: per-image trigger randomness.
        device: where a model folder is loaded (default ``DEFAULT_DEVICE``, "auto": the GPU if
            torch sees one, else the CPU; ``None`` or "cpu": the CPU).

    Raises:
        ConfigError: a missing or malformed classes file or attack spec, a target that is not a class, a
            label that is not a class (the message names the row).
    """
    classnames, templates = read_classes(classes)
    spec = None if attack_spec is None else read_json_object(Path(attack_spec), "an attack spec (attack.json)")
    test = label_indices(read_manifest(test_manifest), classnames)  # bad inputs fail before the model is loaded
    bundle = model if isinstance(model, ClipBundle) else load_model(model, device=device)
    if spec is None:
        return evaluate_zero_shot(bundle, test, classnames, templates, progress=progress)
    trigger, target = trigger_from_spec(spec), spec.get("target")
    if target is None:
        raise ConfigError(f"{attack_spec}: no 'target'; pass the attack.json written by `clipguard poison`")
    targets = ([trigger.target_of(j, target) for j in range(len(trigger.members))]
               if isinstance(trigger, MultiTrigger) else [target])
    for t in targets:  # checked before the (slow) clean evaluation
        if t not in classnames:
            raise ConfigError(f"{attack_spec}: target {t!r} is not one of the classes of {classes}: "
                              f"{', '.join(classnames)}")
    if isinstance(trigger, TargetedPoison):
        if "source_image" not in spec:
            raise ConfigError(f"{attack_spec}: a tdpa spec needs 'source_image'; pass the attack.json written by "
                              "`clipguard poison`")
        out = evaluate_zero_shot(bundle, test, classnames, templates, progress=progress)
        out.update(evaluate_targeted(bundle, Path(attack_spec).parent / spec["source_image"], classnames, templates,
                                     target))
        return out
    if isinstance(trigger, MultiTrigger):
        return _multi_trigger_asr(bundle, test, classnames, templates, trigger, target, seed, progress)
    return evaluate_zero_shot(bundle, test, classnames, templates, trigger=trigger, target=target, seed=seed,
                              progress=progress)


def evaluate_targeted(bundle: ClipBundle, image: str | os.PathLike, classnames: Sequence[str],
                      templates: Sequence[str], target: str) -> dict:
    """TDPA success: is the one poisoned image classified as ``target``? (ASR is then 1.0 or 0.0)."""
    if target not in classnames:
        raise ConfigError(f"target {target!r} is not one of the classes: {', '.join(classnames)}")
    try:
        pil = load_rgb(image)
    except OSError as exc:
        raise ConfigError(f"{image}: the tdpa source image cannot be read ({exc}); poison again") from None
    emb = image_embeddings(bundle, torch.stack([bundle.preprocess(pil)]))
    probs = (100 * emb @ build_classifier(bundle, classnames, templates).t()).softmax(-1)[0]
    pred = classnames[int(probs.argmax())]
    return {"attack_success_rate": float(pred == target), "tdpa_prediction": pred,
            "tdpa_target_probability": float(probs[list(classnames).index(target)]), "target": target,
            "asr_convention": "TDPA: 1.0 if the poisoned source image is classified as the target, else 0.0"}
