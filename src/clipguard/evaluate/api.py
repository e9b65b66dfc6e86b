"""``clipguard eval`` as a function: a model folder, a labelled test split, optionally an attack spec."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from clipguard.attacks.base import trigger_from_spec
from clipguard.attacks.multi import MultiTrigger
from clipguard.attacks.poisoner import DEFAULT_TEMPLATES
from clipguard.attacks.tdpa import TargetedPoison
from clipguard.data.manifest import read_manifest
from clipguard.errors import ConfigError
from clipguard.models.factory import ClipBundle, load_model
from clipguard.evaluate.zeroshot import evaluate_zero_shot
from clipguard.utils.io import read_json



def read_classes(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Read ``{"classes": [...], "templates": [...]}`` (templates optional); returns (classes, templates)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: class list not found (a JSON file with 'classes' and optional 'templates')")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(info, dict) or not info.get("classes"):
        raise ConfigError(f"{path}: needs a non-empty 'classes' list")
    return list(info["classes"]), list(info.get("templates") or DEFAULT_TEMPLATES)


def evaluate_model(model: ClipBundle | str | os.PathLike, test_manifest: str | os.PathLike,
                   classes: str | os.PathLike, *, attack_spec: str | os.PathLike | None = None, seed: int = 0,
                   progress: bool = True, device: str | None = None) -> dict:
    """Zero-shot CA, and ASR if an attack spec (``attack.json`` of ``clipguard poison``) is given.

    ``device``: where the model runs (``None``: where it is / the CPU; "auto": the GPU if there is one).
    """
    bundle = model if isinstance(model, ClipBundle) else load_model(model)
    if device is not None:
        bundle.to(device)
    classnames, templates = read_classes(classes)
    test = read_manifest(test_manifest)
    if attack_spec is None:
        return evaluate_zero_shot(bundle, test, classnames, templates, progress=progress)
    spec = read_json(attack_spec)
    trigger, target = trigger_from_spec(spec), spec["target"]
    if isinstance(trigger, TargetedPoison):
        out = evaluate_zero_shot(bundle, test, classnames, templates, progress=progress)
        image = Path(attack_spec).parent / spec["source_image"]
        out.update(evaluate_targeted(bundle, image, classnames, templates, target))
        return out
    if isinstance(trigger, MultiTrigger):
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
    return evaluate_zero_shot(bundle, test, classnames, templates, trigger=trigger, target=target, seed=seed,
                              progress=progress)


def evaluate_targeted(bundle: ClipBundle, image: str | os.PathLike, classnames: list[str], templates: list[str],
                      target: str) -> dict:
    """TDPA success: is the one poisoned image classified as ``target``? (ASR is then 1.0 or 0.0)."""
    import torch

    from clipguard.data.dataset import load_rgb
    from clipguard.evaluate.zeroshot import build_classifier, image_embeddings

    if target not in classnames:
        raise ConfigError(f"target {target!r} is not one of the classes: {', '.join(classnames)}")
    emb = image_embeddings(bundle, torch.stack([bundle.preprocess(load_rgb(image))]))
    probs = (100 * emb @ build_classifier(bundle, classnames, templates).t()).softmax(-1)[0]
    pred = classnames[int(probs.argmax())]
    return {"attack_success_rate": float(pred == target), "tdpa_prediction": pred,
            "tdpa_target_probability": float(probs[classnames.index(target)]), "target": target,
            "asr_convention": "TDPA: 1.0 if the poisoned source image is classified as the target, else 0.0"}
