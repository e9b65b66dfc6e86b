"""Random access to the rows of an embedding folder without loading it: what a sharded scan's workers read.

:class:`EmbeddingRows` opens every image (and caption) shard of a clip-retrieval folder as a
memory map, numbers the rows of the non-empty shards in shard order (the global rows of
:func:`~clipguard.io.reader.load_embedding_folder`), and reads any set of global rows as one
float32 array (refusing rows that hold NaN or inf, naming their shard file and row). It is cheap
to pickle (it holds paths and sizes; a read opens the maps it needs and drops them), so a
distributor ships it to its workers. Inputs that cannot be memory-mapped (an fsspec URL such as
``s3://`` or ``memory://``, NeMo Curator's embedding Parquet) are read whole
with :func:`~clipguard.io.reader.load_embedding_folder` and served from memory (and then pickled
with their arrays).

Example::

    rows = EmbeddingRows("emb")
    len(rows), rows.dim            # N, d
    x = rows.image([5, 3, 900])    # (3, d) float32, in the order asked
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipguard.errors import EmbeddingError
from clipguard.io.layout import shard_name
from clipguard.io.reader import EmbeddingSet, can_memory_map, ignored_files, list_folder, load_embedding_folder
from clipguard.utils.runrecord import fingerprint_arrays, fingerprint_files

__all__ = ["EmbeddingRows"]

_READ_BLOCK_ROWS = 65_536
"""Rows read through one memory map before it is dropped (bounds the mapped pages held in RSS)."""


class EmbeddingRows:
    """The rows of an embedding folder, read on demand.

    Args:
        root: folder with ``img_emb/`` (required), ``text_emb/`` and ``metadata/``.

    Attributes:
        root: the folder.
        shard_ids: integer index of each non-empty shard, ascending.
        shard_sizes: rows of each of them.
        skipped_shards: indices of the empty shards (no rows).
        offsets: (len(shard_ids) + 1,) global row where each shard starts, then N.
        dim: image embedding dimension d; ``text_dim``: caption dimension, or None.
        has_text: whether the folder has caption embeddings.
        ignored_files: files of the shard folders that are not shards (ignored, with a warning).

    Raises:
        EmbeddingError: as :func:`~clipguard.io.reader.load_embedding_folder` for a malformed
            folder (missing shards or metadata shards, misaligned rows, dimensions that differ
            between shards).
    """

    def __init__(self, root: str | Path) -> None:
        self._set: EmbeddingSet | None = None
        if not can_memory_map(root):
            self._from_set(root)
            return
        self.root = Path(root)
        # absolute paths: a worker process of a cluster may run in another working directory
        img, text, meta = list_folder(self.root.resolve())
        self._img = {i: p for i, p in img.items()}
        self._text = dict(text)
        self._meta = dict(meta)
        self.ignored_files = ignored_files(self.root.resolve())
        sizes, ids, skipped, dims, tdims = [], [], [], {}, {}
        for i, path in img.items():
            arr = _open(path)
            if arr.shape[0] == 0:
                skipped.append(i)
                continue
            if self._meta and i not in self._meta:
                raise EmbeddingError(f"metadata/metadata_{i}.parquet is missing for {path}; re-export the metadata "
                                     "so every image shard has one")
            if i in self._meta and _parquet_rows(self._meta[i]) != arr.shape[0]:
                raise EmbeddingError(f"{self._meta[i]} has {_parquet_rows(self._meta[i])} rows but {path} has "
                                     f"{arr.shape[0]}; metadata must be row-aligned, re-export shard {i}")
            ids.append(i)
            sizes.append(int(arr.shape[0]))
            _same_dim(dims, int(arr.shape[1]), path)
            if self._text:
                t = _open(self._text[i])
                if t.shape[0] != arr.shape[0]:
                    raise EmbeddingError(f"{self._text[i]} has {t.shape[0]} rows but {path} has {arr.shape[0]}; "
                                         f"re-export shard {i} so text and image embeddings are row-aligned")
                _same_dim(tdims, int(t.shape[1]), self._text[i])
        if not ids:
            raise EmbeddingError(f"every image embedding shard in {self.root / 'img_emb'} is empty (0 rows); "
                                 "nothing to scan, check the embedding step")
        self.shard_ids, self.shard_sizes, self.skipped_shards = ids, sizes, skipped
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.dim = next(iter(dims))
        self.text_dim = next(iter(tdims)) if tdims else None
        self.has_text = bool(self._text)

    def _from_set(self, root: Any) -> None:
        """Serve the rows of an input read whole (a URL or Parquet)."""
        es = self._set = load_embedding_folder(root)
        self.root = root
        self._img, self._text, self._meta = {}, {}, {}
        self.shard_ids, self.shard_sizes, self.skipped_shards = list(es.shard_ids), list(es.shard_sizes), list(
            es.skipped_shards)
        self.offsets = np.concatenate([[0], np.cumsum(self.shard_sizes)]).astype(np.int64)
        self.dim = int(es.image.shape[1])
        self.text_dim = None if es.text is None else int(es.text.shape[1])
        self.has_text = es.text is not None
        self.ignored_files = list(es.ignored_files)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _map(self, kind: str, i: int) -> np.ndarray:
        """A fresh memory map of shard ``i`` (not kept: pages a read touched leave this process's
        RSS when the map is dropped, so a scan that reads a 10 GB folder part by part holds only
        the part it reads; the page cache keeps them for the next read)."""
        return _open(self._img[i] if kind == "img" else self._text[i])

    def _read(self, kind: str, rows: Any) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        n = len(self)
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise EmbeddingError(f"row {int(rows.max() if rows.max() >= n else rows.min())} is outside "
                                 f"the {n} rows of {self.root}")
        if self._set is not None:
            arr = self._set.image if kind == "img" else self._set.text
            return self._finite(np.asarray(arr[rows], dtype=np.float32), rows, kind)
        dim = self.dim if kind == "img" else self.text_dim
        out = np.empty((len(rows), dim), dtype=np.float32)
        shard = np.searchsorted(self.offsets, rows, side="right") - 1
        for s in np.unique(shard):
            sel = np.nonzero(shard == s)[0]
            local = rows[sel] - self.offsets[s]
            order = np.argsort(local, kind="stable")  # ascending reads from the memory map
            for c in range(0, len(order), _READ_BLOCK_ROWS):  # a fresh map per block: its pages leave RSS
                block = order[c:c + _READ_BLOCK_ROWS]
                arr = self._map(kind, self.shard_ids[s])
                out[sel[block]] = arr[local[block]]
                del arr  # unmapped here
        return self._finite(out, rows, kind)

    def _finite(self, out: np.ndarray, rows: np.ndarray, kind: str) -> np.ndarray:
        """``out`` (the rows read), unless some hold NaN or inf: then an EmbeddingError naming the first."""
        if np.isfinite(out).all():
            return out
        bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
        raise EmbeddingError(f"{bad.size} of the {len(rows)} rows read contain NaN or inf (first: "
                             f"{self.locate(int(rows[bad[0]]), kind)}); re-embed those samples or drop them "
                             "before scanning")

    def image(self, rows: Any) -> np.ndarray:
        """(len(rows), d) float32 image embeddings of the global ``rows`` (as stored, not normalised; a
        fresh array the caller owns, e.g. to normalise in place)."""
        return self._read("img", rows)

    def text(self, rows: Any) -> np.ndarray:
        """(len(rows), d_t) float32 caption embeddings of the global ``rows``.

        Raises:
            EmbeddingError: the folder has no ``text_emb/``.
        """
        if not self.has_text:
            raise EmbeddingError(f"{self.root} has no caption embeddings (text_emb/); embed with text")
        return self._read("text", rows)

    def metadata(self, columns: list[str]) -> pd.DataFrame:
        """N rows: those of ``columns`` that the metadata has, plus ``shard`` and ``row_in_shard``."""
        if self._set is not None:
            meta = self._set.metadata
            return meta[[c for c in columns if c in meta.columns] + ["shard", "row_in_shard"]].copy()
        frames = []
        for i, size in zip(self.shard_ids, self.shard_sizes):
            path = self._meta.get(i)
            df = pd.DataFrame(index=range(size))
            if path is not None:
                have = _parquet_columns(path)
                cols = [c for c in columns if c in have]
                if cols:
                    df = pd.read_parquet(path, columns=cols).reset_index(drop=True)
            df["shard"] = np.int64(i)
            df["row_in_shard"] = np.arange(size, dtype=np.int64)
            frames.append(df)
        return pd.concat(frames, ignore_index=True)

    def locate(self, row: int, kind: str = "img") -> str:
        """``'emb/img_emb/img_emb_3.npy row 7 (global row 1207)'`` for error messages (``kind="text"``:
        the caption embedding's ``text_emb/text_emb_3.npy``)."""
        if self._set is not None:
            return self._set.locate(int(row), kind)
        s = int(np.searchsorted(self.offsets, row, side="right") - 1)
        return f"{self.root}/{shard_name(kind, self.shard_ids[s])} row {row - self.offsets[s]} (global row {row})"

    def fingerprint(self) -> str:
        """SHA-256 of the data: over the bytes of every shard file (image, caption, metadata) of a
        local folder; over the arrays and metadata of an input read whole."""
        if self._set is not None:
            es = self._set
            meta = es.metadata.drop(columns=["shard", "row_in_shard"])
            return fingerprint_arrays(es.image, *([] if es.text is None else [es.text]),
                                      pd.util.hash_pandas_object(meta, index=False).to_numpy())
        return fingerprint_files(sorted([*self._img.values(), *self._text.values(), *self._meta.values()]))


def _same_dim(seen: dict[int, Path], dim: int, path: Path) -> None:
    """Record ``path``'s dimension in ``seen`` (``{dimension: first shard with it}``); refuse a second one."""
    if seen and dim not in seen:
        first_dim, first = next(iter(seen.items()))
        raise EmbeddingError(f"{path} has dimension {dim} but {first} has {first_dim}; all shards must come from "
                             "the same model, re-embed the mismatched shard")
    seen.setdefault(dim, path)


def _open(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any read failure becomes one clear message
        raise EmbeddingError(f"cannot read {path}: {type(e).__name__}: {e}; re-export this shard") from None
    if arr.ndim == 1 and arr.shape[0] == 0:
        return arr.reshape(0, 0)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
        raise EmbeddingError(f"{path} has shape {arr.shape} and dtype {arr.dtype}, expected 2-D float16 or "
                             "float32 (rows, dimensions); re-export this shard")
    return arr


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


def _parquet_columns(path: Path) -> set[str]:
    import pyarrow.parquet as pq

    return set(pq.ParquetFile(path).schema_arrow.names)

