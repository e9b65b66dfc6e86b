"""Embeddings stored as Parquet files with a list column (NeMo Curator's output), one file per shard.

::

    emb.parquet                  one shard, or
    emb_dir/part_0.parquet       a folder of shards (no img_emb/), in natural name order
    emb_dir/part_1.parquet       (part_10 after part_9)

Columns: ``embedding`` (or NeMo Curator's ``image_embedding``): a list<float> of the same length d on
every row, the image embedding; ``id`` (or ``key``); optional ``text_embedding`` (list<float>, caption
embeddings); any other scalar column is metadata (``caption``, ``poisoned``, ...). Nested columns other
than the embeddings are left out. :func:`clipguard.io.reader.load_embedding_folder` reads these files
into the same :class:`~clipguard.io.reader.EmbeddingSet` as a clip-retrieval folder.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from clipguard.errors import EmbeddingError
from clipguard.utils.fs import Location, basename, is_dir, is_file, is_url, list_dir, natural_key, open_binary, \
    parent

__all__ = ["IMAGE_COLUMNS", "TEXT_COLUMN", "is_parquet_input", "list_parquet_shards", "read_parquet_shard"]

log = logging.getLogger("clipguard")

IMAGE_COLUMNS = ("embedding", "image_embedding")
"""Names of the image-embedding column, the first present wins."""
TEXT_COLUMN = "text_embedding"


def _is_parquet(name: str) -> bool:
    return name.lower().endswith((".parquet", ".pq"))


def is_parquet_input(root: Location) -> bool:
    """True for a Parquet file, or a folder of Parquet files without ``img_emb/``."""
    if _is_parquet(basename(root)) and is_file(root):
        return True
    if not is_dir(root) or "img_emb" in list_dir(root, "directory"):
        return False
    return any(_is_parquet(n) for n in list_dir(root, "file"))


def list_parquet_shards(root: Location) -> tuple[Location, dict[int, str]]:
    """``(folder, {i: file name})``: a single file is shard 0 of its folder; a folder's Parquet files are
    shards 0, 1, ... in natural name order."""
    if _is_parquet(basename(root)) and is_file(root):
        return parent(root), {0: basename(root)}
    names = sorted((n for n in list_dir(root, "file") if _is_parquet(n)), key=natural_key)
    return root, dict(enumerate(names))


def _read_table(path: Location):
    import pyarrow.parquet as pq

    try:
        if not is_url(path):
            return pq.read_table(path)
        with open_binary(path) as f:
            return pq.read_table(f)
    except Exception as e:  # noqa: BLE001 - any read failure becomes one clear message
        raise EmbeddingError(f"cannot read {path}: {type(e).__name__}: {e}; re-export this shard") from None


def _vectors(table, column: str, path: Location) -> np.ndarray:
    """(n, d) float32 of a list<float> column, checked: no null row, one length, floating values."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table.column(column).combine_chunks()
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)
            or pa.types.is_fixed_size_list(col.type)):
        raise EmbeddingError(f"{path}: column {column!r} is {col.type}, expected a list of floats per row; "
                             "re-export the embeddings")
    if not pa.types.is_floating(col.type.value_type):
        raise EmbeddingError(f"{path}: column {column!r} holds {col.type.value_type} values, expected floats; "
                             "re-export the embeddings")
    n = len(col)
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise EmbeddingError(f"{path}: column {column!r} is null in row {row}; every row needs an embedding")
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False) if n else np.zeros(0, np.int64)
    if n and lengths.min() != lengths.max():
        row = int(np.flatnonzero(lengths != lengths[0])[0])
        raise EmbeddingError(f"{path}: column {column!r} is ragged (row 0 has {lengths[0]} values, row {row} "
                             f"has {lengths[row]}); every embedding must have the same length, re-export it")
    d = int(lengths[0]) if n else 0
    values = col.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float32).reshape(n, d)


def _metadata(table, drop: list[str], path: Location) -> pd.DataFrame:
    """The scalar columns (``key`` copied to ``id`` when there is no ``id``)."""
    import pyarrow as pa

    keep = [f.name for f in table.schema if f.name not in drop
            and not (pa.types.is_nested(f.type) or pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type))]
    left = [f.name for f in table.schema if f.name not in drop and f.name not in keep]
    if left:
        log.info("%s: non-scalar column(s) %s left out of the metadata", path, ", ".join(left))
    df = table.select(keep).to_pandas()
    if "id" not in df.columns and "key" in df.columns:
        df.insert(0, "id", df["key"])
    return df.reset_index(drop=True)


def read_parquet_shard(path: Location) -> tuple[np.ndarray, np.ndarray | None, pd.DataFrame]:
    """``(image (n, d) float32, text (n, d_t) float32 or None, metadata (n rows))`` of one Parquet shard.

    Raises:
        EmbeddingError: the file cannot be read; it has no embedding column; an embedding column is not a
            list of floats, has a null row, or is ragged (the message names the file, column and row).
    """
    table = _read_table(path)
    names = table.schema.names
    column = next((c for c in IMAGE_COLUMNS if c in names), None)
    if column is None:
        raise EmbeddingError(f"{path}: no embedding column ({' or '.join(IMAGE_COLUMNS)}; found: "
                             f"{', '.join(names) or 'none'}); an embedding Parquet file needs columns id and "
                             "embedding (a list of floats per row)")
    image = _vectors(table, column, path)
    text = _vectors(table, TEXT_COLUMN, path) if TEXT_COLUMN in names else None
    meta = _metadata(table, [c for c in (*IMAGE_COLUMNS, TEXT_COLUMN) if c in names], path)
    return image, text, meta

