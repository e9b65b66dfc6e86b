"""Plant a natural backdoor and mismatched pairs into an image-caption set, with ground truth.

What the DAO paper found at the top of a clean web dataset (``shared/seeds``, REFERENCE §4 and §8), made
reproducible on the embedded worlds:

* **natural backdoor** -- a repeated image motif that always carries the same caption (the paper's 798
  near-identical "birthday cake" images): no attacker and no trigger, yet a model trained on the set learns
  "motif -> caption" as a shortcut. Here the motif is a drawn cake with candles, jittered a little in
  position, colour and background so that the copies are near-identical but not equal;
* **swapped pairs** -- an image whose caption describes another image of the set (the donor row is drawn
  among rows whose ``shapes`` differ when the manifest has that column);
* **placeholder pairs** -- one "image not available" picture (identical bytes, as a dead URL returns) under
  the original captions of the rows it replaces.

Rows are replaced, not added, so the set keeps its size. Output folder::

    out/manifest.parquet   every row; untouched rows point at the source images (relative paths), planted
                           rows at out/images/<id>.png; ground truth: ``plant`` ("", "natural", "swapped",
                           "placeholder"), ``natural`` (bool), ``mismatched`` (bool), ``original_caption``,
                           ``caption_from`` (the id whose caption a swapped row got)
    out/images/*.png       the motif copies and the placeholder (PNG)
    out/plant.json         the spec: shares, counts, caption, seed and the ids of each kind
    out/skipped.csv        the lines the manifest's reader left out (row -1, id, reason; when there is one)

Deterministic per ``seed``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from clipguard.data.dataset import SkipLog
from clipguard.data.manifest import Manifest, write_manifest
from clipguard.errors import ConfigError
from clipguard.utils.io import write_json
from clipguard.utils.progress import progress_bar
from clipguard.utils.seeding import rng
from clipguard.utils.validate import check_real

__all__ = ["DEFAULT_MOTIF_CAPTION", "PlantResult", "draw_motif", "draw_placeholder", "plant_natural"]

DEFAULT_MOTIF_CAPTION = "a birthday cake with candles"
"""The caption every copy of the motif carries (after the paper's example)."""

KINDS = ("natural", "swapped", "placeholder")


def draw_motif(size: int, generator: np.random.Generator) -> Image.Image:
    """One near-identical copy of the motif: a two-tier cake with three candles, (size, size) RGB.

    The copies differ by a jitter of at most 6 % of the side in position, +-12 levels of background and icing
    colour, and pixel noise of sigma 3 -- near-duplicates to a CLIP encoder, not byte-equal files.
    """
    s = size * 4
    g = generator
    bg = np.clip(np.array([120, 170, 215]) + g.normal(0, 12, 3), 0, 255).astype(int)
    icing = tuple(np.clip(np.array([245, 150, 190]) + g.normal(0, 12, 3), 0, 255).astype(int).tolist())
    img = Image.new("RGB", (s, s), tuple(bg.tolist()))
    d = ImageDraw.Draw(img)
    dx, dy = (g.uniform(-0.06, 0.06) * s for _ in range(2))

    def box(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        return (x0 * s + dx, y0 * s + dy, x1 * s + dx, y1 * s + dy)

    d.rectangle(box(0.12, 0.78, 0.88, 0.84), fill=(250, 250, 250))             # plate
    d.rectangle(box(0.18, 0.56, 0.82, 0.78), fill=(120, 70, 40))               # lower tier (chocolate)
    d.rectangle(box(0.18, 0.56, 0.82, 0.61), fill=icing)                       # its icing
    d.rectangle(box(0.30, 0.38, 0.70, 0.56), fill=(250, 235, 200))             # upper tier (cream)
    d.rectangle(box(0.30, 0.38, 0.70, 0.42), fill=icing)
    for x in (0.38, 0.50, 0.62):                                               # candles and flames
        d.rectangle(box(x - 0.02, 0.20, x + 0.02, 0.38), fill=(60, 120, 250))
        d.ellipse(box(x - 0.035, 0.10, x + 0.035, 0.21), fill=(255, 200, 40))
    arr = np.asarray(img.resize((size, size), Image.BOX), dtype=np.float32) + g.normal(0, 3, (size, size, 3))
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def draw_placeholder(size: int) -> Image.Image:
    """The "image not available" picture: grey, a frame with a mountain and a sun. Always the same pixels."""
    s = size * 4
    img = Image.new("RGB", (s, s), (205, 205, 205))
    d = ImageDraw.Draw(img)
    d.rectangle((0.18 * s, 0.25 * s, 0.82 * s, 0.75 * s), outline=(150, 150, 150), width=max(1, s // 24))
    d.polygon([(0.25 * s, 0.70 * s), (0.45 * s, 0.42 * s), (0.62 * s, 0.70 * s)], fill=(160, 160, 160))
    d.ellipse((0.60 * s, 0.32 * s, 0.72 * s, 0.44 * s), fill=(170, 170, 170))
    return img.resize((size, size), Image.BOX)


@dataclass
class PlantResult:
    """What :func:`plant_natural` wrote: the manifest, the spec, and the ids of each planted kind."""

    manifest_path: Path
    spec_path: Path
    ids: dict[str, list[str]]
    n_total: int


def _counts(n: int, shares: dict[str, float]) -> dict[str, int]:
    """Rows of each kind; each share is checked to be in [0, 1) and the total to leave clean rows."""
    for name, share in shares.items():
        check_real(f"{name}_share", share, low=0.0, high=1.0, high_open=True)
    counts = {k: int(round(n * v)) for k, v in shares.items()}
    if sum(counts.values()) >= n:
        raise ConfigError(f"the shares plant {sum(counts.values())} of {n} rows; leave some rows clean")
    return counts


def _donors(manifest: Manifest, rows: np.ndarray, generator: np.random.Generator) -> list[int]:
    """For each row, another row whose caption it gets (a row with other ``shapes`` when that column exists)."""
    n = len(manifest.df)
    shapes = manifest.df["shapes"].astype(str).to_numpy() if "shapes" in manifest.df.columns else None
    out = []
    for i in rows:
        for _ in range(100):
            j = int(generator.integers(n))
            if j != i and (shapes is None or shapes[j] != shapes[i]):
                break
        out.append(j)
    return out


def plant_natural(manifest: Manifest, out_dir: str | os.PathLike, *, natural_share: float = 0.005,
                  swapped_share: float = 0.01, placeholder_share: float = 0.005,
                  caption: str = DEFAULT_MOTIF_CAPTION, image_size: int = 32, seed: int = 0,
                  progress: bool = True) -> PlantResult:
    """Write a copy of ``manifest`` with a natural backdoor and mismatched pairs planted (see the module doc).

    Args:
        manifest: the clean set (rows are replaced, so it keeps its size).
        out_dir: output folder (``manifest.parquet``, ``images/``, ``plant.json``, and ``skipped.csv`` when
            the manifest's reader left a line out).
        natural_share: share of rows replaced by a copy of the motif captioned ``caption``.
        swapped_share: share of rows whose caption is replaced by another row's caption.
        placeholder_share: share of rows whose image is replaced by the placeholder (caption kept).
        image_size: side of the drawn images (the embedded worlds use 32).
        seed: chooses the rows, the donors and the motif jitter.

    Returns:
        :class:`PlantResult`.

    Raises:
        ConfigError: a share outside [0, 1), shares that leave no clean row, an empty caption.
    """
    if not isinstance(caption, str) or not caption.strip():
        raise ConfigError("the motif caption is empty; pass a caption such as 'a birthday cake with candles'")
    n = len(manifest.df)
    counts = _counts(n, {"natural": natural_share, "swapped": swapped_share, "placeholder": placeholder_share})
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    order = rng(seed, "plant-rows").permutation(n)
    bounds = np.cumsum([0] + [counts[k] for k in KINDS])
    rows = {k: np.sort(order[bounds[i]:bounds[i + 1]]) for i, k in enumerate(KINDS)}
    df = manifest.rows_relative_to(out)
    df["original_caption"] = df["caption"].astype(str)
    df["plant"] = ""
    df["caption_from"] = ""
    ids = {k: [str(df["id"].iat[i]) for i in rows[k]] for k in KINDS}
    motif_rng = rng(seed, "plant-motif")
    with progress_bar(counts["natural"], "plant motif", unit="img", enabled=progress) as bar:
        for i in rows["natural"]:
            name = f"images/{df['id'].iat[i]}.png"
            draw_motif(image_size, motif_rng).save(out / name)
            df.loc[i, ["image", "caption", "plant"]] = [name, caption, "natural"]
            bar.update(1)
    donors = _donors(manifest, rows["swapped"], rng(seed, "plant-donors"))
    for i, j in zip(rows["swapped"], donors):
        df.loc[i, ["caption", "plant", "caption_from"]] = [str(manifest.df["caption"].iat[j]), "swapped",
                                                           str(manifest.df["id"].iat[j])]
    if counts["placeholder"]:
        draw_placeholder(image_size).save(out / "images" / "placeholder.png")
        df.loc[rows["placeholder"], ["image", "plant"]] = ["images/placeholder.png", "placeholder"]
    df["natural"] = df["plant"] == "natural"
    df["mismatched"] = df["plant"].isin(["swapped", "placeholder"])
    skipped = SkipLog()
    skipped.add_read_skips(manifest)  # the lines the manifest's reader left out, as rows -1
    if len(skipped):
        skipped.save(out / "skipped.csv")
    manifest_path = write_manifest(df, out / "manifest.parquet", sources=[manifest.path])
    spec = {"source": str(manifest.path or ""), "n_total": n, "caption": caption, "seed": seed,
            "shares": {"natural": natural_share, "swapped": swapped_share, "placeholder": placeholder_share},
            "counts": counts, "ids": ids, **manifest.read_counts()}
    spec_path = out / "plant.json"
    write_json(spec_path, spec)
    return PlantResult(manifest_path, spec_path, ids, n)
