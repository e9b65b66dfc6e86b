"""``clipguard reverse MODEL --target CAPTION --images CLEAN --out DIR``: reverse-engineer a trigger towards a
target caption and verify it (issue 12, first part).

The zero-shot head is the class list (``classes.json``: class names x templates) or, without one, the most
frequent captions of the images' manifest; the target caption is added as an extra class unless it is
already one. The images are split in half: :func:`clipguard.analyze.reverse_trigger` optimises on the
first half, the trigger is verified on the second (held-out ASR: share of the held-out images not already
classified as the target that the stamped copy sends there). The controls are the same search for
``controls`` random captions of the data, held to the target trigger's mask size (``max_mask``): the ASR a
caption reaches with that much of the image when no backdoor leads there.

The target must be something the model could have learnt: a class name of ``classes``, or a caption of the
images' manifest or of ``data`` (the training manifest); anything else is refused in one line.

Writes ``trigger.png`` (the pattern), ``mask.png`` (8-bit mask), ``trigger.json`` and ``run.json`` (with
``n_skipped`` and ``skip_counts``: the image rows skipped, by reason), and ``skipped.csv`` when a row was.
"""
from __future__ import annotations

import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from clipguard.analyze import ReverseConfig, ReversedTrigger, clip_normalise, reverse_trigger, zero_shot_predict
from clipguard.analyze.discover import normalise_caption
from clipguard.data.dataset import SkipLog, load_rgb, skip_reason
from clipguard.data.manifest import Manifest, read_manifest
from clipguard.errors import ConfigError
from clipguard.evaluate.api import read_classes
from clipguard.evaluate.zeroshot import build_classifier, text_embeddings
from clipguard.models.factory import ClipBundle, load_model
from clipguard.utils.device import DEFAULT_DEVICE
from clipguard.utils.io import atomic_path, write_json
from clipguard.utils.runrecord import RunRecord, fingerprint_files

__all__ = ["check_target", "control_captions", "pixel_images", "record_skips", "require_text_tower", "reverse_model",
           "save_trigger", "search_trigger", "zero_shot_head"]

MAX_CAPTION_CLASSES = 100


def pixel_images(manifest: Manifest, size: int, n: int, skip_log: SkipLog | None = None) -> torch.Tensor:
    """(m, 3, size, size) images in [0, 1] from the first rows of ``manifest`` that can be read.

    A row whose image is missing, unreadable, too large or outside the dataset's roots is skipped and
    recorded in ``skip_log`` with its reason (:func:`~clipguard.data.dataset.skip_reason`), as are the
    lines the manifest's reader left out; rows after the first ``n`` readable ones are not read.
    """
    if len(manifest) == 0:
        raise ConfigError(f"{manifest.path}: the image set is empty; pass a manifest of clean images")
    skipped = skip_log if skip_log is not None else SkipLog()
    skipped.add_read_skips(manifest)
    arrays = []
    for i in range(len(manifest)):
        if len(arrays) == n:
            break
        try:
            arrays.append(np.array(load_rgb(manifest.image_path(i)).resize((size, size))))
        except Exception as exc:  # missing, corrupt, too large (PIL's bomb error is no OSError), outside the roots
            skipped.add(i, str(manifest.df["id"].iat[i]), skip_reason(exc))
    if len(arrays) < 4:
        counts = ", ".join(f"{k} {r}" for r, k in skipped.counts().items())
        raise ConfigError(f"{manifest.path}: {len(arrays)} readable images{f' ({counts} skipped)' if counts else ''}; "
                          "reverse-engineering needs at least 4")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


def record_skips(rec: RunRecord, n_read: int, skipped: SkipLog, out: Path) -> None:
    """``n_images_read`` (``n_read``), ``n_skipped`` and ``skip_counts`` (by reason) into ``rec``;
    ``out/skipped.csv`` lists each skipped row."""
    rec["n_images_read"], rec["n_skipped"], rec["skip_counts"] = n_read, len(skipped), skipped.counts()
    if len(skipped):
        skipped.save(out / "skipped.csv")


def zero_shot_head(bundle: ClipBundle, manifest: Manifest, classes: str | os.PathLike | None,
                   extra: Sequence[str] = ()) -> tuple[list[str], torch.Tensor]:
    """(names, (C, D) L2-normalised class embeddings): the classes of ``classes.json`` (names x templates) or,
    without one, the manifest's most frequent captions; then every caption of ``extra`` not already a name."""
    if classes is not None:
        names, templates = read_classes(classes)
        clf = build_classifier(bundle, names, templates).cpu()
    else:
        names = list(manifest.df["caption"].astype(str).value_counts().index[:MAX_CAPTION_CLASSES])
        clf = text_embeddings(bundle, names)
    new = [c for c in dict.fromkeys(extra) if c not in names]
    if new:
        names, clf = names + new, torch.cat([clf, text_embeddings(bundle, new)])
    return names, clf


def _with_caption(bundle: ClipBundle, head: tuple[list[str], torch.Tensor],
                  caption: str) -> tuple[torch.Tensor, int, bool]:
    """(classifier, index of ``caption``, whether it was added): the head, plus ``caption`` if it is no class."""
    names, clf = head
    if caption in names:
        return clf, names.index(caption), False
    return torch.cat([clf, text_embeddings(bundle, [caption])]), len(names), True


def check_target(target: str, *, classes: str | os.PathLike | None, manifests: list[Manifest]) -> None:
    """Refuse an empty target, or one that is neither a class of ``classes`` nor a caption of the manifests
    (compared after :func:`~clipguard.analyze.discover.normalise_caption`)."""
    if not target or not target.strip():
        raise ConfigError("--target must be a caption or class name, e.g. --target 'a photo of a star'")
    want = normalise_caption(target)
    if classes is not None and want in {normalise_caption(c) for c in read_classes(classes)[0]}:
        return
    for man in manifests:
        if (man.df["caption"].astype(str).map(normalise_caption) == want).any():
            return
    where = ", ".join([str(classes)] * (classes is not None) + [str(m.path) for m in manifests])
    raise ConfigError(f"target {target!r} is neither a class nor a caption of {where}; pass a class name, a "
                      "caption of the data, or the training manifest with --data")


def _held_out_asr(bundle: ClipBundle, trig: ReversedTrigger, images: torch.Tensor, clf: torch.Tensor,
                  target: int) -> tuple[float, int]:
    """(share of held-out images not already at the target that the stamped copy sends there, their number)."""
    def pred(x: torch.Tensor) -> np.ndarray:
        return zero_shot_predict(bundle.model.encode_image(clip_normalise(x.to(bundle.device))).cpu(), clf)

    with torch.no_grad():
        keep = pred(images) != target
        if not keep.any():
            return float("nan"), 0
        return float((pred(trig.apply(images[torch.from_numpy(keep)])) == target).mean()), int(keep.sum())


def require_text_tower(bundle: ClipBundle) -> None:
    """Refuse, in one line, a model that cannot embed captions (reverse-engineering aims at a caption)."""
    towers = [getattr(bundle.model, name, None) for name in ("transformer", "text")]
    if not hasattr(bundle.model, "encode_text") or all(t is None for t in towers):
        raise ConfigError(f"model {bundle.name!r} has no text tower; reverse-engineering and audits aim at a "
                          "caption and need a CLIP with both towers")


def control_captions(manifest: Manifest, target: str, n: int, seed: int) -> list[str]:
    """``n`` distinct captions of ``manifest`` other than ``target``, drawn with ``seed`` (sorted pool)."""
    pool = sorted(set(manifest.df["caption"].astype(str)) - {target})
    picks = np.random.default_rng(seed).choice(len(pool), size=min(n, len(pool)), replace=False) if pool else []
    return [pool[i] for i in picks]


def save_trigger(out: Path, trig: ReversedTrigger, prefix: str = "") -> None:
    """``{prefix}trigger.png`` (the pattern, RGB) and ``{prefix}mask.png`` (8-bit grey)."""
    for name, arr in ((f"{prefix}trigger.png", trig.pattern), (f"{prefix}mask.png", trig.mask)):
        with atomic_path(out / name) as tmp:
            Image.fromarray(np.clip(np.rint(arr * 255), 0, 255).astype(np.uint8)).save(tmp, format="PNG")


def search_trigger(bundle: ClipBundle, fit: torch.Tensor, held: torch.Tensor, clf: torch.Tensor, target: int,
            config: ReverseConfig, progress: bool) -> tuple[ReversedTrigger, dict[str, Any]]:
    trig = reverse_trigger(bundle.model, fit, clf, target, config=config, progress=progress)
    asr, n = _held_out_asr(bundle, trig, held, clf, target)
    return trig, {"mask_l1": trig.mask_l1, "success": trig.success, "held_out_asr": asr, "n_held_out": n}


def reverse_model(model: ClipBundle | str | os.PathLike, target: str, images: str | os.PathLike,
                  out_dir: str | os.PathLike, *, classes: str | os.PathLike | None = None,
                  data: str | os.PathLike | None = None, controls: int = 3,
                  n_images: int = 400, config: ReverseConfig = ReverseConfig(), device: str | None = DEFAULT_DEVICE,
                  progress: bool = True) -> dict[str, Any]:
    """Reverse-engineer a trigger towards ``target`` and verify it on held-out images, with controls.

    Args:
        model: a model folder or a :class:`ClipBundle`.
        target: the target caption (or a class name of ``classes``).
        images: manifest of clean images; the first ``n_images`` readable ones are used, half to fit.
        out_dir: ``trigger.png``, ``mask.png``, ``trigger.json``, ``run.json`` (``skip_counts``: rows skipped
            by reason), ``skipped.csv`` (each skipped row, when there is one).
        classes: ``classes.json`` for the zero-shot head [default: the manifest's frequent captions].
        data: the training manifest, where the target may be a caption (and the controls are drawn).
        controls: random captions searched the same way, held to the target trigger's mask size.

    Returns:
        The ``trigger.json`` record: target, mask_l1, success, held_out_asr, controls.

    Raises:
        ConfigError: a target found nowhere, an empty image set or too few readable images, a model without a
            text tower, a bad config.
    """
    man = read_manifest(images)
    pool_man = read_manifest(data) if data is not None else man
    check_target(target, classes=classes, manifests=[man] + [pool_man] * (data is not None))
    bundle = model if isinstance(model, ClipBundle) else load_model(model, device=device)
    require_text_tower(bundle)
    rec = RunRecord("reverse", {"model": str(model if not isinstance(model, ClipBundle) else model.name),
                                "target": target, "images": str(images), "classes": str(classes or ""),
                                "data": str(data or ""),
                                "controls": controls, "n_images": n_images, "search": asdict(config)})
    rec["data_fingerprint"] = fingerprint_files([images])
    skipped = SkipLog()
    pix = pixel_images(man, bundle.image_size, n_images, skipped)
    fit, held = pix[: len(pix) // 2], pix[len(pix) // 2:]
    head = zero_shot_head(bundle, man, classes)
    clf, t_idx, added = _with_caption(bundle, head, target)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record_skips(rec, len(pix), skipped, out)
    with rec.stage("search"):
        trig, res = search_trigger(bundle, fit, held, clf, t_idx, config, progress)
    save_trigger(out, trig)
    ctrl = []
    budget = replace(config, max_mask=max(res["mask_l1"], 1e-4))
    with rec.stage("controls"):
        for cap in control_captions(pool_man, target, controls, config.seed):
            c_clf, c_idx, _ = _with_caption(bundle, head, cap)
            ctrl.append({"caption": cap, **search_trigger(bundle, fit, held, c_clf, c_idx, budget, progress)[1]})
    record = {"target": target, "target_is_added_class": added, "n_classes": len(clf), **res,
              "controls": ctrl, "control_max_mask": budget.max_mask,
              "control_held_out_asr_max": max((c["held_out_asr"] for c in ctrl), default=None)}
    write_json(out / "trigger.json", {**record, "history": trig.history[:: max(1, len(trig.history) // 50)]})
    rec.data.update(record)
    rec.save(out)
    return record
