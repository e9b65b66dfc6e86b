"""A factory over open_clip.

* Any open_clip architecture by name (``RN50``, ``ViT-B-32``, ...), randomly initialised; no weights
  are ever downloaded.
* Tiny architectures for CPU work, registered as JSON files in ``clipguard/models/configs``
  (``tiny-rn``, ``tiny-vit``); open_clip sees them under the same names.
* Local weights from a ``.safetensors`` file (preferred: it holds tensors only), or a torch file loaded
  with ``weights_only=True`` (:func:`load_torch_file`): a pickle that would build anything but tensors
  and plain containers (a ``__reduce__`` calling ``os.system``, ...) is refused in one line and nothing
  in it runs. Weights whose tensors do not match the architecture are refused naming the first
  mismatch (tensor name, expected and found shape).
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
import pickle
import warnings
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

__all__ = ["ClipBundle", "create_model", "first_mismatch", "get_model_config", "list_models", "load_model",
           "load_state_dict", "load_torch_file", "save_model"]

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
        trained_on: the manifest the model was trained on (``model.json``'s ``trained_on``, set by
            :func:`load_model`; None for a fresh model): ``clipguard embed`` notes when it embeds that set.
    """

    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Callable
    name: str
    config: dict[str, Any]
    trained_on: str | None = None

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


_TORCH_BOILERPLATE = ("weights only load failed", "please file an issue", "check the documentation",
                      "weightsunpickler error", "in pytorch 2.6", "re-running")


def _unpickle_reason(exc: Exception) -> str:
    """The specific line of torch's (long, multi-line) weights_only refusal, e.g. ``Trying to load
    unsupported GLOBAL posix.system whose module posix is blocked``."""
    lines = [ln.strip().rstrip(".") for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.lower().startswith(_TORCH_BOILERPLATE)]
    return useful[0] if useful else type(exc).__name__


def load_torch_file(path: str | os.PathLike, what: str = "weights file",
                    fix: str = "convert it to .safetensors where you trust it, and pass that") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors and plain containers only.

    A pickle that would build anything else (a ``__reduce__`` that calls ``os.system``, any class) is
    refused BEFORE it runs: torch's restricted unpickler stops at the first forbidden global.

    Args:
        path: the file.
        what, fix: what the file is and what to do about a refused one, for the message.

    Raises:
        ConfigError: one line naming ``path``: refused (it needs code or objects other than tensors),
            or unreadable.
    """
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it was not written with
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ConfigError(f"{path}: refused: this {what} is a pickle that needs more than tensors to load "
                          f"(torch weights_only=True: {_unpickle_reason(exc)}); nothing in it was run; {fix}") from None
    except Exception as exc:  # noqa: BLE001 - corrupt zip, not a torch file, ...
        raise ConfigError(f"{path}: cannot be read as a torch {what} ({type(exc).__name__}: "
                          f"{_first_reason(exc)}); {fix}") from None


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read weights from ``.safetensors`` (preferred) or a torch file (:func:`load_torch_file`: no code is
    unpickled), as ``{tensor name: tensor}`` (a ``state_dict`` entry and ``module.`` prefixes unwrapped).

    Raises:
        ConfigError: the file is missing, unreadable, refused (a pickle needing more than tensors), or
            holds something other than named tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights file {path} not found")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise ConfigError(f"{path}: not a readable .safetensors file ({_first_reason(exc)}); "
                              "re-export the weights") from None
    sd = load_torch_file(path)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ConfigError(f"{path}: holds a {type(sd).__name__}, not a state_dict (tensor name -> tensor); "
                          "save model.state_dict()")
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise ConfigError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor; save the model's "
                              "state_dict() alone")
    return {str(k).removeprefix("module."): v for k, v in sd.items()}


def first_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str | None:
    """One line naming the first tensor, in the architecture's order, that ``found`` lacks or holds with
    another shape (else the first tensor of ``found`` the architecture does not have), with the count of
    the others; None when names and shapes all match."""
    problems = []
    for name, t in expected.items():
        want = tuple(t.shape)
        if name not in found:
            problems.append(f"tensor {name!r} (expected shape {want}) is missing")
        elif tuple(found[name].shape) != want:
            problems.append(f"tensor {name!r} has shape {tuple(found[name].shape)}, expected {want}")
    problems += [f"tensor {k!r} (shape {tuple(v.shape)}) is not part of the architecture"
                 for k, v in found.items() if k not in expected]
    if not problems:
        return None
    return problems[0] + (f" (and {len(problems) - 1} more mismatched tensors)" if len(problems) > 1 else "")


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
        state = load_state_dict(weights)
        problem = first_mismatch(bundle.model.state_dict(), state)
        if problem:
            raise ConfigError(f"{weights}: weights do not match architecture {name!r}: {problem}; pass weights "
                              f"saved from {name!r} or the architecture they come from")
        bundle.model.load_state_dict(state)
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
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types (a pickle is never run)
        raise ConfigError(f"{weights}: not a readable .safetensors file ({_first_reason(exc)}); pass a folder "
                          "written by `clipguard train`") from None
    _check_towers(bundle.model, state, weights)
    problem = first_mismatch(bundle.model.state_dict(), state)
    if problem:
        raise ConfigError(f"{weights}: cannot be loaded into architecture {meta['model_name']!r}: {problem}; "
                          "retrain or pass the matching folder")
    try:
        bundle.model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - e.g. a tensor torch cannot copy (dtype)
        raise ConfigError(f"{weights}: cannot be loaded into architecture {meta['model_name']!r} "
                          f"({_first_reason(exc)}); "
                          "retrain or pass the matching folder") from None
    if "repair" in meta:
        _reattach_repair(bundle, folder, meta["repair"])
    bundle.trained_on = meta.get("trained_on")
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
