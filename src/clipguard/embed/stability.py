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
  images, which natural photos may not share.

Not yet a detector of ``clipguard scan``: it needs the images and the model, not only embeddings.

Perturbations (:data:`PERTURBATIONS`), applied to the decoded image before the model's preprocessing:

``"noise"``
    Additive Gaussian noise of standard deviation :data:`NOISE_SD` (on the 0-255 scale) on every pixel and
    channel, clipped to [0, 255]; drawn from ``numpy.random.default_rng([seed, row])``, so the same image,
    row and seed give the same noise.
``"blur"``
    A Gaussian blur of radius :data:`BLUR_FRACTION` times the shorter side (1.5 px on a 64-px image).

Output: a frame with ``id``, ``row`` (manifest row) and ``<kind>_stability`` (cosine in [-1, 1]; higher =
the embedding moved less) for every usable row; the rows that could not be used (missing or corrupt image,
empty caption: those :func:`~clipguard.embed.embed_dataset` skips too) are in the returned
:class:`~clipguard.data.dataset.SkipLog`, never dropped silently.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageFilter

from clipguard.data.dataset import ImageCaptionDataset, SkipLog
from clipguard.data.manifest import Manifest
from clipguard.errors import ConfigError
from clipguard.models.factory import ClipBundle
from clipguard.utils.progress import progress_bar
from clipguard.utils.validate import check_int

__all__ = ["PERTURBATIONS", "NOISE_SD", "BLUR_FRACTION", "perturb_image", "perturbation_stability"]

PERTURBATIONS = ("noise", "blur")
"""The perturbations :func:`perturbation_stability` can apply (module docstring)."""

NOISE_SD = 25.0
"""Standard deviation of the ``"noise"`` perturbation on the 0-255 pixel scale (STRIP-like strength: the
content stays recognisable). Set before measuring, not tuned; on the six hardest panel cells sd 12.5 / 25 / 50
gave worst AUROC 0.740 / 0.714 / 0.681 (``benchmarks/results/perturbation_probe_sd12.5_sd50.md``)."""

BLUR_FRACTION = 1.5 / 64
"""Radius of the ``"blur"`` perturbation as a fraction of the image's shorter side."""


def perturb_image(image: Image.Image, kind: str, *, seed: int = 0, row: int = 0,
                  noise_sd: float = NOISE_SD) -> Image.Image:
    """The RGB ``image`` perturbed by ``kind`` (one of :data:`PERTURBATIONS`); ``seed`` and ``row`` seed the
    noise (``numpy.random.default_rng([seed, row])``), so a row's copy is the same in every run; ``noise_sd``:
    its standard deviation on the 0-255 scale."""
    if kind == "noise":
        x = np.asarray(image.convert("RGB"), dtype=np.float32)
        noise = np.random.default_rng([int(seed), int(row)]).normal(0.0, float(noise_sd), x.shape)
        return Image.fromarray(np.clip(np.rint(x + noise), 0, 255).astype(np.uint8))
    if kind == "blur":
        return image.convert("RGB").filter(ImageFilter.GaussianBlur(BLUR_FRACTION * min(image.size)))
    raise ConfigError(f"unknown perturbation {kind!r}; choose from {', '.join(PERTURBATIONS)}")


@torch.no_grad()
def _unit_image_embeddings(bundle: ClipBundle, images: list[Image.Image], dev: torch.device) -> torch.Tensor:
    """(B, D) L2-normalised image embeddings of PIL ``images``."""
    x = torch.stack([bundle.preprocess(im) for im in images]).to(dev)
    return torch.nn.functional.normalize(bundle.model.encode_image(x).float(), dim=-1)


def perturbation_stability(bundle: ClipBundle, manifest: Manifest, *, kinds: Sequence[str] = ("noise", "blur"),
                           seed: int = 0, noise_sd: float = NOISE_SD, batch_size: int = 128,
                           device: str | torch.device | None = None,
                           progress: bool = True) -> tuple[pd.DataFrame, SkipLog]:
    """The stability of every usable image of ``manifest`` under each perturbation of ``kinds``.

    Args:
        bundle: the CLIP model to probe: for a backdoor signal, the model trained on these pairs.
        manifest: the image-caption pairs.
        kinds: perturbations, each one of :data:`PERTURBATIONS`.
        seed: seed of the noise (with the manifest row).
        noise_sd: standard deviation of the ``"noise"`` perturbation on the 0-255 scale (default
            :data:`NOISE_SD`).
        batch_size: images per forward pass (the model sees ``1 + len(kinds)`` copies of each).
        device: where the model runs (None: where it already is).
        progress: show a progress bar.

    Returns:
        ``(frame, skips)``: ``frame`` has ``id`` (str), ``row`` (int) and ``<kind>_stability`` (float64,
        the cosine between the embeddings of the image and of its perturbed copy; higher = moved less), one
        row per usable pair in manifest order; ``skips`` lists the rows left out and why.

    Raises:
        ConfigError: an unknown perturbation, no perturbation, a bad ``batch_size`` or a negative ``noise_sd``.
    """
    kinds = list(dict.fromkeys(kinds))
    if not kinds:
        raise ConfigError(f"perturbation_stability needs at least one perturbation of {', '.join(PERTURBATIONS)}")
    for k in kinds:
        if k not in PERTURBATIONS:
            raise ConfigError(f"unknown perturbation {k!r}; choose from {', '.join(PERTURBATIONS)}")
    check_int("batch_size", batch_size, minimum=1)
    if not np.isfinite(noise_sd) or noise_sd < 0:
        raise ConfigError(f"noise_sd must be a number >= 0 (pixel sd on the 0-255 scale), got {noise_sd}")
    if device is not None:
        bundle.to(device)
    dev = bundle.device
    bundle.model.eval()
    skips = SkipLog()
    ds = ImageCaptionDataset(manifest, None, None, skip_log=skips)
    rows: list[int] = []
    stab: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
    with progress_bar(total=len(ds), desc="perturbation stability", unit="img", enabled=progress) as bar:
        for start in range(0, len(ds), batch_size):
            items = [ds[j] for j in range(start, min(start + batch_size, len(ds)))]
            for it in items:
                if "error" in it:
                    skips.add(int(it["index"]), str(manifest.df["id"].iat[int(it["index"])]), it["error"])
            good = [it for it in items if "error" not in it]
            if good:
                base = _unit_image_embeddings(bundle, [it["image"] for it in good], dev)
                for k in kinds:
                    copies = [perturb_image(it["image"], k, seed=seed, row=it["index"], noise_sd=noise_sd)
                              for it in good]
                    moved = _unit_image_embeddings(bundle, copies, dev)
                    stab[k].append((base * moved).sum(dim=-1).cpu().numpy().astype(np.float64))
                rows += [int(it["index"]) for it in good]
            bar.update(len(items))
    frame = pd.DataFrame({"id": manifest.df["id"].astype(str).to_numpy()[rows] if rows else np.array([], dtype=str),
                          "row": np.asarray(rows, dtype=np.int64)})
    for k in kinds:
        frame[f"{k}_stability"] = np.concatenate(stab[k]) if stab[k] else np.zeros(0)
    return frame, skips
