"""The long-tailed embedded world ("longtail"): hundreds of compositional concepts with Zipf frequencies.

A concept is ``modifier x colour x shape``, named ``"<modifier> <colour> <shape>"`` (e.g. ``"striped red
star"``): 6 modifiers (:data:`MODIFIERS`: two sizes, stripes, dots, an outline-only shape and a halo)
x the 8 colours x the 8 shapes of the shapes world (:mod:`clipguard.data.synth`) = 384 possible
concepts, of which ``n_concepts`` are used. Their frequency rank is a seeded permutation of all 384
(the first ``n_concepts`` of it), and the train split holds ``round(n_train * p_r)`` images of the
concept of rank ``r`` with ``p_r`` proportional to ``r ** -zipf`` (quotas by largest remainder, rows in a
seeded order), so a benchmark can pick a frequent target (rank 1) or a rare one (the last ranks).

Captions: every caption of a concept is drawn uniformly from :data:`CAPTION_TEMPLATES` (8 phrasings
x 4 endings x with/without a full stop = 64 templates, the zero-shot prompts of
:data:`~clipguard.data.templates.DEFAULT_TEMPLATES` among them) filled with the concept's name:
:func:`caption_pool`. A dirty-label poisoner that draws its captions uniformly from
:func:`poison_templates` (as :func:`clipguard.attacks.poison_dataset` does with its ``templates``)
therefore writes captions with exactly the distribution of the target concept's clean captions:
poison captions are neither rarer nor more frequent than clean ones, whatever the target's rank.
``classes.json`` lists those same templates, so ``clipguard poison --classes world/classes.json``
does the same, and ``clipguard eval`` averages the class embeddings over them.

Images are 32x32 (drawn at 64x64, box-downsampled) like the shapes world, one object each, on the
shapes world's backgrounds. Deterministic: image ``i`` of a split depends only on ``(seed, split, i)``
and the concept assigned to it; the same seed gives byte-identical manifests and PNGs whatever
``workers`` is.

Speed (measured once): the default world, 100,000 train + 5,000 test pairs (256 concepts), took 180 s
with ``workers=2`` on a 2-core machine shared with other jobs (load average 1.4-3.5), about 420 MB on
disk and 0.8 GB peak memory; rendering alone costs about 1.6 ms per image on one core.

Layout written by :func:`generate_longtail_world`::

    out/train/manifest.parquet   id, image, caption, concept, rank, modifier, colour, shape
    out/train/images/000000.png ...
    out/test/manifest.parquet    id, image, caption, label, class_name, concept, rank, modifier, colour, shape
    out/test/images/...
    out/classes.json             {"classes": [concept names by rank], "templates": CAPTION_TEMPLATES, ...}
    out/concepts.json            {"concepts": [{"name", "rank", "p", "n_train", "n_test", ...}], ...}

The test split is labelled (``label`` = the concept's index in ``classes``, i.e. ``rank - 1``) and
spreads its images evenly over the concepts, so every concept, rare or frequent, has test images.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

from clipguard.data.synth import COLOURS, SHAPES, draw_background, draw_shape_mask, write_split
from clipguard.data.templates import DEFAULT_TEMPLATES
from clipguard.errors import ConfigError
from clipguard.utils.io import write_json
from clipguard.utils.seeding import rng as seeded_rng
from clipguard.utils.validate import check_int, check_real

__all__ = ["MODIFIERS", "MAX_CONCEPTS", "CAPTION_TEMPLATES", "Concept", "world_concepts", "zipf_counts",
           "caption_pool", "poison_templates", "render_concept", "generate_longtail_world"]

#: The third attribute of a concept (all start with a consonant, so "a {}" always reads right).
MODIFIERS = ("small", "large", "striped", "dotted", "hollow", "glowing")

#: Number of possible concepts (modifier x colour x shape).
MAX_CONCEPTS = len(MODIFIERS) * len(COLOURS) * len(SHAPES)

_HEADS = ("a {}", "a photo of a {}", "a picture of a {}", "an image of a {}", "a drawing of a {}",
          "a sketch of a {}", "a close-up of a {}", "a rendering of a {}")
_TAILS = ("", " shape", " in the picture", " in the middle")

#: Every caption template of the world, one ``{}`` for the concept name; clean captions draw one uniformly.
CAPTION_TEMPLATES: tuple[str, ...] = tuple(h + t + stop for h in _HEADS for t in _TAILS for stop in ("", "."))

#: Object radius (fraction of the side) per modifier; the others are "medium".
_RADIUS = {"small": (0.15, 0.21), "large": (0.37, 0.45)}
_MEDIUM = (0.27, 0.35)


@dataclass(frozen=True)
class Concept:
    """One concept of the world: ``name`` is ``"<modifier> <colour> <shape>"``; ``rank`` 1 is the most frequent."""

    modifier: str
    colour: str
    shape: str
    rank: int = 0

    @property
    def name(self) -> str:
        return f"{self.modifier} {self.colour} {self.shape}"


def _all_concepts() -> list[tuple[str, str, str]]:
    return list(itertools.product(MODIFIERS, COLOURS, SHAPES))


def world_concepts(n_concepts: int = 256, seed: int = 0) -> list[Concept]:
    """The ``n_concepts`` concepts of the world of ``seed``, by rank (index ``i`` has rank ``i + 1``).

    Ranks follow a seeded permutation of all :data:`MAX_CONCEPTS` concepts, so the concepts of a
    smaller world are the most frequent ones of a larger world with the same seed.

    Raises:
        ConfigError: ``n_concepts`` is not an integer in [1, MAX_CONCEPTS].
    """
    n_concepts = check_int("n_concepts", n_concepts, minimum=1, maximum=MAX_CONCEPTS)
    combos = _all_concepts()
    order = seeded_rng(seed, "longtail", "ranks").permutation(len(combos))[:n_concepts]
    return [Concept(*combos[j], rank=r + 1) for r, j in enumerate(order)]


def zipf_counts(n: int, n_concepts: int, zipf: float) -> np.ndarray:
    """(n_concepts,) int counts summing to ``n``: ``n * p_r`` rounded by largest remainder, ``p_r ~ r ** -zipf``.

    Ties in the remainders go to the more frequent rank, so the counts never increase with the rank.
    """
    p = _zipf_probs(n_concepts, zipf)
    exact = n * p
    counts = np.floor(exact).astype(np.int64)
    extra = np.argsort(-(exact - counts), kind="stable")[: n - int(counts.sum())]
    counts[extra] += 1
    return counts


def _zipf_probs(n_concepts: int, zipf: float) -> np.ndarray:
    w = np.arange(1, n_concepts + 1, dtype=np.float64) ** -float(zipf)
    return w / w.sum()


def _parse_concept(concept: str | Concept) -> Concept:
    if isinstance(concept, Concept):
        return concept
    parts = str(concept).split()
    if len(parts) != 3 or parts[0] not in MODIFIERS or parts[1] not in COLOURS or parts[2] not in SHAPES:
        raise ConfigError(f"{concept!r} is not a concept of the long-tailed world; name one as "
                          f"'<modifier> <colour> <shape>', e.g. 'striped red star' (modifiers: {', '.join(MODIFIERS)})")
    return Concept(*parts)


def poison_templates(target: str | Concept) -> list[str]:
    """The caption templates (one ``{}`` each) whose uniform draw, filled with ``target``, gives exactly the
    distribution of the target concept's clean captions; pass them as ``templates=`` to
    :func:`clipguard.attacks.poison_dataset` with ``target=`` the concept's name.

    Raises:
        ConfigError: ``target`` is not a concept name of the world.
    """
    _parse_concept(target)
    return list(CAPTION_TEMPLATES)


def caption_pool(concept: str | Concept) -> list[str]:
    """Every caption a clean image of ``concept`` can have (each drawn with the same probability,
    1 / len(CAPTION_TEMPLATES)): the templates of :func:`poison_templates` filled with its name.

    Raises:
        ConfigError: ``concept`` is not a concept name of the world.
    """
    name = _parse_concept(concept).name
    return [t.format(name) for t in poison_templates(name)]


def _contrast(rgb: tuple[int, int, int]) -> np.ndarray:
    lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return np.array((20, 20, 20) if lum > 110 else (235, 235, 235), dtype=np.float32)


def _pattern(rng: np.random.Generator, modifier: str, size: int) -> np.ndarray | None:
    """(size, size) bool mask of the stripes or dots painted in the contrast colour, else None."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if modifier == "striped":
        period, angle, phase = rng.uniform(9, 12), rng.uniform(0, np.pi), rng.uniform(0, 12)
        return ((xx * np.cos(angle) + yy * np.sin(angle) + phase) % period) < period / 2
    if modifier == "dotted":
        step, ox, oy = rng.uniform(10, 13), rng.uniform(0, 13), rng.uniform(0, 13)
        dx, dy = (xx - ox) % step - step / 2, (yy - oy) % step - step / 2
        return dx * dx + dy * dy < (0.3 * step) ** 2
    return None


def _paint(img: np.ndarray, alpha: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """``img`` (S, S, 3) float with ``rgb`` laid over it where ``alpha`` (S, S) in [0, 1] says."""
    a = alpha[..., None]
    return img * (1 - a) + rgb * a


def _draw(rng: np.random.Generator, concept: Concept, size: int) -> np.ndarray:
    """(size, size, 3) float image of one object of ``concept`` on a background, drawn from ``rng``."""
    lo, hi = _RADIUS.get(concept.modifier, _MEDIUM)
    r = rng.uniform(lo, hi)
    cx, cy = (0.5 + rng.uniform(-1, 1) * (0.5 - r) * 0.8 for _ in range(2))
    rot = float(rng.uniform(-0.18, 0.18))
    rgb = np.array(COLOURS[concept.colour][0], dtype=np.float32)
    img, _ = draw_background(rng, size, [rgb])
    mask_img = draw_shape_mask(concept.shape, size, cx * size, cy * size, r * size, rot)
    mask = np.asarray(mask_img, dtype=np.float32) / 255
    if concept.modifier == "hollow":
        width = max(2, round(0.25 * r * size))
        inner = np.asarray(mask_img.filter(ImageFilter.MinFilter(2 * width + 1)), dtype=np.float32) / 255
        mask = np.clip(mask - inner, 0, 1)
    elif concept.modifier == "glowing":
        halo = mask_img.filter(ImageFilter.MaxFilter(9)).filter(ImageFilter.GaussianBlur(3))
        img = _paint(img, 0.8 * np.asarray(halo, dtype=np.float32) / 255, 0.5 * rgb + 0.5 * 255)
    img = _paint(img, mask, rgb)
    pattern = _pattern(rng, concept.modifier, size)
    if pattern is not None:
        img = _paint(img, mask * pattern, _contrast(COLOURS[concept.colour][0]))
    return np.clip(img, 0, 255)


def render_concept(seed: int, split: str, index: int, concept: str | Concept,
                   image_size: int = 32, supersample: int = 2) -> tuple[Image.Image, str]:
    """Render sample ``index`` of ``split`` as an image of ``concept``: returns (RGB image, caption).

    The image is ``image_size`` square; the caption is drawn uniformly from :func:`caption_pool`.
    Deterministic in ``(seed, split, index, concept, image_size, supersample)``.
    """
    concept = _parse_concept(concept)
    rng = seeded_rng(seed, "longtail", split, index)
    caption = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))].format(concept.name)
    img = Image.fromarray(_draw(rng, concept, image_size * supersample).astype(np.uint8))
    if supersample > 1:
        img = img.resize((image_size, image_size), Image.BOX)
    return img, caption


def _render_chunk(args: tuple) -> list[dict]:
    """Render and save samples ``lo..hi-1`` of a split; returns their manifest rows."""
    img_dir, split, lo, hi, width, seed, concepts, labelled = args
    rows = []
    for i, concept in zip(range(lo, hi), concepts):
        img, caption = render_concept(seed, split, i, concept)
        name = f"{i:0{width}d}.png"
        img.save(os.path.join(img_dir, name), compress_level=1)
        row = {"id": f"{split}-{i:0{width}d}", "image": f"images/{name}", "caption": caption}
        if labelled:
            row.update(label=concept.rank - 1, class_name=concept.name)
        row.update(concept=concept.name, rank=concept.rank, modifier=concept.modifier, colour=concept.colour,
                   shape=concept.shape)
        rows.append(row)
    return rows


def _split_concepts(split: str, counts: np.ndarray, seed: int) -> np.ndarray:
    """The concept index (rank - 1) of every row: ``counts[c]`` rows of concept ``c``, in a seeded order."""
    ids = np.repeat(np.arange(len(counts)), counts)
    return ids[seeded_rng(seed, "longtail", split, "order").permutation(len(ids))]


def _write_split(out: Path, split: str, ids: np.ndarray, concepts: Sequence[Concept], seed: int, labelled: bool,
                 progress: bool, workers: int) -> pd.DataFrame:
    return write_split(
        out, split, len(ids), _render_chunk,
        lambda img_dir, lo, hi, width: (img_dir, split, lo, hi, width, seed, [concepts[j] for j in ids[lo:hi]],
                                        labelled),
        desc=f"longtail {split}", progress=progress, workers=workers)


def _concepts_json(concepts: Sequence[Concept], zipf: float, n_train: np.ndarray, n_test: np.ndarray,
                   seed: int) -> dict:
    p = _zipf_probs(len(concepts), zipf)
    return {
        "world": "longtail", "seed": seed, "zipf": zipf, "n_concepts": len(concepts),
        "modifiers": list(MODIFIERS), "colours": list(COLOURS), "shapes": list(SHAPES),
        "concepts": [{"name": c.name, "rank": c.rank, "modifier": c.modifier, "colour": c.colour, "shape": c.shape,
                      "p": float(p[i]), "n_train": int(n_train[i]), "n_test": int(n_test[i])}
                     for i, c in enumerate(concepts)],
    }


def generate_longtail_world(out_dir: str | os.PathLike, *, n_train: int = 100_000, n_test: int = 5_000,
                            n_concepts: int = 256, zipf: float = 1.1, seed: int = 0, progress: bool = True,
                            workers: int | None = None) -> dict:
    """Generate the long-tailed world (train split, labelled test split, classes.json, concepts.json).

    Args:
        out_dir: output folder (the layout is in the module docstring).
        n_train: training pairs; the concept of rank ``r`` gets ``n_train * p_r`` of them, ``p_r ~ r ** -zipf``.
        n_test: labelled test images, spread evenly over the concepts.
        n_concepts: concepts used, in [1, MAX_CONCEPTS] (384).
        zipf: the Zipf exponent (>= 0; 0 gives equal frequencies).
        seed: the world's seed (ranks, row order, images, captions).
        workers: rendering processes (default: the number of CPU cores); the output does not depend on it.

    Returns:
        The ``classes.json`` content.

    Raises:
        ConfigError: a size, ``n_concepts``, ``zipf`` or ``workers`` out of range.
    """
    check_int("n_train", n_train, minimum=1)
    check_int("n_test", n_test, minimum=1)
    check_int("seed", seed)
    zipf = check_real("zipf", zipf, low=0)
    workers = check_int("workers", workers or os.cpu_count() or 1, minimum=1)
    concepts = world_concepts(n_concepts, seed)
    train_counts = zipf_counts(n_train, len(concepts), zipf)
    test_counts = zipf_counts(n_test, len(concepts), 0.0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, counts, labelled in (("train", train_counts, False), ("test", test_counts, True)):
        _write_split(out, split, _split_concepts(split, counts, seed), concepts, seed, labelled, progress, workers)
    write_json(out / "concepts.json", _concepts_json(concepts, zipf, train_counts, test_counts, seed))
    info = {
        "classes": [c.name for c in concepts],
        "templates": list(CAPTION_TEMPLATES),
        "zero_shot_templates": list(DEFAULT_TEMPLATES),
        "world": "longtail", "seed": seed, "n_train": n_train, "n_test": n_test, "n_concepts": len(concepts),
        "zipf": zipf,
        "train_manifest": "train/manifest.parquet",
        "test_manifest": "test/manifest.parquet",
        "concepts": "concepts.json",
    }
    write_json(out / "classes.json", info)
    return info
