"""Image-caption manifests: CSV, Parquet or JSONL files with one row per pair.

Contract: columns ``id`` (unique), ``image`` (path relative to the manifest's folder, or absolute)
and ``caption``; optional ground-truth columns such as ``poisoned`` (bool), ``trigger`` (str),
``label`` (int class index of a labelled test split).

A manifest may live on any fsspec filesystem (``read_manifest("s3://bucket/manifest.parquet")``,
``memory://...``): its relative image paths then resolve inside the same filesystem, next to the
manifest, and :meth:`Manifest.image_path` gives URLs (strings) that
:func:`clipguard.data.dataset.load_rgb` opens. An ``image`` entry may itself be a URL, e.g. a
member of a webdataset tar, ``tar://<member>::<archive>`` (:mod:`clipguard.data.webdataset`).
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from clipguard.errors import ManifestError
from clipguard.utils.fs import Location, as_location, basename, is_dir, is_file, is_url, join, open_binary, \
    open_write, parent
from clipguard.utils.io import atomic_path

__all__ = ["Manifest", "REQUIRED_COLUMNS", "read_manifest", "write_manifest"]

REQUIRED_COLUMNS = ("id", "image", "caption")
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl"}


def _format_of(path: Location) -> str:
    suffix = Path(basename(path)).suffix
    try:
        return FORMATS[suffix.lower()]
    except KeyError:
        raise ManifestError(
            f"{path}: unknown manifest format {suffix!r}; use .csv, .parquet or .jsonl"
        ) from None


@dataclass
class Manifest:
    """A loaded manifest.

    Attributes:
        df: the rows (pandas DataFrame with at least ``id``, ``image``, ``caption``).
        root: the folder image paths are relative to (the manifest's folder): a Path, or an fsspec
            URL string for a manifest read through fsspec.
        path: the manifest file, a Path or URL (None if built in memory or read from tar shards).
    """

    df: pd.DataFrame
    root: Path | str
    path: Path | str | None = None

    def __len__(self) -> int:
        return len(self.df)

    def image_path(self, i: int) -> Path | str:
        """Where row ``i``'s image is: a Path for a local file (absolute, or relative to a local
        ``root``), else a URL string (the entry itself when it is a URL, or joined to a URL ``root``)."""
        entry = str(self.df["image"].iat[i])
        if is_url(entry):
            return entry
        if is_url(self.root):
            return join(self.root, entry)
        p = Path(entry)
        return p if p.is_absolute() else Path(self.root) / p

    def rows_relative_to(self, out_dir: str | os.PathLike) -> pd.DataFrame:
        """A copy of the rows whose relative image paths point from ``out_dir`` to the same files (for a
        derived manifest written there; absolute paths and URLs are kept; with a URL ``root`` every
        path becomes its URL)."""
        df = self.df.copy()
        if is_url(self.root):
            df["image"] = [str(self.image_path(i)) for i in range(len(df))]
            return df
        rel = os.path.relpath(Path(self.root).resolve(), Path(out_dir).resolve())
        df["image"] = [str(p) if os.path.isabs(str(p)) or is_url(str(p))
                       else os.path.normpath(os.path.join(rel, str(p))) for p in df["image"]]
        return df

    @property
    def has_ground_truth(self) -> bool:
        return "poisoned" in self.df.columns


def _find_manifest(path: Location) -> Location:
    """``path``, or the manifest file inside it when it is a folder."""
    if not is_dir(path):
        return path
    for name in ("manifest.parquet", "manifest.csv", "manifest.jsonl"):
        if is_file(join(path, name)):
            return join(path, name)
    raise ManifestError(f"{path}: folder holds no manifest.parquet/.csv/.jsonl; pass the manifest file")


def _parse(src, fmt: str) -> pd.DataFrame:
    if fmt == "csv":
        return pd.read_csv(src, dtype={"id": str, "image": str, "caption": str}, keep_default_na=False)
    if fmt == "parquet":
        return pd.read_parquet(src)
    return pd.read_json(src, lines=True, dtype={"id": str})


def _read_rows(path: Location, fmt: str) -> pd.DataFrame:
    """The rows of the manifest file ``path`` (local, or an fsspec URL read through a file object)."""
    try:
        if not is_url(path):
            return _parse(path, fmt)
        with open_binary(path) as f:
            return _parse(io.BytesIO(f.read()), fmt)
    except Exception as exc:  # the parsers raise many types; the user needs the file and the cause
        raise ManifestError(f"{path}: cannot be read as {fmt} ({type(exc).__name__}: {exc})") from None


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read a manifest and check its columns.

    Args:
        path: the manifest file or the folder holding ``manifest.parquet|.csv|.jsonl``; a local path
            or an fsspec URL (``s3://bucket/manifest.parquet``, ``memory://...``).

    Raises:
        ManifestError: the file is missing, unreadable, or lacks one of ``id``, ``image``,
            ``caption`` (the message names the columns expected and those found).
        ConfigError: a URL whose protocol's package (s3fs, gcsfs) is not installed.
    """
    path = _find_manifest(as_location(path))
    fmt = _format_of(path)
    if not is_file(path):
        raise ManifestError(f"{path}: manifest not found")
    df = _read_rows(path, fmt)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(
            f"{path}: missing column(s) {', '.join(missing)}; a manifest needs columns "
            f"{', '.join(REQUIRED_COLUMNS)} (found: {', '.join(map(str, df.columns)) or 'none'})"
        )
    df = df.reset_index(drop=True)
    df["id"] = df["id"].astype(str)
    dup = df["id"].duplicated()
    if dup.any():
        first = int(dup.to_numpy().nonzero()[0][0])
        raise ManifestError(
            f"{path}: id {df['id'].iat[first]!r} (row {first}) is not unique; ids must be unique"
        )
    return Manifest(df=df, root=parent(path), path=path)


def _write_rows(df: pd.DataFrame, target, fmt: str) -> None:
    if fmt == "csv":
        df.to_csv(target, index=False)
    elif fmt == "parquet":
        df.to_parquet(target, index=False)
    else:
        df.to_json(target, orient="records", lines=True)


def write_manifest(df: pd.DataFrame, path: str | os.PathLike) -> Path | str:
    """Write ``df`` as CSV, Parquet or JSONL according to the extension of ``path`` (atomically for a
    local file; an fsspec URL is written through fsspec). Returns ``path`` (a Path, or the URL)."""
    path = as_location(path)
    fmt = _format_of(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"cannot write {path}: missing column(s) {', '.join(missing)}")
    if is_url(path):
        buf = io.BytesIO() if fmt == "parquet" else io.StringIO()
        _write_rows(df, buf, fmt)
        data = buf.getvalue()
        with open_write(path) as f:
            f.write(data if isinstance(data, bytes) else data.encode("utf-8"))
        return path
    with atomic_path(path) as tmp:
        _write_rows(df, tmp, fmt)
    return path
