"""The one data path of training: a manifest's image-caption pairs, cached or streamed, with views.

:class:`PairData` is a torch Dataset over a manifest. Each image goes through the model's eval
geometry (the transforms of ``bundle.preprocess`` before its ``ToTensor``: Resize bicubic +
CenterCrop), giving a uint8 (3, H, W) tensor; then through the :class:`Views` that ask for it; then
through the rest of ``bundle.preprocess`` (its ``Normalize``). Without views a batch image is
exactly ``bundle.preprocess(image)``.

Where the uint8 images live (``cache``):

* ``"memory"``: every pair is decoded once, at construction, into one (N, 3, H, W) uint8 tensor
  (unreadable images are skipped and logged then); 20k pairs at 32 px take 60 MB.
* ``"stream"``: each item is decoded when it is read (a DataLoader's worker processes do it); an
  unreadable image gives ``{"index", "error"}``, dropped from the batch by :func:`collate_pairs` and
  logged once by :meth:`PairData.record_errors`.
* ``"auto"``: memory when N * 3 * H * W bytes fit in ``cache_max_bytes``, else stream.

Both give the same batches (the memory cache holds the very uint8 tensors streaming decodes), so a
run gives the same weights either way, whatever the number of workers.

Keys are ``(epoch, j)`` tuples (``j`` in ``range(len(data))``; a bare ``j`` means epoch 0). Every
view of manifest row ``r`` at epoch ``e`` is drawn inside
``seeded_torch_rng(derive_seed(seed, "view", name, e, r))`` (``name`` = ``"image_aug"`` or
``"image_light"``), and the augmented caption from ``rng(seed, "text_aug", e, r)``: the views depend on
``(seed, epoch, row)`` alone, not on worker count, batch order or the caller's generators.
"""
from __future__ import annotations

import copy
import multiprocessing
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from clipguard.data.dataset import ImageCaptionDataset, SkipLog
from clipguard.data.manifest import Manifest
from clipguard.errors import ConfigError, ManifestError
from clipguard.models.factory import ClipBundle
from clipguard.utils.progress import progress_bar
from clipguard.utils.seeding import derive_seed, rng, seeded_torch_rng
from clipguard.utils.validate import check_choice, check_int

__all__ = ["CACHE_MODES", "ImageAug", "PairData", "TextAug", "Views", "collate_pairs", "epoch_loader",
           "ordered_loader"]

#: An image view: uint8 (3, H, W) -> float32 (3, H, W) in [0, 1]; draws from torch's global generator
#: (seeded per sample by :class:`PairData`).
ImageAug = Callable[[torch.Tensor], torch.Tensor]
#: A caption view: ``f(caption, numpy_generator) -> caption``.
TextAug = Callable[[str, np.random.Generator], str]

#: The values of ``PairData(cache=...)``.
CACHE_MODES = ("auto", "memory", "stream")


@dataclass(frozen=True)
class Views:
    """What a batch carries besides the image and its caption.

    Attributes:
        image_aug: a second, augmented view of each image (batch key ``image_aug``; CleanCLIP).
        text_aug: an augmented caption (batch key ``text_aug``, tokens; CleanCLIP's EDA).
        image_light: applied to the primary image itself (PAR's light augmentation).
        labels: read the manifest's int ``label`` column (batch key ``label``, int64).
    """

    image_aug: ImageAug | None = None
    text_aug: TextAug | None = None
    image_light: ImageAug | None = None
    labels: bool = False

    @property
    def provides(self) -> frozenset[str]:
        """The objective inputs (:data:`clipguard.train.objective.INPUTS`) a batch with these views feeds."""
        extra = {"image_aug": self.image_aug is not None, "text_aug": self.text_aug is not None,
                 "label": self.labels}
        return frozenset({"image", "image_raw", "text"} | {k for k, on in extra.items() if on})


def _split_preprocess(preprocess: Any) -> tuple[list, list]:
    """``(geometry, finish)``: the transforms of a torchvision Compose before and after its ToTensor."""
    steps = getattr(preprocess, "transforms", None)
    cut = None if steps is None else next(
        (i for i, t in enumerate(steps) if type(t).__name__.endswith("ToTensor")), None)
    if cut is None:
        raise ConfigError("PairData needs the model's preprocess to be a torchvision Compose with a ToTensor "
                          "(open_clip's image_transform); build the bundle with clipguard.models.create_model")
    return list(steps[:cut]), list(steps[cut + 1:])


def _crop_size(geometry: list, bundle: ClipBundle) -> tuple[int, int]:
    """(H, W) of the geometry's output: its CenterCrop's size, else the model's image size."""
    for t in geometry:
        if type(t).__name__ == "CenterCrop":
            size = t.size
            return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[-1]))
    return bundle.image_size, bundle.image_size


def _read_labels(manifest: Manifest) -> np.ndarray:
    """The manifest's ``label`` column as (n_rows,) int64, or a ConfigError naming the column."""
    where = manifest.path or "the manifest"
    if "label" not in manifest.df.columns:
        raise ConfigError(f"{where}: labelled training needs a 'label' column (int class index) in the manifest; "
                          "add it (e.g. the class of each image) or train without labels")
    values = pd.to_numeric(manifest.df["label"], errors="coerce").to_numpy(np.float64)
    bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)) | (values < 0))
    if len(bad):
        raise ConfigError(f"{where}: column 'label' must hold an int class index >= 0 in every row; "
                          f"row {bad[0]} has {manifest.df['label'].iat[bad[0]]!r}")
    return values.astype(np.int64)


def _no_pair_error(ds: ImageCaptionDataset) -> ManifestError:
    """The error for a manifest none of whose rows gives a usable pair."""
    counts = ", ".join(f"{n} {reason}" for reason, n in ds.skip_log.counts().items()) or "no rows"
    where = ds.manifest.path or "the manifest"
    return ManifestError(f"{where}: no usable image-caption pair, all {len(ds.manifest)} rows skipped "
                         f"({counts}); fix the image paths and captions (skipped.csv lists each row)")


class PairData(Dataset):
    """A manifest's image-caption pairs for training (module docstring).

    Args:
        manifest: the loaded manifest (columns ``id``, ``image``, ``caption``; ``label`` for labels).
        bundle: the model whose ``preprocess`` (geometry, then normalisation) and ``tokenizer`` apply.
        views: the extra views each item carries (none by default).
        seed: seeds every view (see the module docstring).
        cache: ``"auto"``, ``"memory"`` or ``"stream"``.
        cache_max_bytes: the largest uint8 cache ``"auto"`` keeps in memory.
        progress: show the decoding bar of the memory cache.
        skip_log: where skipped rows are recorded (a new one if omitted).

    Attributes:
        rows: the manifest rows of the pairs, in key order (``len(data)`` of them).
        skip_log: rows left out (empty caption, missing or unreadable image), as ``ImageCaptionDataset``.
        cache: ``"memory"`` or ``"stream"`` (``"auto"`` resolved).

    Items are dicts: ``index`` (int manifest row), ``image`` (3, H, W) float32 normalised, ``text`` (L,)
    int64 tokens, and with the views ``image_aug`` (3, H, W), ``text_aug`` (L,), ``label`` (int64 scalar).

    Raises:
        ConfigError: a setting out of range, or ``views.labels`` without a usable ``label`` column.
        ManifestError: no row gives a usable pair (empty, or every image missing or unreadable).
    """

    def __init__(self, manifest: Manifest, bundle: ClipBundle, *, views: Views = Views(), seed: int = 0,
                 cache: str = "auto", cache_max_bytes: int = 2 * 1024 ** 3, progress: bool = True,
                 skip_log: SkipLog | None = None) -> None:
        check_choice("cache", cache, CACHE_MODES)
        check_int("cache_max_bytes", cache_max_bytes, minimum=0)
        self.seed = check_int("seed", seed)
        if not isinstance(views, Views):
            raise ConfigError(f"views must be a clipguard.train.Views, got {type(views).__name__}")
        self.manifest, self.views = manifest, views
        self._labels = _read_labels(manifest) if views.labels else None
        self._geometry, self._finish = _split_preprocess(bundle.preprocess)
        self._tokenizer = bundle.tokenizer
        self._hw = _crop_size(self._geometry, bundle)
        self._ds = ImageCaptionDataset(manifest, skip_log=skip_log)
        self.skip_log = self._ds.skip_log
        self._logged: set[int] = set()
        self._images: torch.Tensor | None = None
        self._tokens: torch.Tensor | None = None
        n = len(self._ds)
        fits = n * 3 * self._hw[0] * self._hw[1] <= cache_max_bytes
        self.cache = "memory" if cache == "memory" or (cache == "auto" and fits) else "stream"
        if self.cache == "memory":
            self._pos = self._decode_all(progress)
        else:
            self._pos = self._probe()
        self.rows: list[int] = [self._ds.rows[p] for p in self._pos]

    # -- construction ------------------------------------------------------------------------------

    def _load(self, p: int) -> torch.Tensor | str:
        """Position ``p`` of the dataset as a uint8 (3, H, W) tensor after the geometry, or the error."""
        item = self._ds[p]
        if "error" in item:
            return item["error"]
        img: Image.Image = item["image"]
        for t in self._geometry:
            img = t(img)
        out = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()
        if tuple(out.shape) != (3, *self._hw):
            raise ConfigError(f"the model's preprocess gave an image of shape {tuple(out.shape)}, expected "
                              f"{(3, *self._hw)}; its geometry must end in a CenterCrop")
        return out

    def _skip(self, p: int, reason: str) -> None:
        row = self._ds.rows[p]
        self._logged.add(row)
        self.skip_log.add(row, str(self.manifest.df["id"].iat[row]), reason)

    def _decode_all(self, progress: bool) -> list[int]:
        """Decode every pair into the uint8 cache; returns the readable positions."""
        n = len(self._ds)
        images = torch.empty((n, 3, *self._hw), dtype=torch.uint8)
        keep: list[int] = []
        with progress_bar(n, "decode", unit="row", enabled=progress) as bar:
            for p in range(n):
                out = self._load(p)
                if isinstance(out, str):
                    self._skip(p, out)
                else:
                    images[len(keep)] = out
                    keep.append(p)
                bar.update(1)
        if not keep:
            raise _no_pair_error(self._ds)
        self._images = images[:len(keep)]
        self._tokens = self._tokenizer([self._caption(self._ds.rows[p]) for p in keep])
        return keep

    def _probe(self) -> list[int]:
        """Stream mode: decode up to the first readable image (dropping unreadable ones before it)."""
        for p in range(len(self._ds)):
            out = self._load(p)
            if not isinstance(out, str):
                return list(range(p, len(self._ds)))
            self._skip(p, out)
        raise _no_pair_error(self._ds)

    # -- items -------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def ids(self) -> list[str]:
        """The manifest ids of :attr:`rows`."""
        return self.manifest.df["id"].astype(str).to_numpy()[np.asarray(self.rows, dtype=np.int64)].tolist()

    @property
    def provides(self) -> frozenset[str]:
        """The objective inputs a batch of this data feeds (:attr:`Views.provides`)."""
        return self.views.provides

    def plain(self) -> "PairData":
        """The same pairs without views (sharing the cache and the skip log)."""
        if self.views == Views():
            return self
        out = copy.copy(self)
        out.views, out._labels = Views(), None
        return out

    def _caption(self, row: int) -> str:
        return str(self.manifest.df["caption"].iat[row])

    def _finished(self, img: torch.Tensor) -> torch.Tensor:
        """A float (3, H, W) image in [0, 1] through the rest of the preprocess (its Normalize)."""
        for t in self._finish:
            img = t(img)
        return img

    def _view(self, name: str, fn: ImageAug, img: torch.Tensor, epoch: int, row: int) -> torch.Tensor:
        with seeded_torch_rng(derive_seed(self.seed, "view", name, epoch, row)):
            out = fn(img)
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            raise ConfigError(f"the {name} view must return a float tensor in [0, 1], got "
                              f"{getattr(out, 'dtype', type(out).__name__)}")
        return self._finished(out.to(torch.float32))

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence[tuple[int, int] | int]) -> list[dict[str, Any]]:
        """The items of ``keys`` (what a DataLoader's batch sampler asks for at once): the uint8 images
        are normalised as one batch -- elementwise, so each is exactly its own ``preprocess``."""
        keys = [k if isinstance(k, tuple) else (0, k) for k in keys]
        if self._images is not None:
            js = [j for _, j in keys]
            good, u8, tokens = keys, self._images[js], self._tokens[js]
        else:
            loaded = [(k, self._load(self._pos[k[1]])) for k in keys]
            errors = {k: img for k, img in loaded if isinstance(img, str)}
            good = [k for k, _ in loaded if k not in errors]
            if not good:
                return [{"index": self.rows[j], "error": errors[(e, j)]} for e, j in keys]
            u8 = torch.stack([img for k, img in loaded if k not in errors])
            tokens = self._tokenizer([self._caption(self.rows[j]) for _, j in good])
        primary = None if self.views.image_light is not None else self._finished(u8.to(torch.float32).div(255))
        items = {k: self._item(k, u8[i], tokens[i], None if primary is None else primary[i])
                 for i, k in enumerate(good)}
        return [items[k] if k in items else {"index": self.rows[k[1]], "error": errors[k]} for k in keys]

    def _item(self, key: tuple[int, int], img: torch.Tensor, tokens: torch.Tensor,
              primary: torch.Tensor | None) -> dict[str, Any]:
        """One item from its uint8 image, its tokens and (without a light view) its normalised image."""
        (epoch, j), v = key, self.views
        row = self.rows[j]
        if primary is None:
            primary = self._view("image_light", v.image_light, img, epoch, row)
        item: dict[str, Any] = {"index": row, "image": primary, "text": tokens}
        if v.image_aug is not None:
            item["image_aug"] = self._view("image_aug", v.image_aug, img, epoch, row)
        if v.text_aug is not None:
            caption = v.text_aug(self._caption(row), rng(self.seed, "text_aug", epoch, row))
            item["text_aug"] = self._tokenizer([str(caption)])[0]
        if self._labels is not None:
            item["label"] = torch.tensor(int(self._labels[row]), dtype=torch.long)
        return item

    def record_errors(self, batch: dict[str, Any]) -> None:
        """Log a collated batch's unreadable images in :attr:`skip_log`, once per row."""
        for row, reason in batch.get("errors", ()):
            row = int(row)
            if row not in self._logged:
                self._logged.add(row)
                self.skip_log.add(row, str(self.manifest.df["id"].iat[row]), reason)


def collate_pairs(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack items of :class:`PairData` into a batch; failed items go to ``batch["errors"]``.

    Returns:
        ``{"errors": [(row, reason)], "index": (B,) int64, key: stacked tensor ...}`` for every other
        key of the items (no tensor keys when every item failed).
    """
    good = [it for it in items if "error" not in it]
    batch: dict[str, Any] = {"errors": [(it["index"], it["error"]) for it in items if "error" in it],
                             "index": torch.tensor([it["index"] for it in good], dtype=torch.long)}
    for key in (good[0] if good else ()):
        if key != "index":
            batch[key] = torch.stack([it[key] for it in good])
    return batch


def _loader(data: PairData, batches: Sequence[list], workers: int, pin_memory: bool, seed: int) -> DataLoader:
    """A DataLoader over explicit batches of keys; worker processes fork where the platform allows."""
    check_int("workers", workers, minimum=0)
    context = None
    if workers > 0 and "fork" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("fork")
    # the explicit generator: the loader draws its base seed from it, never from the global one
    return DataLoader(data, batch_sampler=batches, num_workers=workers, collate_fn=collate_pairs,
                      pin_memory=pin_memory, multiprocessing_context=context,
                      generator=torch.Generator().manual_seed(seed))


def epoch_loader(data: PairData, epoch: int, *, batch_size: int, seed: int, workers: int = 0,
                 pin_memory: bool = False) -> DataLoader:
    """The batches of epoch ``epoch`` (0-based): a seeded permutation cut into full batches.

    The order is ``torch.randperm(len(data), generator=torch.Generator().manual_seed(derive_seed(seed,
    "epoch", epoch)))`` cut into ``len(data) // batch_size`` batches (the ragged last one dropped:
    contrastive batches should be full; ``batch_size`` is capped at ``len(data)``).

    Args:
        workers: loader worker processes (0: load in this process); views are drawn there.
        pin_memory: pin batches for a fast copy to a GPU.

    Returns:
        A DataLoader of :func:`collate_pairs` batches (``errors``, ``index`` (B,), ``image`` (B, 3, H, W),
        ``text`` (B, L), and the views' keys).
    """
    check_int("epoch", epoch, minimum=0)
    bs = min(check_int("batch_size", batch_size, minimum=1), len(data))
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(derive_seed(seed, "epoch", epoch)))
    batches = [[(epoch, j) for j in perm[s * bs:(s + 1) * bs].tolist()] for s in range(len(data) // bs)]
    return _loader(data, batches, workers, pin_memory, derive_seed(seed, "loader", epoch))


def ordered_loader(data: PairData, *, batch_size: int, workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """Every pair once, in key order, ``batch_size`` at a time (the last batch may be smaller); epoch 0's
    views (pass ``data.plain()`` for none)."""
    bs = check_int("batch_size", batch_size, minimum=1)
    batches = [[(0, j) for j in range(s, min(s + bs, len(data)))] for s in range(0, len(data), bs)]
    return _loader(data, batches, workers, pin_memory, derive_seed("ordered"))
