"""Reading an embedding folder in the clip-retrieval layout (:mod:`clipguard.io.layout`).

::

    emb_dir/
        img_emb/img_emb_0.npy          (n_0, d) float16 or float32
        img_emb/img_emb_1.npy          ...
        text_emb/text_emb_0.npy        optional, same shards and rows as img_emb
        metadata/metadata_0.parquet    optional, row-aligned with img_emb_0.npy
                                       (may hold id, caption, image, poisoned)

Shards are ordered by their integer index (``img_emb_10`` comes after ``img_emb_9``). Shards
with 0 rows are skipped (listed in :attr:`EmbeddingSet.skipped_shards`, with a warning). Other files
in ``img_emb/``, ``text_emb/`` and ``metadata/`` (``notes.txt``, ``img_emb_3.npy.bak``) are ignored,
with a warning, and listed in :attr:`EmbeddingSet.ignored_files` (a scan records them in ``run.json``).

The folder may be local (shards memory-mapped) or an fsspec URL (``s3://bucket/emb``,
``memory://emb``: each shard read through a file object). A Parquet file, or a folder of Parquet
files without ``img_emb/`` (NeMo Curator's ``id`` + ``embedding`` list column, :mod:`clipguard.io.nemo`),
is read into the same :class:`EmbeddingSet`, each file a shard.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from clipguard.errors import EmbeddingError
from clipguard.io.layout import list_shards, shard_name, stray_files
from clipguard.io.nemo import is_parquet_input, list_parquet_shards, read_parquet_shard
from clipguard.utils.fs import Location, as_location, is_dir, is_url, join, open_binary

__all__ = ["EmbeddingSet", "load_embedding_folder", "can_memory_map", "list_folder", "ignored_files"]

log = logging.getLogger("clipguard")


@dataclass
class EmbeddingSet:
    """Embeddings of all non-empty shards, concatenated in shard order.

    Attributes:
        image: (N, d) float32 image embeddings (as stored, not normalised).
        text: (N, d_t) float32 text embeddings, or None when the folder has none.
        metadata: N-row DataFrame: the metadata columns (if any) plus ``shard`` (shard index i)
            and ``row_in_shard``.
        shard_sizes: rows of each non-empty shard, aligned with ``shard_ids``.
        shard_ids: integer index i of each non-empty shard, ascending.
        skipped_shards: indices of the shards skipped because they have 0 rows.
        root: the folder that was read (a Path, or an fsspec URL string; for a single Parquet file,
            its folder).
        shard_files: ``{i: file of shard i relative to root}`` when the shards are not
            ``img_emb/img_emb_<i>.npy`` (Parquet input); empty for a clip-retrieval folder.
        ignored_files: files of the shard folders that are not shards (relative to root), ignored.
    """

    image: np.ndarray
    text: np.ndarray | None
    metadata: pd.DataFrame
    shard_sizes: list[int]
    shard_ids: list[int] = field(default_factory=list)
    skipped_shards: list[int] = field(default_factory=list)
    root: Path | str | None = None
    shard_files: dict[int, str] = field(default_factory=dict)
    ignored_files: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def locate(self, row: int, kind: str = "img") -> str:
        """Human-readable origin of global row ``row``, e.g. ``'img_emb/img_emb_3.npy row 7 (global row 1207)'``
        (``kind="text"``: ``'text_emb/text_emb_3.npy ...'``, or ``'text of <file>'`` for Parquet input)."""
        shard = int(self.metadata["shard"].iat[row])
        in_shard = int(self.metadata["row_in_shard"].iat[row])
        if shard in self.shard_files:
            name = ("" if kind == "img" else "text of ") + self.shard_files[shard]
        else:
            name = shard_name(kind, shard)
        return f"{name} row {in_shard} (global row {row})"


def _load_npy(path: Location) -> np.ndarray:
    """Memory-mapped for a local file; read through a file object for a URL."""
    if not is_url(path):
        return np.load(path, mmap_mode="r", allow_pickle=False)
    with open_binary(path) as f:
        return np.load(f, allow_pickle=False)


def _open_npy(path: Location) -> np.ndarray:
    try:
        arr = _load_npy(path)
    except Exception as e:  # noqa: BLE001 - any read failure becomes one clear message
        raise EmbeddingError(
            f"cannot read {path}: {type(e).__name__}: {e}; re-export this shard"
        ) from None
    if arr.ndim == 1 and arr.shape[0] == 0:
        return arr.reshape(0, 0)
    if arr.ndim != 2:
        raise EmbeddingError(
            f"{path} has shape {arr.shape}, expected (rows, dimensions); re-export this shard"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise EmbeddingError(
            f"{path} holds {arr.dtype} values, expected float16 or float32; re-export this shard"
        )
    return arr


def _parquet_rows(path: Location) -> int:
    import pyarrow.parquet as pq

    try:
        if not is_url(path):
            return int(pq.ParquetFile(path).metadata.num_rows)
        with open_binary(path) as f:
            return int(pq.ParquetFile(f).metadata.num_rows)
    except Exception as e:  # noqa: BLE001
        raise EmbeddingError(
            f"cannot read {path}: {type(e).__name__}: {e}; rewrite this metadata shard"
        ) from None


def list_folder(root: Location) -> tuple[dict[int, Location], dict[int, Location], dict[int, Location]]:
    """``(img, text, meta)`` shards of ``root``, checked to belong together."""
    if not is_dir(root):
        raise EmbeddingError(
            f"embedding folder {root} does not exist; pass the folder that contains img_emb/"
        )
    img = list_shards(root, "img")
    if not img:
        raise EmbeddingError(
            f"no image embedding shards (img_emb/img_emb_<i>.npy) in {root}; "
            "run the embedding step first or pass the folder that contains img_emb/"
        )
    text = list_shards(root, "text")
    if text and set(text) != set(img):
        raise EmbeddingError(
            f"{join(root, 'text_emb')} has shards {sorted(text)} but img_emb has {sorted(img)}; "
            "re-export text_emb so every image shard has a text shard (or remove text_emb/)"
        )
    meta = list_shards(root, "meta")
    if meta and set(meta) - set(img):
        extra = sorted(set(meta) - set(img))
        raise EmbeddingError(
            f"{join(root, 'metadata')} has shards {extra} without image embeddings; "
            "remove them or re-export img_emb"
        )
    if not meta:
        log.warning("no metadata/ shards in %s; sample ids will be global row indices", root)
    return img, text, meta


def ignored_files(root: Location) -> list[str]:
    """The files of ``img_emb/``, ``text_emb/`` and ``metadata/`` under ``root`` that are not shards
    (relative to ``root``), with a warning when there are any: they are ignored, not read."""
    stray = stray_files(root)
    if stray:
        log.warning("%s: ignored %d file(s) that are not shards (img_emb_<i>.npy, text_emb_<i>.npy, "
                    "metadata_<i>.parquet): %s; rename or remove them if they hold data", root, len(stray),
                    ", ".join(stray[:5]) + (", ..." if len(stray) > 5 else ""))
    return stray


def _open_shard(i: int, img_path: Location, text: dict[int, Location], meta: dict[int, Location]):
    """``(image, text or None, metadata path or None)`` of shard ``i``, row counts checked."""
    arr = _open_npy(img_path)
    n = int(arr.shape[0])
    meta_path = meta.get(i)
    if meta and meta_path is None and n > 0:
        raise EmbeddingError(
            f"metadata/metadata_{i}.parquet is missing for {img_path}; "
            "re-export the metadata so every image shard has one"
        )
    if meta_path is not None:
        n_meta = _parquet_rows(meta_path)
        if n_meta != n:
            raise EmbeddingError(
                f"{meta_path} has {n_meta} rows but {img_path} has {n}; "
                "metadata must be row-aligned with its embedding shard, re-export shard "
                f"{i}"
            )
    t_arr = None
    if text:
        t_arr = _open_npy(text[i])
        if t_arr.shape[0] != n:
            raise EmbeddingError(
                f"{text[i]} has {t_arr.shape[0]} rows but {img_path} has {n}; "
                f"re-export shard {i} so text and image embeddings are row-aligned"
            )
    return arr, t_arr, meta_path


def _read_metadata(meta_path: Location | None, n: int) -> pd.DataFrame:
    """The metadata shard (or an empty frame of ``n`` rows)."""
    if meta_path is None:
        return pd.DataFrame(index=range(n))
    if not is_url(meta_path):
        return pd.read_parquet(meta_path)
    with open_binary(meta_path) as f:
        return pd.read_parquet(f)


def _shard_metadata(i: int, df: pd.DataFrame, where: Location) -> pd.DataFrame:
    """``df`` (the metadata of shard ``i``, read from ``where``) with ``shard`` and ``row_in_shard``."""
    n = len(df)
    for col in ("shard", "row_in_shard"):
        if col in df.columns:
            log.warning("%s already has a %r column; it is replaced", where, col)
    df = df.reset_index(drop=True)
    df["shard"] = np.int64(i)
    df["row_in_shard"] = np.arange(n, dtype=np.int64)
    return df


class _Shards:
    """The non-empty shards read so far, with their dimensions checked against the first."""

    def __init__(self) -> None:
        self.images: list[np.ndarray] = []
        self.texts: list[np.ndarray] = []
        self.frames: list[pd.DataFrame] = []
        self.sizes: list[int] = []
        self.ids: list[int] = []
        self.dim: int | None = None
        self.dim_from: Location | None = None
        self.text_dim: int | None = None
        self.ignored: list[str] = []

    def add(self, i: int, img_path: Location, arr: np.ndarray, t_arr: np.ndarray | None,
            text_path: Location | None, meta: pd.DataFrame, meta_from: Location) -> None:
        if self.dim is None:
            self.dim, self.dim_from = int(arr.shape[1]), img_path
        elif arr.shape[1] != self.dim:
            raise EmbeddingError(
                f"{img_path} has dimension {arr.shape[1]} but {self.dim_from} has {self.dim}; all shards "
                "must come from the same model, re-embed the mismatched shard"
            )
        if t_arr is not None:
            if self.text_dim is None:
                self.text_dim = int(t_arr.shape[1])
            elif t_arr.shape[1] != self.text_dim:
                raise EmbeddingError(
                    f"{text_path} has dimension {t_arr.shape[1]} but earlier text shards have "
                    f"{self.text_dim}; re-embed the mismatched shard"
                )
            self.texts.append(np.asarray(t_arr, dtype=np.float32))
        self.images.append(np.asarray(arr, dtype=np.float32))
        self.frames.append(_shard_metadata(i, meta, meta_from))
        self.sizes.append(int(arr.shape[0]))
        self.ids.append(i)


def _read_clip_retrieval(root: Location, shards: _Shards) -> tuple[list[int], Location]:
    """Add the shards of a clip-retrieval folder; ``(skipped shard indices, image folder)``."""
    img, text, meta = list_folder(root)
    shards.ignored = ignored_files(root)
    skipped = []
    for i, img_path in img.items():
        arr, t_arr, meta_path = _open_shard(i, img_path, text, meta)
        if arr.shape[0] == 0:
            skipped.append(i)
            continue
        shards.add(i, img_path, arr, t_arr, text.get(i), _read_metadata(meta_path, int(arr.shape[0])),
                   meta_path if meta_path is not None else img_path)
    return skipped, join(root, "img_emb")


def _read_parquet_files(folder: Location, files: dict[int, str], shards: _Shards) -> list[int]:
    """Add the Parquet shards ``{i: file name}`` of ``folder``; the indices of those with 0 rows."""
    skipped, with_text = [], None
    for i, name in files.items():
        path = join(folder, name)
        arr, t_arr, meta = read_parquet_shard(path)
        if arr.shape[0] == 0:
            skipped.append(i)
            continue
        if with_text is None:
            with_text = (t_arr is not None, path)
        elif with_text[0] != (t_arr is not None):
            has, lacks = (with_text[1], path) if with_text[0] else (path, with_text[1])
            raise EmbeddingError(f"{has} has a text_embedding column but {lacks} has none; every shard "
                                 "needs it, or none (re-export the shards)")
        shards.add(i, path, arr, t_arr, path, meta, path)
    return skipped


def can_memory_map(path: str | Path) -> bool:
    """True for a local clip-retrieval folder (its shards can be memory-mapped and read row by row);
    False for an fsspec URL or Parquet input, which :func:`load_embedding_folder` reads whole."""
    return not is_url(path) and not is_parquet_input(as_location(path))


def load_embedding_folder(path: str | Path) -> EmbeddingSet:
    """Load every shard of a clip-retrieval embedding folder, or of NeMo Curator embedding Parquet.

    Args:
        path: folder holding ``img_emb/`` (required), ``text_emb/`` and ``metadata/`` (optional);
            or a Parquet file / a folder of Parquet files with an ``embedding`` list column
            (:mod:`clipguard.io.nemo`). A local path or an fsspec URL (``s3://``, ``gs://``,
            ``memory://``).

    Returns:
        An :class:`EmbeddingSet` with all non-empty shards concatenated in shard order.

    Raises:
        EmbeddingError: the folder or its image shards are missing; a shard cannot be read or
            is not 2-D float; dimensions differ between shards; a metadata or text shard is
            missing or has a different row count than its image shard; text shards do not
            match the image shards; a Parquet shard lacks its embedding column or holds ragged
            or null embeddings.
        ConfigError: a URL whose protocol package (s3fs, gcsfs) is not installed.
    """
    root: Location = as_location(path)
    shards, files = _Shards(), {}
    if is_parquet_input(root):
        root, files = list_parquet_shards(root)
        skipped, where = _read_parquet_files(root, files, shards), root
    else:
        skipped, where = _read_clip_retrieval(root, shards)
    if skipped:
        log.warning(
            "skipped %d empty embedding shard(s) in %s: %s",
            len(skipped), where, ", ".join(files.get(i) or shard_name("img", i).split("/")[-1] for i in skipped),
        )
    if not shards.images:
        raise EmbeddingError(
            f"every image embedding shard in {where} is empty (0 rows); "
            "nothing to scan, check the embedding step"
        )
    return EmbeddingSet(
        image=np.concatenate(shards.images, axis=0),
        text=np.concatenate(shards.texts, axis=0) if shards.texts else None,
        metadata=pd.concat(shards.frames, ignore_index=True),
        shard_sizes=shards.sizes,
        shard_ids=shards.ids,
        skipped_shards=skipped,
        root=root,
        shard_files=files,
        ignored_files=shards.ignored,
    )
