"""A gallery image: clean samples and their triggered versions for every registered attack."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from clipguard.attacks.base import ATTACKS, Trigger, get_trigger
from clipguard.data.synth import render_sample
from clipguard.errors import ClipguardError

__all__ = ["GALLERY_PARAMS", "gallery_triggers", "write_gallery"]

#: Parameters used for the gallery where an attack's defaults do not fit 32-px images or need files.
GALLERY_PARAMS = {"badnets": {"size": 8, "cell": 2}}


def gallery_triggers() -> dict[str, Trigger]:
    """One trigger per registered attack that can be built without extra files."""
    out = {}
    for name in ATTACKS.names():
        try:
            t = get_trigger(name, **GALLERY_PARAMS.get(name, {}))
            t.apply(np.zeros((32, 32, 3), np.uint8), seed=0)
        except (ClipguardError, OSError):
            continue  # e.g. badclip before its patch exists
        out[name] = t
    return out


def write_gallery(path: str | os.PathLike, *, n_images: int = 4, scale: int = 4, seed: int = 0,
                  triggers: dict[str, Trigger] | None = None) -> Path:
    """Write a PNG grid: row 0 clean shapes-world images, then one row per attack."""
    triggers = triggers if triggers is not None else gallery_triggers()
    clean = [np.asarray(render_sample(seed, "gallery", i)[0]) for i in range(n_images)]
    rows = [("clean", clean)] + [(name, [t.apply(im, seed=i) for i, im in enumerate(clean)]) for name, t in triggers.items()]
    cell, label_w, pad = 32 * scale, 110, 4
    W = label_w + n_images * (cell + pad)
    H = len(rows) * (cell + pad)
    sheet = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, (name, imgs) in enumerate(rows):
        y = r * (cell + pad)
        draw.text((6, y + cell // 2 - 6), name, fill=(0, 0, 0))
        for c, im in enumerate(imgs):
            sheet.paste(Image.fromarray(im).resize((cell, cell), Image.NEAREST), (label_w + c * (cell + pad), y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
