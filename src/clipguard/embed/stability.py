"""Perturbation stability: how far each image's embedding moves when the image is perturbed.

STRIP (Gao et al. 2019) observed that a trigger dominates a backdoored model's response: a triggered input
keeps its prediction under perturbations that change a clean input's. Adapted to a CLIP model and its
training pairs, without labels or captions: for every image, the cosine between the model's embedding of
the image and of a perturbed copy (:func:`perturbation_stability`).

Measured on the 16 learned cells of the evaluation panel (``benchmarks/perturbation_probe.py``,
``benchmarks/results/perturbation_probe.md``), with the model trained ON the scanned pairs (the model owner's
case, or a data team that trains first):

- poisoned images are MORE stable under pixel noise (the trigger survives it and still drives the
  embedding): AUROC of the noise stability 0.714 at worst, 0.888 on average. With a clean model (the
  control) the patch attacks fall to chance (0.48-0.73), so that signal is the learned backdoor's; SIG's
  sinusoid stays high with the clean model too (0.78-0.92), part of it is the pattern's own pixels;
- poisoned images are LESS stable under blur for patch and blended triggers (inverted for SIG), and as
  much with the clean model (mean 0.83): a pixel artefact of the sharp trigger on the worlds' smooth drawn
  images, which natural photos may not share;
- under STRIP's own perturbation (``"blend"``, superimposing another image of the set) the signal depends on
  the trigger: a learned colour filter (Nashville, 5 %) is MORE stable (AUROC 0.94, where the noise stability
  gives 0.68), but a small patch is LESS stable (BadNets 5 %, rare target: 0.34) and SIG is near chance
  (0.48-0.75); with the clean model it is near chance (0.43-0.69), so it is the learned backdoor's. Neither it
  nor a combination with the noise stability (mean rank: worst 0.59 over the 16 learned cells, against 0.69
  for noise alone) is the better default (``benchmarks/results/probe_kinds_panel.md``, ``_variants.md``).

In the DAO paper's setting at 100,000 pairs (0.1 %, rare target, on a GPU) the noise stability gave 0.948
(SIG) and 0.879 (BadNets) (``benchmarks/results/perturbation_probe_gpu.md``).

It needs the images and the model, not only embeddings: :func:`write_stability` saves it as a record
(:data:`STABILITY_FILE`; :func:`~clipguard.embed.probe.probe_dataset`, ``clipguard probe``, does both for a
whole dataset) that ``clipguard scan EMB_DIR --record DIR`` joins by id for the detector ``perturbation`` (the
noise stability; :mod:`clipguard.detect.detectors.records`).

Perturbations (:data:`PERTURBATIONS`), applied to the decoded image before the model's preprocessing:

``"noise"``
    Additive Gaussian noise of standard deviation :data:`NOISE_SD` (on the 0-255 scale) on every pixel and
    channel, clipped to [0, 255]; drawn from ``numpy.random.default_rng([seed, row])``, so the same image,
    row and seed give the same noise.
``"blur"``
    A Gaussian blur of radius :data:`BLUR_FRACTION` times the shorter side (1.5 px on a 64-px image).
``"blend"``
    STRIP's own perturbation: the image superimposed on another image of the set, ``(1 - BLEND_WEIGHT) *
    image + BLEND_WEIGHT * other`` (:data:`BLEND_WEIGHT` = 0.5, resized to the image's size). The other image
    is drawn with ``numpy.random.default_rng([seed, row, 1])`` among the set's usable images (another row;
    a mid-grey image when none can be decoded after 8 draws). A trigger survives half its contrast and
    still drives a backdoored embedding; a clean image's content is half replaced.

Output: a frame with ``id``, ``row`` (manifest row) and ``<kind>_stability`` (cosine in [-1, 1]; higher =
the embedding moved less) for every usable row; the rows that could not be used (missing or corrupt image,
empty caption: those :func:`~clipguard.embed.embed_dataset` skips too) are in the returned
:class:`~clipguard.data.dataset.SkipLog`, never dropped silently.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageFilter
from torch.utils.data import DataLoader, Dataset

from clipguard.data.dataset import ImageCaptionDataset, SkipLog, collate_skipping, record_errors
from clipguard.data.manifest import Manifest
from clipguard.embed.extract import split_preprocess
from clipguard.errors import ConfigError
from clipguard.models.factory import ClipBundle
from clipguard.utils.io import atomic_path, file_in
from clipguard.utils.progress import progress_bar
from clipguard.utils.validate import check_int

__all__ = ["PERTURBATIONS", "NOISE_SD", "BLUR_FRACTION", "BLEND_WEIGHT", "STABILITY_FILE", "perturb_image",
           "perturbation_stability", "PerturbedImages", "write_stability", "read_stability"]

PERTURBATIONS = ("noise", "blur", "blend")
"""The perturbations :func:`perturbation_stability` can apply (module docstring)."""

NOISE_SD = 25.0
"""Standard deviation of the ``"noise"`` perturbation on the 0-255 pixel scale (STRIP-like strength: the
content stays recognisable). Set before measuring, not tuned; on the six hardest panel cells sd 12.5 / 25 / 50
gave worst AUROC 0.740 / 0.714 / 0.681 (``benchmarks/results/perturbation_probe_sd12.5_sd50.md``)."""

BLUR_FRACTION = 1.5 / 64
"""Radius of the ``"blur"`` perturbation as a fraction of the image's shorter side."""

BLEND_WEIGHT = 0.5
"""Weight of the other image in the ``"blend"`` perturbation (STRIP's equal-weight superimposition; set
before measuring, not tuned)."""

_PARTNER_DRAWS = 8
"""Draws of the ``"blend"`` partner before falling back to a mid-grey image (all undecodable)."""

STABILITY_FILE = "stability.parquet"
"""The record's file name in a folder (:func:`write_stability`, :func:`read_stability`)."""


def perturb_image(image: Image.Image, kind: str, *, seed: int = 0, row: int = 0,
                  noise_sd: float = NOISE_SD, other: Image.Image | None = None) -> Image.Image:
    """The RGB ``image`` perturbed by ``kind`` (one of :data:`PERTURBATIONS`); ``seed`` and ``row`` seed the
    noise (``numpy.random.default_rng([seed, row])``), so a row's copy is the same in every run; ``noise_sd``:
    its standard deviation on the 0-255 scale; ``other``: the image ``"blend"`` superimposes (required there).

    Raises:
        ConfigError: an unknown ``kind``, or ``"blend"`` without ``other``.
    """
    if kind == "blend":
        if other is None:
            raise ConfigError("the blend perturbation needs the image to superimpose (other=): another image "
                              "of the set, as perturbation_stability draws it")
        return Image.blend(image.convert("RGB"), other.convert("RGB").resize(image.size), BLEND_WEIGHT)
    if kind == "noise":
        x = np.asarray(image.convert("RGB"), dtype=np.float32)
        noise = np.random.default_rng([int(seed), int(row)]).normal(0.0, float(noise_sd), x.shape)
        return Image.fromarray(np.clip(np.rint(x + noise), 0, 255).astype(np.uint8))
    if kind == "blur":
        return image.convert("RGB").filter(ImageFilter.GaussianBlur(BLUR_FRACTION * min(image.size)))
    raise ConfigError(f"unknown perturbation {kind!r}; choose from {', '.join(PERTURBATIONS)}")


class PerturbedImages(Dataset):
    """The usable images of a manifest, each with its perturbed copies, preprocessed for the model.

    Items are ``{"index": row, "image": (1 + K, 3, H, W) float tensor, "text": caption}`` -- the image then
    its copy under each of the K ``kinds`` -- or ``{"index": row, "error": reason}`` for an image that cannot
    be decoded (:func:`~clipguard.data.dataset.collate_skipping` moves those to the batch's errors). Safe in
    DataLoader workers: a copy depends only on the image, ``seed`` and the row. ``row_offset``: the row of the
    manifest's first row in the whole set when ``manifest`` is one part of it (the copies are seeded by the
    whole set's row; a ``"blend"`` partner is drawn within the part).
    """

    def __init__(self, manifest: Manifest, preprocess: Any, kinds: Sequence[str], *, seed: int,
                 noise_sd: float, skip_log: SkipLog, row_offset: int = 0) -> None:
        self.images = ImageCaptionDataset(manifest, None, None, skip_log=skip_log)
        self.preprocess, self.kinds, self.seed, self.noise_sd = preprocess, list(kinds), seed, noise_sd
        self.row_offset = int(row_offset)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, j: int) -> dict[str, Any]:
        item = self.images[j]
        if "error" in item:
            return item
        im, row = item["image"], int(item["index"])
        seed_row = row + self.row_offset  # the row in the whole manifest: a part's copies are the whole pass's
        other = self.partner(j, seed_row, im.size) if "blend" in self.kinds else None
        copies = [im] + [perturb_image(im, k, seed=self.seed, row=seed_row, noise_sd=self.noise_sd, other=other)
                         for k in self.kinds]
        return {"index": row, "image": torch.stack([self.preprocess(c) for c in copies]), "text": item["text"]}

    def partner(self, j: int, row: int, size: tuple[int, int]) -> Image.Image:
        """The image that ``"blend"`` superimposes on item ``j`` (manifest row ``row``): another usable item
        drawn by ``default_rng([seed, row, 1])``; a mid-grey ``size`` image when :data:`_PARTNER_DRAWS` draws
        find none (a set of one image, or every draw undecodable)."""
        n = len(self.images)
        gen = np.random.default_rng([int(self.seed), int(row), 1])
        for _ in range(_PARTNER_DRAWS if n > 1 else 0):
            k = int(gen.integers(n - 1))
            item = self.images[k + (k >= j)]  # any item but j
            if "error" not in item:
                return item["image"]
        return Image.new("RGB", size, (128, 128, 128))


def _check(kinds: list[str], batch_size: int, noise_sd: float, num_workers: int, row_offset: int) -> None:
    if not kinds:
        raise ConfigError(f"perturbation_stability needs at least one perturbation of {', '.join(PERTURBATIONS)}")
    for k in kinds:
        if k not in PERTURBATIONS:
            raise ConfigError(f"unknown perturbation {k!r}; choose from {', '.join(PERTURBATIONS)}")
    check_int("batch_size", batch_size, minimum=1)
    check_int("num_workers", num_workers, minimum=0)
    check_int("row_offset", row_offset, minimum=0)
    if not np.isfinite(noise_sd) or noise_sd < 0:
        raise ConfigError(f"noise_sd must be a number >= 0 (pixel sd on the 0-255 scale), got {noise_sd}")


@torch.no_grad()
def perturbation_stability(bundle: ClipBundle, manifest: Manifest, *, kinds: Sequence[str] = ("noise", "blur"),
                           seed: int = 0, noise_sd: float = NOISE_SD, batch_size: int = 128, num_workers: int = 0,
                           device: str | torch.device | None = None, progress: bool = True,
                           row_offset: int = 0) -> tuple[pd.DataFrame, SkipLog]:
    """The stability of every usable image of ``manifest`` under each perturbation of ``kinds``.

    Args:
        bundle: the CLIP model to probe: for a backdoor signal, the model trained on these pairs.
        manifest: the image-caption pairs.
        kinds: perturbations, each one of :data:`PERTURBATIONS`.
        seed: seed of the noise (with the manifest row).
        noise_sd: standard deviation of the ``"noise"`` perturbation on the 0-255 scale (default
            :data:`NOISE_SD`).
        batch_size: images per forward pass (the model sees ``1 + len(kinds)`` copies of each).
        num_workers: DataLoader worker processes that decode and perturb the images (0: in this process;
            a GPU needs several to be fed). The figures do not depend on it.
        device: where the model runs (None: where it already is).
        progress: show a progress bar.
        row_offset: the whole set's row of ``manifest``'s first row, when it is one part of a larger set
            (:func:`~clipguard.embed.probe_dataset`): rows (``row``) and the copies' seeds are the whole set's.

    Returns:
        ``(frame, skips)``: ``frame`` has ``id`` (str), ``row`` (int) and ``<kind>_stability`` (float64,
        the cosine between the embeddings of the image and of its perturbed copy; higher = moved less), one
        row per usable pair in manifest order; ``skips`` lists the rows left out and why.

    Raises:
        ConfigError: an unknown perturbation, no perturbation, a bad ``batch_size`` / ``num_workers`` or a
        negative ``noise_sd``.
    """
    kinds = list(dict.fromkeys(kinds))
    _check(kinds, batch_size, noise_sd, num_workers, row_offset)
    if device is not None:
        bundle.to(device)
    dev = bundle.device
    bundle.model.eval()
    skips = SkipLog()
    # on a GPU the workers send uint8 images, which the GPU normalises (the same values, a quarter of the bytes)
    cpu_part, dev_part = split_preprocess(bundle.preprocess) if dev.type == "cuda" else (bundle.preprocess, None)
    ds = PerturbedImages(manifest, cpu_part, kinds, seed=seed, noise_sd=noise_sd, skip_log=skips,
                         row_offset=row_offset)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_skipping, pin_memory=dev.type == "cuda")
    rows: list[np.ndarray] = []
    stab: list[np.ndarray] = []
    with progress_bar(total=len(ds), desc="perturbation stability", unit="img", enabled=progress) as bar:
        for batch in loader:
            record_errors(batch, ds.images)
            bar.update(len(batch["index"]) + len(batch["errors"]))
            if "image" not in batch:
                continue
            x = batch["image"].to(dev, non_blocking=True)  # (B, 1 + K, 3, H, W)
            b, c = x.shape[:2]
            x = x.flatten(0, 1) if dev_part is None else dev_part(x.flatten(0, 1))
            emb = torch.nn.functional.normalize(bundle.model.encode_image(x).float(), dim=-1)
            emb = emb.view(b, c, -1)
            stab.append((emb[:, :1] * emb[:, 1:]).sum(dim=-1).cpu().numpy().astype(np.float64))  # (B, K)
            rows.append(batch["index"].numpy())
    order = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    values = np.concatenate(stab) if stab else np.zeros((0, len(kinds)))
    frame = pd.DataFrame({"id": manifest.df["id"].astype(str).to_numpy()[order],
                          "row": order.astype(np.int64) + int(row_offset)})
    for i, k in enumerate(kinds):
        frame[f"{k}_stability"] = values[:, i]
    return frame, skips


def write_stability(frame: pd.DataFrame, out: str | os.PathLike) -> Path:
    """Write a stability record (:func:`perturbation_stability`'s frame) to ``out`` -- a folder, which gets
    :data:`STABILITY_FILE`, or a ``.parquet`` path -- atomically (written aside, then renamed). Returns the path."""
    path = file_in(out, STABILITY_FILE)
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return path


def read_stability(record: str | os.PathLike) -> pd.DataFrame:
    """A stability record: a folder holding :data:`STABILITY_FILE` or the parquet file itself.

    Returns:
        A DataFrame with ``id`` (str), ``row`` and at least one ``<kind>_stability`` column.

    Raises:
        ConfigError: the record is absent, or lacks ``id`` or every stability column.
    """
    path = file_in(record, STABILITY_FILE)
    if not path.is_file():
        raise ConfigError(f"{path}: no perturbation-stability record; write one with `clipguard probe MODEL_DIR "
                          "MANIFEST --out DIR` (clipguard.embed.perturbation_stability)")
    df = pd.read_parquet(path)
    if "id" not in df.columns or not any(f"{k}_stability" in df.columns for k in PERTURBATIONS):
        raise ConfigError(f"{path}: not a perturbation-stability record (it needs the columns id and "
                          f"{' or '.join(f'{k}_stability' for k in PERTURBATIONS)}); columns: {', '.join(df.columns)}")
    return df.assign(id=df["id"].astype(str))
