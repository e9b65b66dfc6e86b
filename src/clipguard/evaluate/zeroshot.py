"""Zero-shot classification: clean accuracy (CA) and attack success rate (ASR).

Conventions (stated in every report):

* Class text embeddings: each class name is filled into every template, the normalised text
  embeddings are averaged per class and normalised again (the CLIP protocol). The headline CA and
  ASR use this template ensemble; per-template figures and their mean are reported beside it.
* CA = top-1 accuracy on clean test images.
* ASR = share of triggered test images whose true class is NOT the target that are classified as
  the target. (Not accuracy against true labels, and target-class images are excluded.)
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from clipguard.attacks.base import Trigger
from clipguard.data.dataset import SkipLog, load_rgb, skip_reason
from clipguard.data.manifest import Manifest
from clipguard.errors import ConfigError
from clipguard.models.factory import ClipBundle
from clipguard.utils.progress import progress_bar
from clipguard.utils.seeding import derive_seed

__all__ = ["ASR_CONVENTION", "TestImages", "build_classifier", "evaluate_zero_shot", "image_embeddings",
           "label_indices", "load_test_images", "text_embeddings"]

ASR_CONVENTION = ("ASR = share of triggered test images whose true class is not the target that are "
                  "classified as the target; headline figures use class embeddings averaged over all templates")


@torch.no_grad()
def text_embeddings(bundle: ClipBundle, captions: Sequence[str], batch_size: int = 512) -> torch.Tensor:
    """(n, D) L2-normalised text embeddings of ``captions``."""
    out = []
    for s in range(0, len(captions), batch_size):
        toks = bundle.tokenizer(list(captions[s:s + batch_size])).to(bundle.device)
        out.append(torch.nn.functional.normalize(bundle.model.encode_text(toks).float(), dim=-1).cpu())
    return torch.cat(out)


@torch.no_grad()
def image_embeddings(bundle: ClipBundle, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """(n, D) L2-normalised embeddings (on the CPU) of preprocessed images (n, 3, H, W), computed on
    the model's device."""
    out = []
    dev = bundle.device
    for s in range(0, len(images), batch_size):
        emb = bundle.model.encode_image(images[s:s + batch_size].to(dev)).float()
        out.append(torch.nn.functional.normalize(emb, dim=-1).cpu())
    return torch.cat(out)


def build_classifier(bundle: ClipBundle, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """(C, D) per-class text embeddings averaged over ``templates`` and re-normalised."""
    caps = [t.format(c) for c in classnames for t in templates]
    emb = text_embeddings(bundle, caps).view(len(classnames), len(templates), -1).mean(1)
    return torch.nn.functional.normalize(emb, dim=-1)


def _label_index(value, index: dict[str, int]) -> int | None:
    """The class index ``value`` stands for (a class name, or an index in range given as a number or
    digits), else None."""
    if isinstance(value, (bool, np.bool_)) or value is None:
        return None
    if isinstance(value, str):
        if value in index:
            return index[value]
        value = int(value.strip()) if value.strip().lstrip("-").isdigit() else None
    elif isinstance(value, (float, np.floating)):
        value = int(value) if float(value).is_integer() else None
    if isinstance(value, (int, np.integer)) and 0 <= int(value) < len(index):
        return int(value)
    return None


def label_indices(manifest: Manifest, classnames: Sequence[str]) -> Manifest:
    """``manifest`` with its ``label`` column as (n,) int64 class indices: an index in ``[0, C)`` stays,
    a class name (what users write) becomes its index in ``classnames``. Unchanged without a ``label``
    column.

    Raises:
        ConfigError: a label that is neither a class name nor an index in range (the message names the
            row, its id and the valid classes).
    """
    if "label" not in manifest.df.columns:
        return manifest
    index = {str(c): j for j, c in enumerate(classnames)}
    out = np.empty(len(manifest.df), dtype=np.int64)
    for i, value in enumerate(manifest.df["label"].tolist()):
        j = _label_index(value, index)
        if j is None:
            what = (f"label {value} is not a class index (0..{len(index) - 1}) of the classes"
                    if isinstance(value, (int, np.integer)) or str(value).strip().lstrip("-").isdigit()
                    else f"label {value!r} is not one of the classes")
            raise ConfigError(f"{manifest.path}: row {i} (id {manifest.df['id'].iat[i]}): {what} "
                              f"{', '.join(map(str, classnames))}; write a class name or its index "
                              f"(0..{len(index) - 1})")
        out[i] = j
    df = manifest.df.copy()
    df["label"] = out
    return replace(manifest, df=df)


@dataclass
class TestImages:
    """Preprocessed test images (n, 3, H, W), their labels (n,), and rows skipped while loading."""

    images: torch.Tensor
    labels: np.ndarray
    skipped: SkipLog


def load_test_images(bundle: ClipBundle, manifest: Manifest, *, trigger: Trigger | None = None,
                     seed: int = 0, progress: bool = True, desc: str = "test images",
                     labelled: bool = True) -> TestImages:
    """Load the labelled test split (column ``label``), optionally with ``trigger`` applied (test variant).

    ``labelled=False`` also reads a manifest without labels (e.g. clean image-caption pairs); the
    labels are then -1. ``skipped`` lists the unreadable rows and the lines the manifest's reader left out.

    Raises:
        ConfigError: no ``label`` column (when ``labelled``), or no test image can be read.
    """
    has_labels = "label" in manifest.df.columns and pd.api.types.is_integer_dtype(manifest.df["label"])
    if labelled and not has_labels:
        raise ConfigError(f"{manifest.path}: a labelled test manifest needs an integer 'label' column "
                          "(the index of each image's class in classes.json) or a column of class names")
    imgs, labels, skipped = [], [], SkipLog()
    skipped.add_read_skips(manifest)  # the lines the manifest's reader left out
    with progress_bar(len(manifest), desc, unit="img", enabled=progress) as bar:
        for i in range(len(manifest)):
            bar.update(1)
            try:
                pil = load_rgb(manifest.image_path(i))
            except Exception as exc:  # missing, corrupt, too large or outside the roots: counted
                skipped.add(i, str(manifest.df["id"].iat[i]), skip_reason(exc))
                continue
            if trigger is not None:
                seed_i = derive_seed(seed, "test-trigger", manifest.df["id"].iat[i])
                pil = Image.fromarray(trigger.apply(np.asarray(pil), seed=seed_i, test=True))
            imgs.append(bundle.preprocess(pil))
            labels.append(int(manifest.df["label"].iat[i]) if has_labels else -1)
    if not imgs:
        raise ConfigError(f"{manifest.path}: none of the {len(manifest)} test images can be read "
                          f"({', '.join(f'{n} {r}' for r, n in skipped.counts().items()) or 'no rows'}); "
                          "fix the image paths")
    return TestImages(torch.stack(imgs), np.asarray(labels), skipped)


def _predict(img_emb: torch.Tensor, classifier: torch.Tensor) -> np.ndarray:
    """(n,) index of the most similar class of each embedding."""
    return (img_emb @ classifier.t()).argmax(1).numpy()


def evaluate_zero_shot(bundle: ClipBundle, test: Manifest, classnames: Sequence[str], templates: Sequence[str], *,
                       trigger: Trigger | None = None, target: str | None = None, seed: int = 0,
                       progress: bool = True) -> dict:
    """CA (and ASR when ``trigger`` and ``target`` are given) of ``bundle`` on a labelled test split.

    The ``label`` column holds class indices or class names (:func:`label_indices`).

    Returns:
        ``{"clean_accuracy", "clean_accuracy_per_template", "n_test", "n_test_skipped",
        "test_skip_counts" (skipped test images by reason), "rows_decoded_with_replacement"}`` plus,
        with a trigger, ``{"attack_success_rate", "attack_success_rate_per_template",
        "attack_success_rate_template_mean", "n_asr", "target", "asr_convention"}``.

    Raises:
        ConfigError: a label that is not a class, no readable test image, a target that is not a class.
    """
    bundle.model.eval()
    test = label_indices(test, classnames)
    clean = load_test_images(bundle, test, progress=progress, desc="clean test")
    emb = image_embeddings(bundle, clean.images)
    heads = {"ensemble": build_classifier(bundle, classnames, templates)}
    heads.update({t: build_classifier(bundle, classnames, [t]) for t in templates})
    ca = {name: float((_predict(emb, w) == clean.labels).mean()) for name, w in heads.items()}
    out: dict = {"clean_accuracy": ca.pop("ensemble"), "clean_accuracy_per_template": ca, "n_test": len(clean.labels),
                 "n_test_skipped": len(clean.skipped), "test_skip_counts": clean.skipped.counts(), **test.read_counts()}
    if trigger is None:
        return out
    if target not in classnames:
        raise ConfigError(f"target {target!r} is not one of the classes: {', '.join(classnames)}")
    t_idx = list(classnames).index(target)
    trig = load_test_images(bundle, test, trigger=trigger, seed=seed, progress=progress, desc="triggered test")
    keep = trig.labels != t_idx
    if not keep.any():
        raise ConfigError("every test image belongs to the target class; ASR is undefined")
    temb = image_embeddings(bundle, trig.images[torch.from_numpy(keep)])
    asr = {name: float((_predict(temb, w) == t_idx).mean()) for name, w in heads.items()}
    out.update({
        "attack_success_rate": asr.pop("ensemble"),
        "attack_success_rate_per_template": asr,
        "attack_success_rate_template_mean": float(np.mean(list(asr.values()))),
        "n_asr": int(keep.sum()),
        "target": target,
        "asr_convention": ASR_CONVENTION,
    })
    return out
