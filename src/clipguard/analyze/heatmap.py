"""Heat maps (PNG) of per-layer x per-head infection rates, drawn with Pillow (no plotting library).

:func:`save_heatmap` draws panels side by side (e.g. clean vs triggered inputs), one cell per
(layer, head) with its rate written in it; the colour runs from white (0) to dark red (1) on the same
scale in every panel.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from clipguard.errors import ConfigError
from clipguard.utils.io import atomic_path

__all__ = ["rate_colour", "save_heatmap"]

CELL = 40
MARGIN = 46
TITLE = 34
GAP = 24


def rate_colour(rate: float) -> tuple[int, int, int]:
    """RGB of a rate in [0, 1]: white -> orange -> dark red."""
    r = float(np.clip(rate, 0.0, 1.0))
    stops = [(0.0, (255, 255, 255)), (0.5, (244, 140, 60)), (1.0, (128, 0, 16))]
    for (a, ca), (b, cb) in zip(stops, stops[1:]):
        if r <= b:
            t = (r - a) / (b - a)
            return tuple(int(round(x + t * (y - x))) for x, y in zip(ca, cb))  # type: ignore[return-value]
    return stops[-1][1]


def _panel(draw: ImageDraw.ImageDraw, x0: int, title: str, rates: np.ndarray, col_label: str,
           font: ImageFont.ImageFont) -> None:
    L, H = rates.shape
    draw.text((x0, 6), title, fill=(0, 0, 0), font=font)
    sub = "rows: layer 0 at the top" if H == 1 else f"{col_label} ->  (rows: layer 0 at the top)"
    draw.text((x0, 20), sub, fill=(90, 90, 90), font=font)
    for layer in range(L):
        y = TITLE + layer * CELL
        draw.text((x0 - 30, y + CELL // 2 - 5), f"L{layer}", fill=(0, 0, 0), font=font)
        for h in range(H):
            x = x0 + h * CELL
            r = float(rates[layer, h])
            draw.rectangle([x, y, x + CELL - 1, y + CELL - 1], fill=rate_colour(r), outline=(200, 200, 200))
            ink = (255, 255, 255) if r > 0.55 else (0, 0, 0)
            draw.text((x + 4, y + CELL // 2 - 5), f"{r:.2f}", fill=ink, font=font)
    for h in range(H):
        draw.text((x0 + h * CELL + 4, TITLE + L * CELL + 4), str(h), fill=(0, 0, 0), font=font)


def save_heatmap(path: str | os.PathLike, panels: Sequence[tuple[str, np.ndarray]], *,
                 col_label: str = "head") -> Path:
    """Write a PNG with one heat map per ``(title, rates (L, H) in [0, 1])`` panel, side by side."""
    if not panels:
        raise ConfigError("a heat map needs at least one panel")
    mats = [np.atleast_2d(np.asarray(m, dtype=float)) for _, m in panels]
    if len({m.shape for m in mats}) != 1:
        raise ConfigError(f"heat map panels differ in shape: {[m.shape for m in mats]}")
    L, H = mats[0].shape
    font = ImageFont.load_default()
    panel_w = max(H * CELL, 260)
    width = MARGIN + len(panels) * (panel_w + GAP)
    height = TITLE + L * CELL + 24
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for j, ((title, _), m) in enumerate(zip(panels, mats)):
        _panel(draw, MARGIN + j * (panel_w + GAP), title, m, col_label, font)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        img.save(tmp, format="PNG")
    return out
