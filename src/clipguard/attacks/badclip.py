"""BadCLIP-style optimised patch (Liang et al. 2024): a trigger learned against a clean CLIP.

The patch (``size`` x ``size`` pixels in [0, 1]) is optimised with Adam so that images carrying it
land (a) near the target class's text embedding (text-guided term, 1 - cos(f(x'), t)) and (b) near
natural images of the target class and away from their own clean embedding (image-guided
triplet term, max(0, margin + d(f(x'), f(target image)) - d(f(x'), f(x)))), with cosine distance d.

:func:`optimize_badclip_patch` writes ``trigger.png`` (the patch, lossless) and ``trigger.json``
(the trigger spec + optimisation record); the registered ``badclip`` trigger pastes that PNG like
a fixed BadNets patch, so the poisoner uses it like any other trigger.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from clipguard.attacks.badnets import LOCATIONS, patch_position
from clipguard.attacks.base import ATTACKS, Trigger
from clipguard.attacks.poisoner import names_target
from clipguard.data.dataset import ImageCaptionDataset
from clipguard.data.manifest import Manifest
from clipguard.errors import ConfigError
from clipguard.models.factory import ClipBundle
from clipguard.utils.io import write_json
from clipguard.utils.seeding import rng


@lru_cache(maxsize=8)
def _load_patch(path: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except OSError as exc:
        raise ConfigError(f"badclip: cannot read patch image {path!r} ({exc}); run `clipguard badclip` first") from None


@ATTACKS.register("badclip")
class BadCLIPPatch(Trigger):
    """A patch image (optimised by :func:`optimize_badclip_patch`) pasted onto the image.

    Args:
        patch: path of the patch PNG (``trigger.png`` of ``clipguard badclip``).
        location: ``"random"`` per image, or a fixed corner / ``"center"``.
        test_location: location at test time (``None``: same as ``location``).
    """

    def __init__(self, patch: str = "trigger.png", location: str = "bottom_right",
                 test_location: str | None = None) -> None:
        for loc in (location, test_location):
            if loc is not None and loc not in LOCATIONS:
                raise ConfigError(f"badclip: location must be one of {', '.join(LOCATIONS)}, not {loc!r}")
        self.patch, self.location, self.test_location = str(patch), location, test_location

    def _apply(self, image: np.ndarray, *, seed: int, test: bool) -> np.ndarray:
        patch = _load_patch(self.patch)
        p = patch.shape[0]
        h, w = image.shape[:2]
        if p > min(h, w):
            raise ConfigError(f"badclip: patch of {p} px does not fit a {h}x{w} image")
        loc = (self.test_location or self.location) if test else self.location
        r, c = patch_position(h, w, p, loc, seed=seed, salt="badclip-pos")
        image[r:r + p, c:c + p] = patch
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


def _paste(x: torch.Tensor, patch: torch.Tensor, r: int, c: int) -> torch.Tensor:
    """Paste patch (3, p, p) into a batch x (B, 3, H, W) of [0, 1] pixels at (r, c), differentiably."""
    p = patch.shape[-1]
    mask = torch.zeros_like(x[:1, :1])
    mask[..., r:r + p, c:c + p] = 1
    canvas = F.pad(patch[None], (c, x.shape[-1] - c - p, r, x.shape[-2] - r - p))
    return x * (1 - mask) + canvas * mask


def optimize_badclip_patch(bundle: ClipBundle, manifest: Manifest, out_dir: str | os.PathLike, *, target: str,
                           templates: Sequence[str], config: BadCLIPConfig = BadCLIPConfig(),
                           progress: bool = True) -> BadCLIPPatch:
    """Optimise a patch against ``bundle`` (a clean CLIP) on images of ``manifest``.

    Natural target images are the rows whose caption names ``target``; the other rows are the
    images the patch is pasted on. Returns the trigger (its PNG written to ``out_dir``).
    """
    if config.location == "random":
        raise ConfigError("badclip: optimise at a fixed location (the paper's patch sits in a corner)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = bundle.model.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    mentions = names_target(manifest.df["caption"].tolist(), target)
    if mentions.sum() < 1 or (~mentions).sum() < 1:
        raise ConfigError(f"badclip: need images whose caption names {target!r} and images that do not")
    ds = ImageCaptionDataset(manifest)  # PIL images; converted below
    g = rng(config.seed, "badclip")
    dev = bundle.device  # optimised wherever the model lives (CPU or GPU)
    mean = torch.tensor(bundle.preprocess.transforms[-1].mean).view(1, 3, 1, 1).to(dev)
    std = torch.tensor(bundle.preprocess.transforms[-1].std).view(1, 3, 1, 1).to(dev)
    size = bundle.image_size

    pos_of = {r: j for j, r in enumerate(ds.rows)}

    def load(rows: np.ndarray) -> torch.Tensor:
        """(n, 3, H, W) pixels in [0, 1]; unreadable images are left out (they are in ds.skip_log)."""
        imgs = []
        for i in rows:
            item = ds[pos_of[int(i)]]
            if "error" in item:
                continue
            imgs.append(torch.from_numpy(np.asarray(item["image"].resize((size, size)), dtype=np.float32) / 255.0)
                        .permute(2, 0, 1))
        return torch.stack(imgs).to(dev)

    usable = set(pos_of)
    pos_rows = np.array([i for i in np.flatnonzero(mentions) if i in usable])
    neg_rows = np.array([i for i in np.flatnonzero(~mentions) if i in usable])
    with torch.no_grad():
        toks = bundle.tokenizer([t.format(target) for t in templates]).to(dev)
        t_emb = F.normalize(F.normalize(model.encode_text(toks), dim=-1).mean(0, keepdim=True), dim=-1)
        pos_imgs = load(g.choice(pos_rows, size=min(256, len(pos_rows)), replace=False))
        pos_emb = F.normalize(model.encode_image((pos_imgs - mean) / std), dim=-1)
    torch.manual_seed(config.seed)
    patch = torch.rand(3, config.size, config.size).to(dev).requires_grad_(True)
    opt = torch.optim.Adam([patch], lr=config.lr)
    r, c = patch_position(size, size, config.size, config.location, seed=0, salt="badclip-pos")
    history = []
    t0 = time.perf_counter()
    for step in tqdm(range(config.steps), desc="badclip", disable=None if progress else True, mininterval=1.0):
        x = load(g.choice(neg_rows, size=min(config.batch_size, len(neg_rows)), replace=False))
        with torch.no_grad():
            clean = F.normalize(model.encode_image((x - mean) / std), dim=-1)
        f = F.normalize(model.encode_image((_paste(x, patch.clamp(0, 1), r, c) - mean) / std), dim=-1)
        text_term = (1 - f @ t_emb.t()).mean()
        pos = pos_emb[torch.from_numpy(g.integers(len(pos_emb), size=len(f))).to(dev)]
        d_pos = 1 - (f * pos).sum(-1)
        d_neg = 1 - (f * clean).sum(-1)
        image_term = F.relu(config.margin + d_pos - d_neg).mean()
        loss = text_term + config.image_weight * image_term
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            patch.clamp_(0, 1)
        if step % 25 == 0 or step == config.steps - 1:
            history.append({"step": step, "loss": loss.item(), "text_cos": 1 - text_term.item()})
    png = out / "trigger.png"
    arr = (patch.detach().cpu().permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(png)
    trigger = BadCLIPPatch(patch=str(png.resolve()), location=config.location)
    write_json(out / "trigger.json", {**trigger.spec(), "target": target, "model": bundle.name,
                                      "optimisation": asdict(config), "history": history,
                                      "seconds": round(time.perf_counter() - t0, 2)})
    return trigger
