"""A torch Dataset over a manifest, with bad rows skipped, counted and logged (never dropped silently).

Rows are checked in two places:

* at construction: empty captions, image paths outside the dataset's roots
  (:mod:`clipguard.data.roots`) and missing image files are skipped (images may be local files,
  fsspec URLs or members of webdataset tars, :func:`load_rgb`; remote ones are checked with one
  listing per folder or archive, not one request per row);
* at load time: an image that cannot be decoded (truncated, corrupt, a decompression bomb) makes
  ``__getitem__`` return an error item; the :func:`collate_skipping` collate function removes such
  items and reports them in the batch, so consumers record them in their :class:`SkipLog`.

Every reader of images goes through :func:`load_rgb`, so every command sees the same pixels: EXIF
orientation applied, any mode (grayscale, 16-bit, CMYK, palette, alpha) converted to 8-bit RGB, and
an image whose declared size exceeds PIL's ``Image.MAX_IMAGE_PIXELS`` refused before it is decoded.
The reason of a skip comes from :func:`skip_reason` (its text up to the first colon is what
:meth:`SkipLog.counts` counts: "missing image", "unreadable image", "image too large", "outside the
dataset root", "empty caption"). The lines the manifest reader left out ("too many fields", "duplicate
key": :attr:`~clipguard.data.manifest.Manifest.read_skips`) join a skip log through
:meth:`SkipLog.add_read_skips`, as row -1 (they have no row in the manifest's table):
:class:`ImageCaptionDataset` adds them when it is built.
"""
from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from clipguard.data.manifest import Manifest
from clipguard.data.roots import OutsideRootError
from clipguard.utils.fs import exists_many, is_url, read_bytes

__all__ = ["ImageCaptionDataset", "SkipLog", "collate_skipping", "load_rgb", "record_errors", "skip_reason"]

log = logging.getLogger("clipguard")


@dataclass
class SkipLog:
    """Rows skipped by a job: ``(row, id, reason)`` triples, written to ``skipped.csv``."""

    entries: list[tuple[int, str, str]] = field(default_factory=list)

    def add(self, row: int, id_: str, reason: str) -> None:
        self.entries.append((row, id_, reason))
        log.warning("skipped row %d (id %s): %s", row, id_, reason)

    def add_read_skips(self, manifest: Manifest) -> None:
        """Add the lines ``manifest``'s reader left out (:attr:`Manifest.read_skips`) as rows -1, not logged
        again (the reader logged them); their reason names the line."""
        self.entries.extend((-1, id_, reason) for _, id_, reason in manifest.read_skips)

    def counts(self) -> dict[str, int]:
        """Number of skipped rows per reason (the reason's text up to the first colon)."""
        out: dict[str, int] = {}
        for _, _, reason in self.entries:
            key = reason.split(":")[0]
            out[key] = out.get(key, 0) + 1
        return out

    def __len__(self) -> int:
        return len(self.entries)

    def save(self, path: str | os.PathLike) -> Path:
        import pandas as pd

        path = Path(path)
        pd.DataFrame(self.entries, columns=["row", "id", "reason"]).to_csv(path, index=False)
        return path


def _to_rgb(im: Image.Image) -> Image.Image:
    """``im`` upright (its EXIF orientation applied) as an 8-bit RGB image; 16-bit grayscale is scaled
    down (PIL's own conversion would clip it to white)."""
    if im.getexif().get(0x0112, 1) not in (0, 1):  # 0x0112: EXIF orientation; 1 = upright
        im = ImageOps.exif_transpose(im)
    if im.mode.startswith("I;16"):
        im = Image.fromarray((np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8), "L")
    elif im.mode in ("I", "F"):
        a = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(a / 257 if a.max() > 255 else a, 0, 255).astype(np.uint8), "L")
    return im.convert("RGB")


def _decode(src: Any) -> Image.Image:
    """Open and fully decode ``src`` (a path or a file object) as RGB; a declared size beyond
    ``Image.MAX_IMAGE_PIXELS`` raises :class:`PIL.Image.DecompressionBombError` before any decoding."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(src) as im:
            im.load()
            return _to_rgb(im)


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image fully (decoding errors surface here, not later) and convert it to upright 8-bit RGB.

    ``path`` is a local path, an fsspec URL (``s3://...``, ``memory://...``) or a member of a tar,
    ``tar://<member>::<archive>`` (one range read; see :mod:`clipguard.utils.fs`).

    Raises:
        OSError: missing, truncated or corrupt file (``PIL.UnidentifiedImageError`` is one).
        PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning: a declared size beyond
            ``Image.MAX_IMAGE_PIXELS`` (refused before decoding).
    """
    if not is_url(path):
        return _decode(path)
    try:
        return _decode(io.BytesIO(read_bytes(path)))
    except UnidentifiedImageError:  # its message would name the in-memory buffer, not the image
        raise UnidentifiedImageError(f"cannot identify image file {str(path)!r}") from None


def skip_reason(exc: BaseException, path: Any = None) -> str:
    """The reason a row whose image raised ``exc`` is skipped: ``"outside the dataset root: ..."``,
    ``"missing image: <path>"``, ``"image too large: ..."`` or ``"unreadable image: <type>: ..."``."""
    if isinstance(exc, OutsideRootError):
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return f"missing image: {path if path is not None else exc.filename}"
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"image too large: {exc}"
    return f"unreadable image: {type(exc).__name__}: {exc}"


class ImageCaptionDataset(Dataset):
    """Image-caption pairs of a manifest.

    Args:
        manifest: the loaded manifest.
        transform: image transform (e.g. open_clip's preprocess) mapping a PIL image to a
            (3, H, W) float tensor; ``None`` returns the PIL image.
        tokenizer: optional callable mapping a list of captions to a (n, L) LongTensor.
        skip_log: where skipped rows are recorded (a new one if omitted); the lines the manifest's reader
            left out are added first (:meth:`SkipLog.add_read_skips`).

    Items are dicts ``{"index": int, "image": Tensor(3,H,W), "text": LongTensor(L) | str}``
    where ``index`` is the row in the manifest; ``None`` for an image that cannot be decoded.
    """

    def __init__(
        self,
        manifest: Manifest,
        transform: Callable[[Image.Image], Any] | None = None,
        tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
        skip_log: SkipLog | None = None,
    ) -> None:
        self.manifest = manifest
        self.transform = transform
        self.tokenizer = tokenizer
        self.skip_log = skip_log if skip_log is not None else SkipLog()
        self.skip_log.add_read_skips(manifest)
        df = manifest.df
        skips: dict[int, str] = {}
        for i in range(len(df)):
            cap = df["caption"].iat[i]
            if cap is None or (isinstance(cap, float)) or not str(cap).strip():
                skips[i] = "empty caption"
        inside: list[int] = []
        paths = []
        for i in range(len(df)):
            if i in skips:
                continue
            try:
                paths.append(manifest.image_path(i))
                inside.append(i)
            except OutsideRootError as exc:
                skips[i] = str(exc)
        for i, path, found in zip(inside, paths, exists_many(paths)):
            if not found:
                skips[i] = f"missing image: {path}"
        for i in sorted(skips):  # logged in row order
            self.skip_log.add(i, str(df["id"].iat[i]), skips[i])
        self.rows = [i for i in inside if i not in skips]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, j: int) -> dict[str, Any] | None:
        i = self.rows[j]
        try:
            img = load_rgb(self.manifest.image_path(i))
        except Exception as exc:  # PIL raises several types for corrupt files
            return {"index": i, "error": skip_reason(exc)}
        caption = str(self.manifest.df["caption"].iat[i])
        text: Any = caption
        if self.tokenizer is not None:
            text = self.tokenizer([caption])[0]
        image = self.transform(img) if self.transform is not None else img
        return {"index": i, "image": image, "text": text}


def collate_skipping(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate dataset items, moving failed ones into ``batch["errors"]`` as ``(index, reason)``."""
    good = [it for it in items if "error" not in it]
    errors = [(it["index"], it["error"]) for it in items if "error" in it]
    batch: dict[str, Any] = {"errors": errors, "index": torch.tensor([it["index"] for it in good], dtype=torch.long)}
    if good:
        for key in ("image", "text"):
            vals = [it[key] for it in good]
            batch[key] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    return batch


def record_errors(batch: dict[str, Any], dataset: ImageCaptionDataset) -> None:
    """Add a collated batch's decoding failures to the dataset's skip log."""
    for i, reason in batch["errors"]:
        dataset.skip_log.add(int(i), str(dataset.manifest.df["id"].iat[int(i)]), reason)
