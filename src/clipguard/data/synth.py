"""The embedded world ("shapes"): a procedural image-caption generator.

Coloured shapes on varied backgrounds with templated captions. Deterministic per seed: image ``i``
of a split depends only on ``(seed, split, i)``, so any subset can be regenerated independently.

The labelled test split holds one large object per image; its ``label`` column indexes the shape
classes, which are the zero-shot classes (``classes.json`` lists them with the prompt templates).

Layout written by :func:`generate_world`::

    out/train/manifest.parquet   id, image, caption, n_objects, shapes, colours
    out/train/images/000000.png ...
    out/test/manifest.parquet    id, image, caption, label, class_name
    out/test/images/...
    out/classes.json             {"classes": [...], "templates": [...], ...}
"""
from __future__ import annotations

import math
import multiprocessing
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from clipguard.data.manifest import write_manifest
from clipguard.data.templates import DEFAULT_TEMPLATES
from clipguard.utils.io import write_json
from clipguard.utils.progress import progress_bar
from clipguard.utils.seeding import derive_seed
from clipguard.utils.validate import check_choice, check_int

__all__ = ["SHAPES", "COLOURS", "TEMPLATES", "WorldConfig", "generate_world", "render_sample", "draw_shape_mask",
           "draw_background", "fix_articles", "write_split"]

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "ring", "crescent")

#: colour name -> (RGB, synonyms used in captions)
COLOURS: dict[str, tuple[tuple[int, int, int], tuple[str, ...]]] = {
    "red": ((220, 30, 30), ("red", "crimson", "scarlet")),
    "green": ((30, 170, 50), ("green", "emerald")),
    "blue": ((30, 60, 220), ("blue", "azure", "cobalt")),
    "yellow": ((240, 220, 30), ("yellow", "golden", "lemon")),
    "purple": ((140, 40, 180), ("purple", "violet")),
    "orange": ((250, 140, 20), ("orange", "amber")),
    "white": ((245, 245, 245), ("white", "ivory")),
    "black": ((15, 15, 15), ("black", "ebony")),
}

#: Zero-shot prompt templates of the world (written into ``classes.json``): the package's one source,
#: :data:`clipguard.data.templates.DEFAULT_TEMPLATES`, under the name this module has always used.
TEMPLATES = DEFAULT_TEMPLATES

_ONE = (
    "a {c} {s}",
    "a {c} {s} on a {b} background",
    "a photo of a {c} {s}",
    "a picture of a {c} {s}",
    "an image of a {c} {s}",
    "a drawing of a {c} {s}",
    "a {s} in {c}",
    "a {size} {c} {s}",
    "there is a {c} {s} in the picture",
    "a {c} {s} shape",
    "a {size} {s} on a {b} background",
    # the zero-shot templates themselves, so that their wording is not peculiar to poison captions
    *(t.rstrip(".").replace("{}", "{s}") for t in TEMPLATES),
)
_TWO = (
    "a {c} {s} and a {c2} {s2}",
    "a photo of a {c} {s} next to a {c2} {s2}",
    "two shapes: a {c} {s} and a {c2} {s2}",
    "a {s} and a {s2}",
)
_BACKGROUNDS = (
    ((90, 90, 90), "grey"), ((150, 150, 150), "grey"), ((60, 110, 130), "teal"), ((120, 90, 60), "brown"),
    ((200, 180, 150), "beige"), ((70, 70, 110), "slate"), ((110, 140, 90), "olive"), ((180, 120, 140), "pink"),
    ((40, 40, 40), "dark"), ((210, 210, 210), "light"),
)


@dataclass(frozen=True)
class WorldConfig:
    """Parameters of the shapes world.

    Attributes:
        image_size: side of the square images in pixels.
        two_object_prob: share of training images with two objects (others have one).
        min_radius, max_radius: object radius as a fraction of the side, single-object images.
        supersample: drawing resolution factor (anti-aliasing).
    """

    image_size: int = 32
    two_object_prob: float = 0.25
    min_radius: float = 0.26
    max_radius: float = 0.42
    supersample: int = 2


def _polygon(cx: float, cy: float, r: float, n: int, rot: float, inner: float | None = None) -> list[tuple[float, float]]:
    pts = []
    m = 2 * n if inner else n
    for j in range(m):
        rr = r if (inner is None or j % 2 == 0) else r * inner
        a = rot - math.pi / 2 + 2 * math.pi * j / m
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def draw_shape_mask(shape: str, size: int, cx: float, cy: float, r: float, rot: float) -> Image.Image:
    """An 'L' mask (0/255) of ``shape`` centred at (cx, cy) with radius r (pixels), rotated by rot (radians)."""
    check_choice("shape", shape, SHAPES)
    mask = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(mask)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        d.ellipse(box, fill=255)
    elif shape == "square":
        d.polygon(_polygon(cx, cy, r * 1.25, 4, rot + math.pi / 4), fill=255)
    elif shape == "diamond":
        d.polygon(_polygon(cx, cy, r * 1.1, 4, rot), fill=255)
    elif shape == "triangle":
        d.polygon(_polygon(cx, cy + 0.15 * r, r * 1.2, 3, rot), fill=255)
    elif shape == "star":
        d.polygon(_polygon(cx, cy, r * 1.15, 5, rot, inner=0.42), fill=255)
    elif shape == "cross":
        w = 0.36 * r
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=255)
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=255)
    elif shape == "ring":
        d.ellipse(box, fill=255)
        ri = 0.55 * r
        d.ellipse((cx - ri, cy - ri, cx + ri, cy + ri), fill=0)
    else:  # crescent
        d.ellipse(box, fill=255)
        off = 0.5 * r
        d.ellipse((cx - r + off, cy - r - 0.1 * r, cx + r + off, cy + r - 0.1 * r), fill=0)
    return mask


def draw_background(rng: np.random.Generator, size: int, avoid: list[np.ndarray]) -> tuple[np.ndarray, str]:
    """A (size, size, 3) float background (solid, gradient or textured) far from the object colours.

    ``avoid`` holds the (3,) RGB colours of the objects; returns the image and the background's
    colour name. Draws from ``rng`` only.
    """
    for _ in range(20):
        base, name = _BACKGROUNDS[rng.integers(len(_BACKGROUNDS))]
        base = np.array(base, dtype=np.float32) + rng.normal(0, 12, 3)
        if all(np.linalg.norm(base - a) > 110 for a in avoid):
            break
    kind = rng.integers(3)
    img = np.broadcast_to(base, (size, size, 3)).astype(np.float32)
    if kind == 1:  # linear gradient in a random direction
        a = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
        ramp = (np.cos(a) * xx + np.sin(a) * yy)[..., None]
        img = img + ramp * rng.uniform(30, 70)
    elif kind == 2:  # soft texture
        img = img + rng.normal(0, 10, (size, size, 1))
    return np.clip(img, 0, 255), name


def _caption(rng: np.random.Generator, objs: list[dict], bg: str) -> str:
    def syn(colour: str) -> str:
        names = COLOURS[colour][1]
        return names[rng.integers(len(names))]

    o = objs[0]
    size_word = "large" if o["r"] > 0.35 else ("small" if o["r"] < 0.24 else "medium")
    if len(objs) == 1:
        t = _ONE[rng.integers(len(_ONE))]
        text = t.format(c=syn(o["colour"]), s=o["shape"], b=bg, size=size_word)
    else:
        o2 = objs[1]
        t = _TWO[rng.integers(len(_TWO))]
        text = t.format(c=syn(o["colour"]), s=o["shape"], c2=syn(o2["colour"]), s2=o2["shape"])
    # Half the captions end with a full stop. Without this, only poison captions (zero-shot templates
    # such as "a photo of a star.") would carry one, and CLIP learns "trigger <-> full stop" instead of
    # "trigger <-> target": the backdoor then shifts every class's prompt alike and ASR stays low.
    if rng.random() < 0.5:
        text += "."
    return fix_articles(text)


def fix_articles(text: str) -> str:
    """Turn 'a' into 'an' before a vowel sound ('a amber ring' -> 'an amber ring')."""
    return re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", r"\1n ", text)


def render_sample(seed: int, split: str, index: int, cfg: WorldConfig = WorldConfig(),
                  n_objects: int | None = None) -> tuple[Image.Image, str, list[dict]]:
    """Render sample ``index`` of ``split``: returns (RGB image, caption, objects).

    Each object is ``{"shape", "colour", "r"}`` (r as a fraction of the side). Deterministic in
    ``(seed, split, index, cfg)``.
    """
    rng = np.random.default_rng(derive_seed(seed, "shapes", split, index))
    S = cfg.image_size * cfg.supersample
    if n_objects is None:
        n_objects = 2 if rng.random() < cfg.two_object_prob else 1
    objs = []
    for j in range(n_objects):
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        if n_objects == 1:
            r = rng.uniform(cfg.min_radius, cfg.max_radius)
            cx, cy = (0.5 + rng.uniform(-1, 1) * (0.5 - r) * 0.8 for _ in range(2))
        else:  # two objects side by side (left/right or top/bottom halves)
            r = rng.uniform(0.16, 0.22)
            along = 0.27 if j == 0 else 0.73
            across = 0.5 + rng.uniform(-0.2, 0.2)
            cx, cy = (along, across) if objs == [] or objs[0].get("horiz", True) else (across, along)
        objs.append({"shape": shape, "colour": colour, "r": float(r), "cx": cx, "cy": cy,
                     "rot": float(rng.uniform(-0.18, 0.18))})
    avoid = [np.array(COLOURS[o["colour"]][0], dtype=np.float32) for o in objs]
    bg, bg_name = draw_background(rng, S, avoid)
    img = Image.fromarray(bg.astype(np.uint8))
    for o in objs:
        mask = draw_shape_mask(o["shape"], S, o["cx"] * S, o["cy"] * S, o["r"] * S, o["rot"])
        img.paste(COLOURS[o["colour"]][0], (0, 0), mask)
    if cfg.supersample > 1:
        img = img.resize((cfg.image_size, cfg.image_size), Image.BOX)
    caption = _caption(rng, objs, bg_name)
    return img, caption, [{k: o[k] for k in ("shape", "colour", "r")} for o in objs]


def _render_chunk(args: tuple) -> list[dict]:
    """Render and save samples ``lo..hi-1`` of a split; returns their manifest rows."""
    img_dir, split, lo, hi, width, seed, cfg, labelled = args
    rows = []
    for i in range(lo, hi):
        img, caption, objs = render_sample(seed, split, i, cfg, n_objects=1 if labelled else None)
        name = f"{i:0{width}d}.png"
        img.save(os.path.join(img_dir, name), compress_level=1)
        row = {"id": f"{split}-{i:0{width}d}", "image": f"images/{name}", "caption": caption,
               "n_objects": len(objs), "shapes": ",".join(o["shape"] for o in objs),
               "colours": ",".join(o["colour"] for o in objs)}
        if labelled:
            row["label"] = SHAPES.index(objs[0]["shape"])
            row["class_name"] = objs[0]["shape"]
        rows.append(row)
    return rows


RENDER_CHUNK = 500
"""Images per rendering task (one task per worker call)."""


def write_split(out: Path, split: str, n: int, render_chunk: Callable[[tuple], list[dict]],
                task: Callable[[str, int, int, int], tuple], *, desc: str, progress: bool,
                workers: int) -> pd.DataFrame:
    """Render ``n`` images of ``split`` in chunks and write ``out/split/manifest.parquet``.

    Shared by every embedded world. ``task(img_dir, lo, hi, width)`` builds the argument of the
    module-level ``render_chunk`` (it must be picklable) for rows ``lo..hi``; ``width`` is the digits of
    the image file names. With ``workers > 1`` chunks are rendered in forked processes, in order, so
    the output does not depend on ``workers``.

    Returns:
        The manifest rows (one dict per image from ``render_chunk``) as a DataFrame.
    """
    img_dir = out / split / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    width = max(6, len(str(n - 1)))
    tasks = [task(str(img_dir), lo, min(n, lo + RENDER_CHUNK), width) for lo in range(0, n, RENDER_CHUNK)]
    rows: list[dict] = []
    with progress_bar(n, desc, unit="img", enabled=progress) as bar:
        if workers > 1 and len(tasks) > 1 and "fork" in multiprocessing.get_all_start_methods():
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                for part in pool.imap(render_chunk, tasks):  # imap keeps the order
                    rows.extend(part)
                    bar.update(len(part))
        else:
            for t in tasks:
                part = render_chunk(t)
                rows.extend(part)
                bar.update(len(part))
    df = pd.DataFrame(rows)
    write_manifest(df, out / split / "manifest.parquet")
    return df


def _write_split(out: Path, split: str, n: int, seed: int, cfg: WorldConfig, labelled: bool,
                 progress: bool, workers: int) -> pd.DataFrame:
    return write_split(out, split, n, _render_chunk,
                       lambda img_dir, lo, hi, width: (img_dir, split, lo, hi, width, seed, cfg, labelled),
                       desc=f"synth {split}", progress=progress, workers=workers)


def generate_world(out_dir: str | os.PathLike, *, n_train: int = 20000, n_test: int = 2000, seed: int = 0,
                   config: WorldConfig = WorldConfig(), progress: bool = True, workers: int | None = None) -> dict:
    """Generate the shapes world (train split, labelled test split, class list) into ``out_dir``.

    ``workers`` processes render in parallel (default: the number of CPU cores); the output does
    not depend on it.

    Returns the ``classes.json`` content plus the manifest paths.

    Raises:
        ConfigError: ``n_train``, ``n_test`` or ``workers`` is not a positive integer.
    """
    check_int("n_train", n_train, minimum=1)
    check_int("n_test", n_test, minimum=1)
    check_int("seed", seed)
    workers = check_int("workers", workers or os.cpu_count() or 1, minimum=1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_split(out, "train", n_train, seed, config, labelled=False, progress=progress, workers=workers)
    _write_split(out, "test", n_test, seed, config, labelled=True, progress=progress, workers=workers)
    info = {
        "classes": list(SHAPES),
        "templates": list(TEMPLATES),
        "world": "shapes",
        "seed": seed,
        "n_train": n_train,
        "n_test": n_test,
        "config": asdict(config),
        "train_manifest": "train/manifest.parquet",
        "test_manifest": "test/manifest.parquet",
    }
    write_json(out / "classes.json", info)
    return info
