"""Image-caption manifests: CSV, Parquet or JSONL files with one row per pair.

Contract: columns ``id`` (unique), ``image`` (path relative to the manifest's folder, or absolute)
and ``caption``; optional ground-truth columns such as ``poisoned`` (bool), ``trigger`` (str),
``label`` (class index or class name of a labelled test split).

Local image paths must lie inside the manifest's roots (its folder, the folders a user allows, the
sources of a derived manifest: :mod:`clipguard.data.roots`); :meth:`Manifest.image_path` raises
:class:`~clipguard.data.roots.OutsideRootError` for one that leaves them, and the readers count the row as
skipped. One bad row never refuses a whole manifest: text that is not UTF-8 (a CSV or JSON-lines
file, or a Parquet text column holding bytes) is decoded with U+FFFD replacement characters and the rows
affected are counted (:attr:`Manifest.replaced_rows`); a CSV line with more fields than the header, a
JSON line that is not a JSON object and one that names a key twice are skipped and counted
(:attr:`Manifest.read_skips`, reasons "too many fields", "not a JSON object", "duplicate key"; the readers
of images add them to their ``skipped.csv`` and ``skip_counts``, every command's run record counts them).

A manifest may live on any fsspec filesystem (``read_manifest("s3://bucket/manifest.parquet")``,
``memory://...``): its relative image paths then resolve inside the same filesystem, next to the
manifest, and :meth:`Manifest.image_path` gives URLs (strings) that
:func:`clipguard.data.dataset.load_rgb` opens. An ``image`` entry may itself be a URL, e.g. a
member of a webdataset tar, ``tar://<member>::<archive>`` (:mod:`clipguard.data.webdataset`).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from clipguard.data.roots import confine, dataset_roots, write_sources
from clipguard.errors import ManifestError
from clipguard.utils.fs import Location, as_location, basename, is_dir, is_file, is_url, join, open_binary, \
    open_write, parent
from clipguard.utils.io import atomic_path

__all__ = ["Manifest", "REQUIRED_COLUMNS", "read_manifest", "write_manifest"]

log = logging.getLogger("clipguard")

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
        replaced_rows: rows whose text held bytes that are not UTF-8 (decoded with U+FFFD).
        roots: the folders its local images may lie in, resolved (None: ``root``, the sources of a
            derived manifest and the user's roots, :func:`clipguard.data.roots.dataset_roots`).
        read_skips: ``(line, id, reason)`` of the file's lines left out of ``df`` when it was read (a
            CSV line with more fields than the header, a JSON line that is no JSON object or names a key
            twice); ``line`` counts from 1 (the header is line 1 of a CSV), ``id`` is ``""`` when the
            line has none.
    """

    df: pd.DataFrame
    root: Path | str
    path: Path | str | None = None
    replaced_rows: tuple[int, ...] = ()
    roots: tuple[Path, ...] | None = None
    read_skips: tuple[tuple[int, str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.roots is None:
            self.roots = dataset_roots(self.root, self.path)

    def __len__(self) -> int:
        return len(self.df)

    def image_path(self, i: int) -> Path | str:
        """Where row ``i``'s image is: a Path for a local file (absolute, or relative to a local
        ``root``), else a URL string (the entry itself when it is a URL, or joined to a URL ``root``).

        Raises:
            OutsideRootError: a local path (or ``file://`` URL) that resolves outside :attr:`roots`.
        """
        entry = str(self.df["image"].iat[i])
        if is_url(entry):
            return confine(entry, self.roots)
        if is_url(self.root):
            return join(self.root, entry)
        p = Path(entry)
        return confine(p if p.is_absolute() else Path(self.root) / p, self.roots)

    def read_counts(self) -> dict[str, Any]:
        """What reading the file changed, for a run record: ``{"rows_decoded_with_replacement": n,
        "rows_skipped_when_read": m, "read_skip_counts": {reason: count}}`` (the lines of :attr:`read_skips`,
        by reason: "too many fields", "not a JSON object", "duplicate key")."""
        counts: dict[str, int] = {}
        for _, _, reason in self.read_skips:
            counts[reason.split(":")[0]] = counts.get(reason.split(":")[0], 0) + 1
        return {"rows_decoded_with_replacement": len(self.replaced_rows), "rows_skipped_when_read": len(self.read_skips),
                "read_skip_counts": counts}

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


_TEXT = {"id": str, "image": str, "caption": str}
_TOO_MANY = re.compile(r"Expected \d+ fields in line \d+, saw \d+")
ReadSkip = tuple[int, str, str]
"""``(line, id, reason)`` of a line left out when a manifest file was read."""


class _RaggedCsv(Exception):
    """Some CSV line holds more fields than the header (the file is read again record by record)."""


def _csv_frame(src, errors: str) -> pd.DataFrame:
    """The CSV ``src`` parsed by pandas (``id``, ``image``, ``caption`` as text, empty cells kept as "").

    Raises:
        _RaggedCsv: a line with more fields than the header (pandas would refuse the file, or cut the
            first data line silently when it is that line).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pd.errors.ParserWarning)
        try:
            df = pd.read_csv(src, dtype=_TEXT, keep_default_na=False, encoding_errors=errors, index_col=False)
        except pd.errors.ParserError as exc:
            if _TOO_MANY.search(str(exc)):
                raise _RaggedCsv from None
            raise
    for w in caught:
        if issubclass(w.category, pd.errors.ParserWarning) and "does not match length of data" in str(w.message):
            raise _RaggedCsv
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return df


def _csv_by_record(raw: bytes, errors: str) -> tuple[pd.DataFrame, tuple[ReadSkip, ...]]:
    """The CSV bytes ``raw`` read record by record: each line with more fields than the header is left out
    (a read skip naming its line), the others parsed as :func:`_csv_frame` does."""
    text = raw.decode("utf-8", errors=errors)  # strict: UnicodeDecodeError, and the caller reads with "replace"
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, len(text) + 1))  # the csv module refuses fields over 128 KiB; pandas does not
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header: list[str] | None = None
        keep, skips = [], []
        for fields in reader:
            if not fields:  # a blank line (pandas skips them too)
                continue
            if header is not None and len(fields) > len(header):
                n, at = reader.line_num, header.index("id") if "id" in header else None
                skips.append((n, fields[at] if at is not None else "",
                              f"too many fields: line {n} has {len(fields)} fields, the header {len(header)}; quote "
                              "a field that holds a comma, or remove the extra fields"))
                continue
            header = fields if header is None else header
            keep.append(fields)
    finally:
        csv.field_size_limit(limit)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(keep)
    return _csv_frame(io.StringIO(buf.getvalue()), "strict"), tuple(skips)


class _Pairs(list):
    """The key-value pairs of one JSON object, in their order (a key named twice appears twice)."""


_PAIRS = json.JSONDecoder(object_pairs_hook=_Pairs)
_ID_IN_TEXT = re.compile(r'"id"\s*:\s*"((?:[^"\\]|\\.)*)"')


def _line_fault(line: str) -> tuple[str, str] | None:
    """``(reason key, what)`` when the JSON line ``line`` cannot be a row: not a JSON object (``"not a JSON
    object"``), or an object that names a key twice (``"duplicate key"``: which value is meant cannot be
    told); None for a good object."""
    try:
        obj = json.loads(line)
    except ValueError as exc:
        return "not a JSON object", f"does not parse as JSON ({' '.join(str(exc).split())})"
    if not isinstance(obj, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(obj), "a number")
        return "not a JSON object", f"holds {kind}, not an object"
    if line.count(":") <= len(obj):  # each key-value pair holds a colon: no room for a key named twice
        return None
    seen: set[str] = set()
    for key, _ in _PAIRS.decode(line):
        if key in seen:
            return "duplicate key", f"names the key {key!r} more than once"
        seen.add(key)
    return None


def _line_id(line: str) -> str:
    """The ``id`` a JSON line gives (its last one, as JSON readers take it), found as text when the line does
    not parse; "" when it has none."""
    try:
        obj = _PAIRS.decode(line)
        ids = [v for k, v in obj if k == "id"] if isinstance(obj, _Pairs) else []
    except ValueError:
        ids = _ID_IN_TEXT.findall(line)
    return str(ids[-1]) if ids else ""


_LINE_FIX = {"not a JSON object": "fix or remove that line (a JSON-lines manifest holds one object per line)",
             "duplicate key": "keep one of them"}


def _jsonl_frame(raw: bytes, errors: str) -> tuple[pd.DataFrame, tuple[ReadSkip, ...]]:
    """The JSON-lines bytes ``raw`` parsed by pandas, each line that is not a JSON object, or names a key twice,
    left out (a read skip naming the line). A file with no good line at all is refused (ValueError)."""
    text = raw.decode("utf-8", errors=errors)  # strict: UnicodeDecodeError, and the caller reads with "replace"
    lines = text.split("\n")
    skips, n_good = [], 0
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fault = _line_fault(line)
        if fault is None:
            n_good += 1
            continue
        key, what = fault
        skips.append((n, _line_id(line), f"{key}: line {n} {what}; {_LINE_FIX[key]}"))
    if skips and not n_good:
        raise ValueError("no line of the file is a JSON object")
    if skips:
        drop = {n for n, _, _ in skips}
        text = "\n".join(line for n, line in enumerate(lines, 1) if n not in drop)
    return pd.read_json(io.StringIO(text), lines=True, dtype={"id": str}), tuple(skips)


def _parse(path: Location, raw: bytes | None, fmt: str, errors: str = "strict"
           ) -> tuple[pd.DataFrame, tuple[ReadSkip, ...]]:
    """The rows of the manifest file ``path`` (read from ``raw`` when given) and the lines left out."""
    if fmt == "csv":
        try:
            return _csv_frame(path if raw is None else io.BytesIO(raw), errors), ()
        except _RaggedCsv:
            return _csv_by_record(_raw(path) if raw is None else raw, errors)
    if fmt == "parquet":
        return pd.read_parquet(path if raw is None else io.BytesIO(raw)), ()
    return _jsonl_frame(_raw(path) if raw is None else raw, errors)


def _decode_binary(df: pd.DataFrame, path: Location) -> tuple[pd.DataFrame, tuple[int, ...]]:
    """``df`` with the bytes of its ``id``, ``image`` and ``caption`` columns (a Parquet binary column)
    decoded as UTF-8, U+FFFD replacing what is not; the rows that needed a replacement."""
    bad: set[int] = set()
    for c in REQUIRED_COLUMNS:
        if c not in df.columns or not pd.api.types.is_object_dtype(df[c]):
            continue
        values = df[c].tolist()
        if not any(isinstance(v, (bytes, bytearray)) for v in values):
            continue
        for i, v in enumerate(values):
            if isinstance(v, (bytes, bytearray)):
                try:
                    values[i] = bytes(v).decode("utf-8")
                except UnicodeDecodeError:
                    values[i] = bytes(v).decode("utf-8", errors="replace")
                    bad.add(i)
        log.info("%s: column %r holds bytes; decoded as UTF-8", path, c)
        df[c] = values
    return df, tuple(sorted(bad))


def _replaced(df: pd.DataFrame) -> tuple[int, ...]:
    """Rows holding a U+FFFD replacement character in some text cell."""
    mask = pd.Series(False, index=df.index)
    for c in df.columns:
        mask |= df[c].map(lambda v: isinstance(v, str) and "\ufffd" in v)
    return tuple(int(i) for i in mask.to_numpy().nonzero()[0])


def _bad_json_line(text: str) -> str | None:
    """``"line N is not a JSON object (why)"`` for the first such line of a JSON-lines text, else None."""
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            return f"line {n} is not a JSON object ({exc})"
        if not isinstance(obj, dict):
            return f"line {n} is not a JSON object (a {type(obj).__name__})"
    return None


def _why(path: Location, fmt: str, exc: Exception, raw: bytes | None) -> str:
    """The one-line reason why the manifest file ``path`` (bytes ``raw``, read here when None) cannot be parsed,
    with the fix."""
    if raw is None:
        try:
            raw = _raw(path)
        except OSError:  # unreadable: the parser's own error says why
            raw = b"?"
    if not raw.strip():
        return (f"{path}: the file is empty; a manifest needs a header (or one JSON object per line) with id, image, "
                "caption")
    if fmt == "jsonl":
        bad = _bad_json_line(raw.decode("utf-8", errors="replace"))
        if bad is not None:
            return f"{path}: {bad}; fix or remove that line (a JSON-lines manifest holds one object per line)"
    hint = "; fix that line (a field that holds a comma must be quoted)" if "tokenizing" in str(exc) else ""
    return f"{path}: cannot be read as {fmt} ({type(exc).__name__}: {' '.join(str(exc).split())}){hint}"


def _raw(path: Location) -> bytes:
    with open_binary(path) as f:
        return f.read()


def _read_rows(path: Location, fmt: str) -> tuple[pd.DataFrame, tuple[int, ...], tuple[ReadSkip, ...]]:
    """The rows of the manifest file ``path`` (local, or an fsspec URL read through a file object), the rows
    whose text was not UTF-8 (decoded with replacement characters) and the lines left out (both logged)."""
    raw = None
    try:
        raw = _raw(path) if is_url(path) else None
        try:
            df, skips = _parse(path, raw, fmt)
            replaced: tuple[int, ...] = ()
        except UnicodeDecodeError:
            df, skips = _parse(path, raw, fmt, errors="replace")
            replaced = _replaced(df)
    except Exception as exc:  # the parsers raise many types; the user needs the file and the cause
        raise ManifestError(_why(path, fmt, exc, raw)) from None
    if fmt == "parquet":
        df, replaced = _decode_binary(df, path)
    if replaced:
        log.warning("%s: %d row(s) hold text that is not UTF-8 (rows %s); decoded with U+FFFD replacement "
                    "characters", path, len(replaced),
                    ", ".join(map(str, replaced[:10])) + (", ..." if len(replaced) > 10 else ""))
    for n, id_, reason in skips[:10]:
        log.warning("%s: skipped line %d (id %s): %s", path, n, id_ or "?", reason)
    if len(skips) > 10:
        log.warning("%s: %d more lines skipped", path, len(skips) - 10)
    return df, replaced, skips


def _check_columns(df: pd.DataFrame, path: Location, fmt: str) -> None:
    """Refuse a missing required column or a column named twice (pandas renames a CSV's second ``x`` to ``x.1``)."""
    names = [str(c) for c in df.columns]
    if fmt == "csv" and any(re.fullmatch(r"(.+)\.\d+", c) and re.fullmatch(r"(.+)\.\d+", c).group(1) in names
                            for c in names):
        header = pd.read_csv(io.BytesIO(_raw(path)), header=None, nrows=1, dtype=str, keep_default_na=False,
                             encoding_errors="replace").iloc[0].tolist()
        names = [str(c) for c in header]
    dup = next((c for c in names if names.count(c) > 1), None)
    if dup is not None:
        raise ManifestError(f"{path}: column {dup!r} appears {names.count(dup)} times in the header; each column "
                            "must appear once (rename or drop the copies)")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(
            f"{path}: missing column(s) {', '.join(missing)}; a manifest needs columns "
            f"{', '.join(REQUIRED_COLUMNS)} (found: {', '.join(map(str, df.columns)) or 'none'})"
        )


def read_manifest(path: str | os.PathLike, *, allow_roots: Iterable[str | os.PathLike] = ()) -> Manifest:
    """Read a manifest and check its columns.

    Args:
        path: the manifest file or the folder holding ``manifest.parquet|.csv|.jsonl``; a local path
            or an fsspec URL (``s3://bucket/manifest.parquet``, ``memory://...``).
        allow_roots: folders outside the manifest's own where its local images may lie (added to
            :func:`clipguard.data.roots.user_roots`: ``clipguard --allow-root``, ``CLIPGUARD_ALLOW_ROOTS``).

    Text that is not UTF-8 (CSV, JSON lines, bytes in a Parquet text column) is decoded with U+FFFD
    replacement characters; the rows affected are :attr:`Manifest.replaced_rows` (and logged). A CSV line
    with more fields than the header, or a JSON line that is not a JSON object or names a key twice, is left
    out and listed in :attr:`Manifest.read_skips` (and logged): one bad line does not refuse the file.

    Raises:
        ManifestError: the file is missing, empty or unreadable (a JSON-lines file without one JSON
            object: the first line that is not one), names a column twice, lacks one of ``id``, ``image``, ``caption``
            (the message names the columns expected and those found), or repeats an id.
        ConfigError: a URL whose protocol's package (s3fs, gcsfs) is not installed.
    """
    path = _find_manifest(as_location(path))
    fmt = _format_of(path)
    if not is_file(path):
        raise ManifestError(f"{path}: manifest not found; check the path")
    df, replaced, skips = _read_rows(path, fmt)
    _check_columns(df, path, fmt)
    df = df.reset_index(drop=True)
    df["id"] = df["id"].astype(str)
    if not pd.api.types.is_string_dtype(df["caption"]):  # e.g. a JSON number: text; a null stays missing
        df["caption"] = [None if _missing(v) else str(v) for v in df["caption"]]
    dup = df["id"].duplicated()
    if dup.any():
        first = int(dup.to_numpy().nonzero()[0][0])
        raise ManifestError(
            f"{path}: id {df['id'].iat[first]!r} (row {first}) is not unique; ids must be unique"
        )
    root = parent(path)
    return Manifest(df=df, root=root, path=path, replaced_rows=replaced,
                    roots=dataset_roots(root, path, allow_roots), read_skips=skips)


def _missing(v) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and v != v)


def _mixed_as_text(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with every object column that mixes value types (JSON lines allow a caption ``12345`` beside
    text) as text, missing values kept: Parquet needs one type per column."""
    out = df
    for c in df.columns:
        if df[c].dtype != object:
            continue
        kinds = {type(v) for v in df[c] if not _missing(v)}
        if len(kinds) > 1:
            out = out.copy() if out is df else out
            out[c] = [None if _missing(v) else str(v) for v in df[c]]
    return out


def _write_rows(df: pd.DataFrame, target, fmt: str) -> None:
    if fmt == "csv":
        df.to_csv(target, index=False)
    elif fmt == "parquet":
        _mixed_as_text(df).to_parquet(target, index=False)
    else:
        df.to_json(target, orient="records", lines=True)


def _leaves_folder(images: pd.Series) -> bool:
    """True when some local entry is absolute or climbs out of the manifest's folder (``../``)."""
    return any(not is_url(e) and (os.path.isabs(e) or os.path.normpath(e).split(os.sep)[0] == os.pardir)
               for e in images.astype(str))


def write_manifest(df: pd.DataFrame, path: str | os.PathLike,
                   sources: Sequence[Location | None] = ()) -> Path | str:
    """Write ``df`` as CSV, Parquet or JSONL according to the extension of ``path`` (atomically for a
    local file; an fsspec URL is written through fsspec). Returns ``path`` (a Path, or the URL).

    ``sources``: the manifests ``df`` was derived from (local ones). When rows point out of the folder
    of ``path`` (at a source's images), the sources are named, with their SHA-256, in
    ``<path>.sources.json``, so that reading ``path`` allows their roots (:mod:`clipguard.data.roots`).
    """
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
    write_sources(path, [s for s in sources if s is not None] if _leaves_folder(df["image"]) else [])
    return path
