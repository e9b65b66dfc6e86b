"""A factory over open_clip.

* Any open_clip architecture by name (``RN50``, ``ViT-B-32``, ...), randomly initialised; no weights
  are ever downloaded.
* Tiny architectures for CPU work, registered as JSON files in ``clipguard/models/configs``
  (``tiny-rn``, ``tiny-vit``); open_clip sees them under the same names.
* Local weights from a ``.safetensors`` file, or a torch file loaded with ``weights_only=True``
  (untrusted pickles are never executed).
* A trained model is saved as a folder: ``model.safetensors`` + ``model.json`` (architecture name
  and full config), loadable without clipguard's config registry. A ViT repaired at inference
  (:mod:`clipguard.models.head_repair`) keeps its original weights there, plus ``repair.safetensors``
  and ``model.json["repair"]``; :func:`load_model` applies the repair again.

Seeding: open_clip draws the initial weights from torch's global generator, which takes no generator
argument; :func:`create_model` therefore builds the model inside
:func:`~clipguard.utils.seeding.seeded_torch_rng`: the same seed gives the same weights, and the
caller's global generator state is the same after the call as before it.

Device: the factories build on the CPU unless told (``device=None``); the commands that run a model
pass :data:`~clipguard.utils.device.DEFAULT_DEVICE`.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch
from safetensors.torch import load_file, save_file

from clipguard.errors import ConfigError
from clipguard.models.head_repair import HeadRepair, attach_repair, split_state
from clipguard.utils.device import resolve_device
from clipguard.utils.io import atomic_path, read_json_object, write_json
from clipguard.utils.seeding import seeded_torch_rng

__all__ = ["ClipBundle", "create_model", "get_model_config", "list_models", "load_model", "load_state_dict",
           "save_model"]

CONFIG_DIR = Path(__file__).parent / "configs"
open_clip.add_model_config(CONFIG_DIR)


@dataclass
class ClipBundle:
    """A CLIP model with its preprocessing and tokenizer.

    Attributes:
        model: an ``open_clip.CLIP`` (``encode_image``: (B,3,H,W) -> (B,D); ``encode_text``: (B,L) -> (B,D)).
        preprocess: PIL image -> (3, H, W) float tensor (open_clip's eval transform).
        tokenizer: list of captions -> (n, L) LongTensor.
        name: architecture name.
        config: the open_clip model config (dict with embed_dim, vision_cfg, text_cfg).
    """

    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Callable
    name: str
    config: dict[str, Any]

    @property
    def device(self) -> torch.device:
        """The device the model's parameters live on."""
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device | None) -> "ClipBundle":
        """Move the model to ``device`` (see :func:`clipguard.utils.device.resolve_device`); returns self."""
        self.model.to(resolve_device(device))
        return self

    @property
    def image_size(self) -> int:
        size = self.config["vision_cfg"]["image_size"]
        return int(size if isinstance(size, int) else size[0])


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`: clipguard's tiny configs first, then open_clip's."""
    tiny = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
    return tiny + [m for m in open_clip.list_models() if m not in tiny]


def get_model_config(name: str) -> dict[str, Any]:
    """The open_clip config dict of architecture ``name`` (a copy)."""
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ConfigError(f"unknown model {name!r}; `clipguard models` lists the {len(list_models())} known names")
    return copy.deepcopy(cfg)


def _build(name: str, config: dict[str, Any]) -> ClipBundle:
    cfg = copy.deepcopy(config)
    if "hf_model_name" in cfg.get("text_cfg", {}) or cfg.get("custom_text"):
        model = open_clip.CustomTextCLIP(**cfg)
    else:
        model = open_clip.CLIP(embed_dim=cfg.pop("embed_dim"), vision_cfg=cfg.pop("vision_cfg"),
                               text_cfg=cfg.pop("text_cfg"), **cfg)
    image_size = config["vision_cfg"]["image_size"]
    preprocess = open_clip.image_transform(image_size, is_train=False,
                                           mean=open_clip.OPENAI_DATASET_MEAN, std=open_clip.OPENAI_DATASET_STD)
    tokenizer = open_clip.SimpleTokenizer(context_length=config["text_cfg"].get("context_length", 77))
    model.eval()
    return ClipBundle(model=model, preprocess=preprocess, tokenizer=tokenizer, name=name, config=config)


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read weights from ``.safetensors`` or a torch file (``weights_only=True``: no code is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights file {path} not found")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"{path}: cannot be loaded safely with weights_only=True ({exc}); "
                          "convert it to .safetensors") from None
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _first_reason(exc: Exception) -> str:
    """The first specific line of a (multi-line) load error, e.g. one shape mismatch of torch's list."""
    text = str(exc)
    first = text.split("\n\t")[1] if "\n\t" in text else text
    return first.strip().splitlines()[0] if first.strip() else type(exc).__name__


def create_model(name: str, *, weights: str | os.PathLike | None = None, seed: int | None = 0,
                 device: str | torch.device | None = None) -> ClipBundle:
    """Create architecture ``name`` with random init (seeded), optionally loading local ``weights``.

    Args:
        name: a name from :func:`list_models`.
        weights: optional ``.safetensors`` or torch weights file for that architecture.
        seed: seed of the random initialisation, drawn in a forked torch generator (the caller's
            global state is untouched; the same seed gives the same weights). ``None``: draw from
            the global generator as it stands.
        device: where the model goes (``None``: CPU; "auto": the GPU if there is one).
    """
    config = get_model_config(name)
    if seed is None:
        bundle = _build(name, config)
    else:
        with seeded_torch_rng(seed):
            bundle = _build(name, config)
    if weights is not None:
        try:
            missing, unexpected = bundle.model.load_state_dict(load_state_dict(weights), strict=False)
        except RuntimeError as exc:  # shape mismatches
            raise ConfigError(f"{weights}: weights do not match architecture {name!r} ({_first_reason(exc)})") from None
        if missing or unexpected:
            raise ConfigError(f"{weights}: weights do not match architecture {name!r} "
                              f"(missing {len(missing)} keys e.g. {missing[:2]}, unexpected {len(unexpected)} e.g. {unexpected[:2]})")
    return bundle.to(device)


def save_model(bundle: ClipBundle, out_dir: str | os.PathLike, *, extra: dict[str, Any] | None = None) -> Path:
    """Save as ``out_dir/model.safetensors`` + ``out_dir/model.json``; returns ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state, repair = split_state(bundle.model)
    with atomic_path(out / "model.safetensors") as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp))
    record = {"model_name": bundle.name, "config": bundle.config, **(extra or {})}
    if repair is not None:
        with atomic_path(out / "repair.safetensors") as tmp:
            save_file(repair.tensors(), str(tmp))
        record["repair"] = repair.record()
    elif (out / "repair.safetensors").exists():
        (out / "repair.safetensors").unlink()
    write_json(out / "model.json", record)
    return out


def load_model(path: str | os.PathLike, *, device: str | torch.device | None = None) -> ClipBundle:
    """Load a model folder written by :func:`save_model` (or its ``model.json``/``.safetensors`` path)
    onto ``device`` (``None``: CPU; "auto": the GPU if there is one)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    meta = _read_model_json(folder)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ConfigError(f"{folder}: no model.safetensors beside model.json; pass a folder written by "
                          "`clipguard train`")
    try:
        bundle = _build(meta["model_name"], meta["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{folder / 'model.json'}: its config does not describe an open_clip model ({exc!r}); "
                          "pass a folder written by `clipguard train`") from None
    try:
        state = load_file(str(weights))
        _check_towers(bundle.model, state, weights)
        bundle.model.load_state_dict(state)
    except ConfigError:
        raise
    except Exception as exc:  # safetensors and torch raise several types (corrupt file, shape mismatch)
        raise ConfigError(f"{weights}: cannot be loaded into architecture {meta['model_name']!r} "
                          f"({_first_reason(exc)}); "
                          "retrain or pass the matching folder") from None
    if "repair" in meta:
        _reattach_repair(bundle, folder, meta["repair"])
    bundle.model.eval()
    return bundle.to(device)


def _check_towers(model: torch.nn.Module, state: dict[str, torch.Tensor], weights: Path) -> None:
    """Refuse, in one line, weights that hold only one of CLIP's two towers."""
    expected = set(model.state_dict())
    missing = expected - set(state)
    visual = {k for k in expected if k.startswith("visual.")}
    if missing and missing == expected - visual:
        raise ConfigError(f"{weights}: holds no text tower (only the image tower's weights); zero-shot evaluation, "
                          "trigger reverse-engineering and audits need a CLIP with both towers")
    if missing and missing >= visual:
        raise ConfigError(f"{weights}: holds no image tower (only the text tower's weights); pass a full CLIP")


def _reattach_repair(bundle: ClipBundle, folder: Path, record: Any) -> None:
    """Apply the inference-time repair recorded in ``model.json["repair"]`` and ``repair.safetensors``."""
    path = folder / "repair.safetensors"
    if not isinstance(record, dict) or not path.is_file():
        raise ConfigError(f"{folder}: model.json records a head repair but repair.safetensors is missing or "
                          "the record is not an object; rerun `clipguard heads repair`")
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise ConfigError(f"{path}: cannot be read ({_first_reason(exc)}); rerun `clipguard heads repair`") from None
    attach_repair(bundle.model, HeadRepair.from_parts(tensors, record))


def _read_model_json(folder: Path) -> dict[str, Any]:
    """``model.json`` of a model folder, checked for ``model_name`` and ``config``."""
    meta_path = folder / "model.json"
    if not meta_path.is_file():
        raise ConfigError(f"{folder}: no model.json; pass a folder written by `clipguard train`")
    meta = read_json_object(meta_path, "a model record", "pass a folder written by `clipguard train`")
    if not isinstance(meta.get("config"), dict) or "model_name" not in meta:
        raise ConfigError(f"{meta_path}: needs 'model_name' and 'config'; pass a folder written by `clipguard train`")
    return meta
