"""``clipguard eval`` as a function: a model folder, a labelled test split, optionally an attack spec."""
from __future__ import annotations

import json
import os
from pathlib import Path

from clipguard.attacks.base import trigger_from_spec
from clipguard.data.manifest import read_manifest
from clipguard.errors import ConfigError
from clipguard.models.factory import ClipBundle, load_model
from clipguard.evaluate.zeroshot import evaluate_zero_shot
from clipguard.utils.io import read_json

DEFAULT_TEMPLATES = ("a photo of a {}.",)


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
                   progress: bool = True) -> dict:
    """Zero-shot CA, and ASR if an attack spec (``attack.json`` of ``clipguard poison``) is given."""
    bundle = model if isinstance(model, ClipBundle) else load_model(model)
    classnames, templates = read_classes(classes)
    trigger, target = None, None
    if attack_spec is not None:
        spec = read_json(attack_spec)
        trigger, target = trigger_from_spec(spec), spec["target"]
    return evaluate_zero_shot(bundle, read_manifest(test_manifest), classnames, templates,
                              trigger=trigger, target=target, seed=seed, progress=progress)
