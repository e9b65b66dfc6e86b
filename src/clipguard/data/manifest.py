"""Image-caption manifests: CSV, Parquet or JSONL files with one row per pair.

Contract: columns ``id`` (unique), ``image`` (path relative to the manifest's folder, or absolute)
and ``caption``; optional ground-truth columns such as ``poisoned`` (bool), ``trigger`` (str),
``label`` (int class index of a labelled test split).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from clipguard.errors import ManifestError
from clipguard.utils.io import atomic_path

__all__ = ["Manifest", "REQUIRED_COLUMNS", "read_manifest", "write_manifest"]

REQUIRED_COLUMNS = ("id", "image", "caption")
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl"}


def _format_of(path: Path) -> str:
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise ManifestError(
            f"{path}: unknown manifest format {path.suffix!r}; use .csv, .parquet or .jsonl"
        ) from None


@dataclass
class Manifest:
    """A loaded manifest.

    Attributes:
        df: the rows (pandas DataFrame with at least ``id``, ``image``, ``caption``).
        root: the folder image paths are relative to (the manifest's folder).
        path: the manifest file (None if built in memory).
    """

    df: pd.DataFrame
    root: Path
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.df)

    def image_path(self, i: int) -> Path:
        """Absolute path of row ``i``'s image."""
        p = Path(str(self.df["image"].iat[i]))
        return p if p.is_absolute() else self.root / p

    def rows_relative_to(self, out_dir: str | os.PathLike) -> pd.DataFrame:
        """A copy of the rows whose relative image paths point from ``out_dir`` to the same files (for a
        derived manifest written there; absolute paths are kept)."""
        df = self.df.copy()
        rel = os.path.relpath(self.root.resolve(), Path(out_dir).resolve())
        df["image"] = [str(p) if os.path.isabs(str(p)) else os.path.normpath(os.path.join(rel, str(p)))
                       for p in df["image"]]
        return df

    @property
    def has_ground_truth(self) -> bool:
        return "poisoned" in self.df.columns


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read a manifest and check its columns.

    Raises:
        ManifestError: the file is missing, unreadable, or lacks one of ``id``, ``image``,
            ``caption`` (the message names the columns expected and those found).
    """
    path = Path(path)
    if path.is_dir():
        for name in ("manifest.parquet", "manifest.csv", "manifest.jsonl"):
            if (path / name).exists():
                path = path / name
                break
        else:
            raise ManifestError(f"{path}: folder holds no manifest.parquet/.csv/.jsonl; pass the manifest file")
    fmt = _format_of(path)
    if not path.exists():
        raise ManifestError(f"{path}: manifest not found")
    try:
        if fmt == "csv":
            df = pd.read_csv(path, dtype={"id": str, "image": str, "caption": str}, keep_default_na=False)
        elif fmt == "parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_json(path, lines=True, dtype={"id": str})
    except Exception as exc:  # the parsers raise many types; the user needs the file and the cause
        raise ManifestError(f"{path}: cannot be read as {fmt} ({type(exc).__name__}: {exc})") from None
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
    return Manifest(df=df, root=path.parent, path=path)


def write_manifest(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``df`` as CSV, Parquet or JSONL according to the extension of ``path`` (atomically)."""
    path = Path(path)
    fmt = _format_of(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"cannot write {path}: missing column(s) {', '.join(missing)}")
    with atomic_path(path) as tmp:
        if fmt == "csv":
            df.to_csv(tmp, index=False)
        elif fmt == "parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_json(tmp, orient="records", lines=True)
    return path
