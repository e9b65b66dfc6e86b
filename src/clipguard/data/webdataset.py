"""Webdataset tar shards (the img2dataset output) as a manifest, and a manifest written as tar shards.

A shard is an uncompressed tar whose members are grouped into samples by key: the member's name up to
the first dot of its file name, within its folder (``d/000000003.jpg``, ``d/000000003.txt`` and
``d/000000003.json`` are sample ``d/000000003``). Per sample:

* the image: the first member with extension ``jpg``, ``jpeg``, ``png`` or ``webp``;
* the caption: the ``.txt`` member, else the ``caption`` field of the ``.json`` member;
* the id: the json's ``uid``, ``key`` or ``id`` (the first present), else the sample key;
* ground truth and other fields: the json's scalar fields (``poisoned``, ``label``, ...).

:func:`read_webdataset` reads only the member headers and the small ``.txt``/``.json`` members (one pass
per tar, no image bytes) and returns a :class:`~clipguard.data.manifest.Manifest` whose ``image``
entries are fsspec chained URLs ``tar://<member>::<tar>``: :func:`clipguard.data.dataset.load_rgb`
reads one with a single range read, from the member offsets recorded while listing (so
``clipguard.embed.embed_dataset`` embeds a webdataset as it embeds any manifest). A sample without an
image or caption is kept: its caption is empty, or its image entry names the missing member
(``tar://<key>.{jpg,jpeg,png,webp}::<tar>``), and :class:`~clipguard.data.dataset.ImageCaptionDataset`
skips and counts it like any manifest row.

Shards may be local paths or fsspec URLs (``s3://bucket/shards/{00000..00099}.tar``, ``memory://``).
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
import posixpath
import re
import tarfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from clipguard.data.manifest import Manifest, read_manifest
from clipguard.errors import ConfigError, ManifestError
from clipguard.utils.fs import Location, as_location, basename, exists_many, forget_tar_index, glob, is_dir, \
    is_url, join, list_dir, natural_key, open_write, parent, read_bytes, remember_tar_index, scan_tar, split_tar_ref, \
    tar_ref

__all__ = ["IMAGE_EXTENSIONS", "expand_braces", "read_webdataset", "write_webdataset", "read_source",
           "is_webdataset_source"]

log = logging.getLogger("clipguard")

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
"""Extensions of the image member of a sample (lower case)."""

_ID_FIELDS = ("uid", "key", "id")
_RESERVED = ("id", "image", "caption", "source_shard", "key")
_GLOB_CHARS = re.compile(r"[*?\[]")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


# -- brace patterns -------------------------------------------------------------------------------
def _closing(pattern: str, start: int) -> int:
    """Index of the ``}`` closing the ``{`` at ``start``."""
    depth = 0
    for j in range(start, len(pattern)):
        depth += {"{": 1, "}": -1}.get(pattern[j], 0)
        if depth == 0:
            return j
    raise ConfigError(f"{pattern}: unbalanced '{{' in the shard pattern; close it, e.g. shards/{{00000..00099}}.tar")


def _alternatives(body: str, pattern: str) -> list[str]:
    """The alternatives of one brace: a numeric range (zero padding kept) or a comma list."""
    m = _RANGE.match(body)
    if m:
        lo, hi = m.group(1), m.group(2)
        padded = any(len(t.lstrip("-")) > 1 and t.lstrip("-").startswith("0") for t in (lo, hi))
        width = max(len(lo), len(hi)) if padded else 0
        step = 1 if int(hi) >= int(lo) else -1
        return [str(v).zfill(width) for v in range(int(lo), int(hi) + step, step)]
    parts, depth, cur = [], 0, ""
    for ch in body:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        cur += ch
    parts.append(cur)
    if len(parts) < 2:
        raise ConfigError(f"{pattern}: '{{{body}}}' is neither a range such as {{00000..00099}} nor a list "
                          "such as {a,b}; fix the shard pattern")
    return parts


def _expand(s: str, pattern: str) -> list[str]:
    start = s.find("{")
    if start < 0:
        return [s]
    end = _closing(s, start)
    head, tails = s[:start], _expand(s[end + 1:], pattern)
    return [head + alt + tail for a in _alternatives(s[start + 1:end], pattern)
            for alt in _expand(a, pattern) for tail in tails]


def expand_braces(pattern: str) -> list[str]:
    """The paths a webdataset / img2dataset brace pattern stands for, in pattern order.

    ``{00000..00099}`` is a numeric range (zero-padded bounds keep their width: ``00000``, ``00001``, ...;
    a range may run downwards), ``{a,b}`` a list; several braces multiply, braces may nest; text outside
    braces is kept (``*`` globs are left for the caller).

    Example:
        >>> expand_braces("s/{000..002}.tar")
        ['s/000.tar', 's/001.tar', 's/002.tar']
        >>> expand_braces("{a,b}/{1..2}")
        ['a/1', 'a/2', 'b/1', 'b/2']

    Raises:
        ConfigError: unbalanced braces, or a brace that is neither a range nor a list.
    """
    depth = 0
    for ch in pattern:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            raise ConfigError(f"{pattern}: '}}' without a '{{' in the shard pattern; "
                              "use e.g. shards/{00000..00099}.tar")
    return _expand(pattern, pattern)


# -- listing the tars -----------------------------------------------------------------------------
def _tar_list(source: str | os.PathLike | Iterable[str | os.PathLike]) -> tuple[str, list[Location]]:
    """``(label for messages, the tars)``: patterns expanded and globbed, sorted, each checked to exist."""
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    label = str(source) if isinstance(source, (str, os.PathLike)) else \
        (f"{items[0]} (and {len(items) - 1} more)" if len(items) > 1 else str(items[0]) if items else "[]")
    found: dict[str, Location] = {}
    for item in items:
        for p in expand_braces(str(item)):
            for loc in (glob(p) if _GLOB_CHARS.search(p) else [as_location(p)]):
                loc = loc if is_url(loc) else Path(loc).absolute()  # references must not depend on the cwd
                found[str(loc)] = loc
    tars = sorted(found.values(), key=lambda loc: natural_key(str(loc)))
    if not tars:
        raise ManifestError(f"{label}: no tar file matches; pass a .tar file, a brace pattern such as "
                            "shards/{00000..00099}.tar, or a folder of .tar shards")
    missing = [t for t, ok in zip(tars, exists_many(tars)) if not ok]
    if missing:
        raise ManifestError(f"{label}: {len(missing)} of {len(tars)} tar file(s) not found (first: {missing[0]}); "
                            "check the pattern and the shard numbers")
    return label, tars


# -- reading --------------------------------------------------------------------------------------
def _split_member(name: str) -> tuple[str, str]:
    """``(sample key, extension)`` of a member name (``("d/0003", "jpg")`` for ``d/0003.jpg``)."""
    folder, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return (posixpath.join(folder, stem) if folder else stem), ext.lower()


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _sample_row(archive: Location, s: int, key: str, members: dict[str, str], contents: dict[str, bytes]
                ) -> dict[str, Any]:
    """The manifest row of one sample (members: ``{extension: member name}``)."""
    meta: dict[str, Any] = {}
    if "json" in members:
        try:
            meta = json.loads(contents[members["json"]].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{archive}: member {members['json']} is not valid JSON ({exc}); "
                                "fix or re-create the shard") from None
        if not isinstance(meta, dict):
            raise ManifestError(f"{archive}: member {members['json']} holds a JSON {type(meta).__name__}, "
                                "expected an object; fix or re-create the shard")
    if "txt" in members:
        caption = contents[members["txt"]].decode("utf-8", errors="replace")
    else:
        caption = meta["caption"] if isinstance(meta.get("caption"), str) else ""
    image = next((members[e] for e in members if e in IMAGE_EXTENSIONS), None)
    id_ = next((meta[f] for f in _ID_FIELDS if meta.get(f) is not None), key)
    row = {"id": str(id_),
           "image": tar_ref(archive, image if image else f"{key}.{{{','.join(IMAGE_EXTENSIONS)}}}"),
           "caption": caption, "source_shard": s, "key": key}
    row.update({k: v for k, v in meta.items() if k not in _RESERVED and _scalar(v)})
    return row


def _read_shard(archive: Location, s: int) -> list[dict[str, Any]]:
    """The rows of tar ``s``, in the order its samples first appear."""
    index, contents = scan_tar(archive, want=lambda name: _split_member(name)[1] in ("txt", "json"))
    samples: dict[str, dict[str, str]] = {}
    for name in index:
        key, ext = _split_member(name)
        if not ext or not posixpath.basename(key):
            continue  # no extension, or a hidden file such as ._0001.jpg: not part of a sample
        samples.setdefault(key, {}).setdefault(ext, name)
    rows = [_sample_row(archive, s, key, members, contents) for key, members in samples.items()]
    # keep only the image members' offsets in memory (a third of the index): captions are read already
    remember_tar_index(archive, {m: index[m] for members in samples.values() for e, m in members.items()
                                 if e in IMAGE_EXTENSIONS})
    return rows


def _check_ids(df: pd.DataFrame, tars: list[Location], label: str) -> None:
    dup = df["id"].duplicated(keep=False)
    if dup.any():
        rows = np.flatnonzero(dup.to_numpy())
        id_ = df["id"].iat[rows[0]]
        where = sorted({str(tars[int(df["source_shard"].iat[r])]) for r in rows if df["id"].iat[r] == id_})
        raise ManifestError(f"{label}: id {id_!r} is not unique (samples in {', '.join(where)}); ids must be "
                            "unique: give each sample a distinct key or json uid")


def read_webdataset(pattern_or_paths: str | os.PathLike | Iterable[str | os.PathLike]) -> Manifest:
    """Read webdataset tar shards as a manifest (one row per sample; see the module docstring).

    Args:
        pattern_or_paths: a tar path or URL, a brace pattern (``shards/{00000..00099}.tar``), a glob
            (``shards/*.tar``), or a list of them.

    Returns:
        A :class:`~clipguard.data.manifest.Manifest` with columns ``id``, ``image``
        (``tar://<member>::<tar>``), ``caption``, ``source_shard`` (index of the tar in the expanded,
        sorted list; the rows of one tar are contiguous and ascending), ``key`` (the sample key) and the
        json's other scalar fields. ``root`` is the folder of the first tar; ``path`` is None. A tar with no
        member is accepted (it adds no row; a warning names it).

    Raises:
        ConfigError: a malformed pattern, or a URL whose protocol package is not installed.
        ManifestError: no tar matches, a tar is missing, unreadable or cut off (no end-of-archive block),
            a json member is invalid, the tars hold no sample, or two samples share an id.
    """
    label, tars = _tar_list(pattern_or_paths)
    rows: list[dict[str, Any]] = []
    empty = []
    for s, archive in enumerate(tars):
        found = _read_shard(archive, s)
        rows.extend(found)
        if not found:
            empty.append(str(archive))
    if empty and rows:
        log.warning("%d of the %d tar file(s) hold no samples and add none: %s", len(empty), len(tars),
                    ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else ""))
    if not rows:
        raise ManifestError(f"{label}: the {len(tars)} tar file(s) hold no samples")
    df = pd.DataFrame(rows)
    df["source_shard"] = df["source_shard"].astype(np.int64)
    _check_ids(df, tars, label)
    return Manifest(df=df, root=parent(tars[0]), path=None)


# -- writing --------------------------------------------------------------------------------------
def _add_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode = len(data), 0, 0o644
    tf.addfile(ti, io.BytesIO(data))


def _image_member(path: Location) -> tuple[bytes, str] | None:
    """``(bytes, extension)`` of an image to store, None when it cannot be read; an extension other than
    jpg/jpeg/png/webp is re-encoded as PNG (undecodable bytes are kept, as ``png``)."""
    name = split_tar_ref(str(path))[1] if str(path).startswith("tar://") else basename(path)
    try:
        data = read_bytes(path)
    except (OSError, ManifestError):
        return None
    ext = Path(name).suffix.lower().lstrip(".")
    if ext in IMAGE_EXTENSIONS:
        return data, ext
    try:
        from PIL import Image

        buf = io.BytesIO()
        with Image.open(io.BytesIO(data)) as im:
            im.save(buf, format="PNG")
        return buf.getvalue(), "png"
    except Exception:  # noqa: BLE001 - an undecodable image is kept as is; readers count it unreadable
        return data, "png"


def _json_value(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _write_sample(tf: tarfile.TarFile, manifest: Manifest, i: int, key: str) -> None:
    df = manifest.df
    image = _image_member(manifest.image_path(i))
    if image is None:
        log.warning("row %d (id %s): image %s cannot be read; written without an image", i, df["id"].iat[i],
                    manifest.image_path(i))
    else:
        _add_member(tf, f"{key}.{image[1]}", image[0])
    cap = df["caption"].iat[i]
    if isinstance(cap, str):
        _add_member(tf, f"{key}.txt", cap.encode("utf-8"))
    meta = {"id": str(df["id"].iat[i])}
    for col in df.columns:
        if col not in _RESERVED:
            v = _json_value(df[col].iat[i])
            if _scalar(v):
                meta[str(col)] = v
    _add_member(tf, f"{key}.json", json.dumps(meta, sort_keys=True).encode("utf-8"))


def write_webdataset(manifest: Manifest, out_dir: str | os.PathLike, samples_per_shard: int = 10_000
                     ) -> list[Location]:
    """Write ``manifest`` as webdataset shards ``out_dir/00000.tar``, ``00001.tar``, ...

    Sample ``k`` (the manifest row, zero-padded to 9 digits) holds ``<k>.<jpg|jpeg|png|webp>`` (the image
    file's bytes; another format is re-encoded as PNG), ``<k>.txt`` (the caption, when it is a string)
    and ``<k>.json`` (``id`` and the other scalar columns: ground truth such as ``poisoned``). A row whose
    image cannot be read is written without one (and logged), so reading the shards back skips it as a
    missing image. Tars are reproducible (member times 0). ``out_dir`` may be an fsspec URL.

    Returns:
        The paths (or URLs) of the tars written, in shard order.

    Raises:
        ConfigError: ``samples_per_shard`` is not a positive integer.
    """
    if int(samples_per_shard) != samples_per_shard or samples_per_shard < 1:
        raise ConfigError(f"samples_per_shard must be a positive integer, got {samples_per_shard!r}")
    out = as_location(out_dir)
    n = len(manifest)
    width = max(9, len(str(max(n - 1, 0))))
    written: list[Location] = []
    for s in range(math.ceil(n / samples_per_shard)):
        path = join(out, f"{s:05d}.tar")
        with open_write(path) as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for i in range(s * samples_per_shard, min(n, (s + 1) * samples_per_shard)):
                _write_sample(tf, manifest, i, f"{i:0{width}d}")
        forget_tar_index(path)  # an index read before this rewrite would point into the old bytes
        written.append(path)
    return written


# -- either input ---------------------------------------------------------------------------------
def _tar_folder(source: Location) -> list[Location]:
    """The ``.tar`` files of a folder that holds no manifest file (else empty)."""
    names = list_dir(source, "file")
    if any(n in names for n in ("manifest.parquet", "manifest.csv", "manifest.jsonl")):
        return []
    return [join(source, n) for n in names if n.lower().endswith(".tar")]


def is_webdataset_source(source: str | os.PathLike) -> bool:
    """True for a ``.tar`` path or URL, a brace pattern, or a pattern of ``.tar`` files."""
    s = str(source).rstrip("/")
    return s.lower().endswith(".tar") or ("{" in s and "}" in s)


def read_source(source: str | os.PathLike | list[str | os.PathLike]) -> Manifest:
    """The pairs of a manifest or of webdataset shards, whichever ``source`` names.

    Args:
        source: a manifest file or folder (local or fsspec URL: :func:`~clipguard.data.manifest.read_manifest`);
            a ``.tar`` file, a brace or glob pattern of tars, a list of tars, or a folder holding ``.tar``
            shards and no ``manifest.*`` (:func:`read_webdataset`).

    Raises:
        ManifestError, ConfigError: as the reader chosen.
    """
    if isinstance(source, (list, tuple)) or is_webdataset_source(source):
        return read_webdataset(source)
    loc = as_location(source)
    if is_dir(loc):
        tars = _tar_folder(loc)
        if tars:
            return read_webdataset(tars)
    return read_manifest(loc)
