"""BadCLIP-style optimised patch (Liang et al. 2024): a trigger learned against a clean CLIP.

The patch (``size`` x ``size`` pixels in [0, 1]) is optimised with Adam so that images carrying it
land (a) near the target class's text embedding (text-guided term, 1 - cos(f(x'), t)) and (b) near
natural images of the target class and away from their own clean embedding (image-guided
triplet term, max(0, margin + d(f(x'), f(target image)) - d(f(x'), f(x)))), with cosine distance d.

:func:`optimize_badclip_patch` writes ``trigger.png`` (the patch, lossless) and ``trigger.json``
(the trigger spec + optimisation record); the registered ``badclip`` trigger pastes that PNG like
a fixed BadNets patch, so the poisoner uses it like any other trigger. The trigger reads the PNG
once, when it is built: a later change to the file does not alter a trigger already built, and a
trigger built after the change uses the new patch.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clipguard.attacks.badnets import check_location, patch_position
from clipguard.attacks.base import ATTACKS, ImageTooSmall, Trigger
from clipguard.attacks.poisoner import names_target
from clipguard.data.dataset import ImageCaptionDataset
from clipguard.data.manifest import Manifest
from clipguard.data.templates import check_templates
from clipguard.errors import ConfigError
from clipguard.models.factory import ClipBundle
from clipguard.utils.io import write_json
from clipguard.utils.progress import progress_bar
from clipguard.utils.seeding import rng
from clipguard.utils.validate import check_int, check_real

__all__ = ["BadCLIPConfig", "BadCLIPPatch", "optimize_badclip_patch"]


def _read_patch(path: str) -> np.ndarray:
    """The (p, p, 3) uint8 patch stored at ``path``."""
    try:
        with Image.open(path) as im:
            patch = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except OSError as exc:
        raise ConfigError(f"badclip: cannot read patch image {path!r} ({exc}); run `clipguard badclip` first") from None
    if patch.shape[0] != patch.shape[1]:
        raise ConfigError(f"badclip: patch image {path!r} is {patch.shape[1]}x{patch.shape[0]} px; a patch is square")
    return patch


@ATTACKS.register("badclip")
class BadCLIPPatch(Trigger):
    """A patch image (optimised by :func:`optimize_badclip_patch`) pasted onto the image.

    Args:
        patch: path of the patch PNG (``trigger.png`` of ``clipguard badclip``), read when the
            trigger is built.
        location: ``"random"`` per image, or a fixed corner / ``"center"``.
        test_location: location at test time (``None``: same as ``location``).
    """

    def __init__(self, patch: str = "trigger.png", location: str = "bottom_right",
                 test_location: str | None = None) -> None:
        self.location = check_location("badclip", "location", location)
        self.test_location = check_location("badclip", "test_location", test_location, optional=True)
        self.patch = str(patch)
        self._patch = _read_patch(self.patch)

    def _apply(self, image: np.ndarray, *, seed: int, test: bool) -> np.ndarray:
        p = self._patch.shape[0]
        h, w = image.shape[:2]
        if p > min(h, w):
            raise ImageTooSmall(f"badclip: patch of {p} px does not fit a {h}x{w} image")
        loc = (self.test_location or self.location) if test else self.location
        r, c = patch_position(h, w, p, loc, seed=seed, salt="badclip-pos")
        image[r:r + p, c:c + p] = self._patch
        return image


@dataclass
class BadCLIPConfig:
    """Optimisation settings of :func:`optimize_badclip_patch`."""

    size: int = 8
    location: str = "bottom_right"
    steps: int = 300
    batch_size: int = 64
    lr: float = 0.05
    image_weight: float = 1.0
    margin: float = 0.2
    seed: int = 0


def _check_config(config: BadCLIPConfig, image_size: int) -> None:
    """ConfigError on a setting out of range (the message names it)."""
    check_int("badclip size", config.size, minimum=1, maximum=image_size,
              hint=f" (the model's images are {image_size} px)")
    if check_location("badclip", "location", config.location) == "random":
        raise ConfigError("badclip: optimise at a fixed location (the paper's patch sits in a corner)")
    check_int("badclip steps", config.steps, minimum=1)
    check_int("badclip batch_size", config.batch_size, minimum=1)
    check_real("badclip lr", config.lr, low=0, low_open=True)
    check_real("badclip image_weight", config.image_weight, low=0)
    check_real("badclip margin", config.margin)
    check_int("badclip seed", config.seed)


def _paste(x: torch.Tensor, patch: torch.Tensor, r: int, c: int) -> torch.Tensor:
    """Paste patch (3, p, p) into a batch x (B, 3, H, W) of [0, 1] pixels at (r, c), differentiably."""
    p = patch.shape[-1]
    mask = torch.zeros_like(x[:1, :1])
    mask[..., r:r + p, c:c + p] = 1
    canvas = F.pad(patch[None], (c, x.shape[-1] - c - p, r, x.shape[-2] - r - p))
    return x * (1 - mask) + canvas * mask


@dataclass
class _Images:
    """The manifest's readable rows as (n, 3, size, size) pixel tensors in [0, 1] on ``device``."""

    dataset: ImageCaptionDataset
    size: int
    device: torch.device
    position: dict[int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.position = {r: j for j, r in enumerate(self.dataset.rows)}

    def usable(self, rows: np.ndarray) -> np.ndarray:
        """The rows whose image file exists (the others are in the dataset's skip log)."""
        return np.array([i for i in rows if i in self.position])

    def load(self, rows: np.ndarray) -> torch.Tensor:
        """(n, 3, H, W) pixels; undecodable images are left out (they are in the skip log)."""
        imgs = []
        for i in rows:
            item = self.dataset[self.position[int(i)]]
            if "error" in item:
                continue
            pixels = np.asarray(item["image"].resize((self.size, self.size)), dtype=np.float32) / 255.0
            imgs.append(torch.from_numpy(pixels).permute(2, 0, 1))
        if not imgs:
            raise ConfigError("badclip: none of the sampled images could be decoded; remove the corrupt files "
                              "(the warnings name them)")
        return torch.stack(imgs).to(self.device)


def _image_encoder(bundle: ClipBundle) -> Callable[[torch.Tensor], torch.Tensor]:
    """f(pixels in [0, 1], (B, 3, H, W)) -> (B, D) L2-normalised image embeddings (normalised as open_clip's)."""
    dev = bundle.device
    norm = bundle.preprocess.transforms[-1]
    mean = torch.tensor(norm.mean).view(1, 3, 1, 1).to(dev)
    std = torch.tensor(norm.std).view(1, 3, 1, 1).to(dev)
    return lambda x: F.normalize(bundle.model.encode_image((x - mean) / std), dim=-1)


def _target_rows(manifest: Manifest, target: str, images: _Images) -> tuple[np.ndarray, np.ndarray]:
    """(rows whose caption names ``target``, the other rows), both restricted to readable images."""
    mentions = names_target(manifest.df["caption"].tolist(), target)
    pos_rows, neg_rows = images.usable(np.flatnonzero(mentions)), images.usable(np.flatnonzero(~mentions))
    if len(pos_rows) < 1 or len(neg_rows) < 1:
        raise ConfigError(f"badclip: need readable images whose caption names {target!r} and images that do not "
                          f"(found {len(pos_rows)} and {len(neg_rows)}); check the target and the image paths")
    return pos_rows, neg_rows


def _optimise(bundle: ClipBundle, images: _Images, pos_rows: np.ndarray, neg_rows: np.ndarray,
              t_emb: torch.Tensor, config: BadCLIPConfig, progress: bool) -> tuple[torch.Tensor, list[dict]]:
    """Adam on the patch; returns the (3, p, p) patch in [0, 1] and the loss record every 25 steps."""
    g = rng(config.seed, "badclip")
    encode = _image_encoder(bundle)
    dev, size = bundle.device, images.size
    with torch.no_grad():
        pos_emb = encode(images.load(g.choice(pos_rows, size=min(256, len(pos_rows)), replace=False)))
    init = torch.rand(3, config.size, config.size, generator=torch.Generator().manual_seed(config.seed))
    patch = init.to(dev).requires_grad_(True)
    opt = torch.optim.Adam([patch], lr=config.lr)
    r, c = patch_position(size, size, config.size, config.location, seed=0, salt="badclip-pos")
    history = []
    with progress_bar(config.steps, "badclip", unit="step", enabled=progress) as bar:
        for step in range(config.steps):
            x = images.load(g.choice(neg_rows, size=min(config.batch_size, len(neg_rows)), replace=False))
            with torch.no_grad():
                clean = encode(x)
            f = encode(_paste(x, patch.clamp(0, 1), r, c))
            text_term = (1 - f @ t_emb.t()).mean()
            pos = pos_emb[torch.from_numpy(g.integers(len(pos_emb), size=len(f))).to(dev)]
            image_term = F.relu(config.margin + (1 - (f * pos).sum(-1)) - (1 - (f * clean).sum(-1))).mean()
            loss = text_term + config.image_weight * image_term
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                patch.clamp_(0, 1)
            if step % 25 == 0 or step == config.steps - 1:
                history.append({"step": step, "loss": loss.item(), "text_cos": 1 - text_term.item()})
            bar.update(1)
    return patch.detach(), history


def optimize_badclip_patch(bundle: ClipBundle, manifest: Manifest, out_dir: str | os.PathLike, *, target: str,
                           templates: Sequence[str], config: BadCLIPConfig = BadCLIPConfig(),
                           progress: bool = True) -> BadCLIPPatch:
    """Optimise a patch against ``bundle`` (a clean CLIP) on images of ``manifest``.

    Natural target images are the rows whose caption names ``target``; the other rows are the
    images the patch is pasted on. The run is deterministic in ``config.seed``. Returns the trigger
    (its PNG written to ``out_dir``).

    Raises:
        ConfigError: a setting out of range, a template without ``{}``, or no readable images that
            name (or do not name) the target.
    """
    _check_config(config, bundle.image_size)
    templates = check_templates(templates)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = bundle.model.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    images = _Images(ImageCaptionDataset(manifest), bundle.image_size, bundle.device)  # on the model's device
    pos_rows, neg_rows = _target_rows(manifest, target, images)
    t0 = time.perf_counter()
    with torch.no_grad():
        toks = bundle.tokenizer([t.format(target) for t in templates]).to(bundle.device)
        t_emb = F.normalize(F.normalize(model.encode_text(toks), dim=-1).mean(0, keepdim=True), dim=-1)
    patch, history = _optimise(bundle, images, pos_rows, neg_rows, t_emb, config, progress)
    png = out / "trigger.png"
    arr = (patch.cpu().permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(png)
    trigger = BadCLIPPatch(patch=str(png.resolve()), location=config.location)
    write_json(out / "trigger.json", {**trigger.spec(), "target": target, "model": bundle.name,
                                      "optimisation": asdict(config), "history": history,
                                      "seconds": round(time.perf_counter() - t0, 2)})
    return trigger
