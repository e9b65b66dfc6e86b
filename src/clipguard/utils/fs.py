"""Paths that may live elsewhere: local paths, fsspec URLs and members of tar archives, read in one place.

A location is either a local path (a :class:`~pathlib.Path` or a ``str`` without ``://``) or an fsspec
URL (``memory://bucket/m.parquet``, ``s3://bucket/emb``, ``gs://...``, chained URLs such as
``simplecache::s3://...``). Local paths keep their behaviour (``Path`` in, ``Path`` out); URLs stay
strings, because :class:`~pathlib.Path` collapses the ``//`` of ``s3://``.

A member of a tar archive is addressed by fsspec's chained URL ``tar://<member>::<archive>`` (the
archive a local path or a URL; :func:`tar_ref`). Reading one does not scan the archive again: the
offsets of the archive's members are indexed once per process (:func:`scan_tar` records them; a
reference read before its archive was scanned indexes the archive then) and each read is one range
read (``open, seek, read`` locally; ``cat_file(start, end)`` remotely). No file handle is kept open,
so DataLoader worker processes (forked or spawned) read safely side by side. An archive rewritten
after it was indexed must be forgotten (:func:`forget_tar_index`; ``write_webdataset`` does it).

A protocol whose package is not installed (``s3fs`` for ``s3://``, ``gcsfs`` for ``gs://``) is a
one-line :class:`~clipguard.errors.ConfigError` saying which extra to install.
"""
from __future__ import annotations

import io
import os
import posixpath
import re
import tarfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from clipguard.errors import ConfigError, ManifestError
from clipguard.utils.io import atomic_path

__all__ = ["INSTALL_EXTRAS", "Location", "is_url", "as_location", "filesystem", "join", "parent", "basename",
           "is_file", "is_dir", "list_dir", "glob", "open_binary", "open_write", "read_bytes", "exists_many",
           "tar_ref", "split_tar_ref", "scan_tar", "remember_tar_index", "forget_tar_index", "natural_key"]

Location = Path | str
"""A local :class:`~pathlib.Path` or an fsspec URL string."""

INSTALL_EXTRAS: dict[str, tuple[str, str]] = {
    "s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs"),
    "az": ("adlfs", "azure"), "abfs": ("adlfs", "azure"), "abfss": ("adlfs", "azure"),
}
"""``protocol -> (package, clipguard extra)`` named by the error when the package is missing."""

_TAR_PREFIX = "tar://"
_TAR_INDEX: dict[str, dict[str, tuple[int, int]]] = {}
"""``archive -> {member name: (offset of its data, size)}``, per process."""


def is_url(path: Any) -> bool:
    """True for a ``str`` holding an fsspec URL (``proto://...`` or a chained ``a::b`` URL); a Path is never one."""
    return isinstance(path, str) and ("://" in path or "::" in path)


def as_location(path: str | os.PathLike) -> Location:
    """``path`` as a :data:`Location`: URLs stay strings, anything else becomes a Path."""
    return path if is_url(path) else Path(path)


def _protocol(url: str) -> str:
    last = url.split("::")[0]
    return last.split("://", 1)[0] if "://" in last else last


def filesystem(url: str) -> tuple[Any, str]:
    """``(fsspec filesystem, path inside it)`` of a URL.

    Raises:
        ConfigError: the protocol's package is not installed (the message names the extra to install),
            or fsspec does not know the protocol.
    """
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except ImportError:
        proto = _protocol(url)
        package, extra = INSTALL_EXTRAS.get(proto, (f"the fsspec implementation of {proto}://", proto))
        raise ConfigError(f"{url}: reading {proto}:// needs {package}, which is not installed; "
                          f"pip install 'clipguard[{extra}]'") from None
    except ValueError as exc:
        raise ConfigError(f"{url}: {exc}; use a local path or an fsspec URL (s3://, gs://, memory://, ...)") from None


def _split(url: str) -> tuple[str, str]:
    """``(prefix, path)``: everything up to the last ``://`` (or ``::``) and the path after it."""
    m = re.match(r"^(.*(?:://|::))(.*)$", url, flags=re.S)
    return (m.group(1), m.group(2)) if m else ("", url)


def join(root: Location, *parts: str) -> Location:
    """``root / part / ...`` for a Path; the same joined (and ``..`` resolved) inside a URL."""
    if not is_url(root):
        return Path(root).joinpath(*parts)
    prefix, path = _split(str(root))
    joined = posixpath.join(path, *parts)
    return prefix + (posixpath.normpath(joined) if joined else "")


def parent(path: Location) -> Location:
    """The folder holding ``path``."""
    if not is_url(path):
        return Path(path).parent
    prefix, p = _split(str(path))
    return prefix + posixpath.dirname(p.rstrip("/"))


def basename(path: Location) -> str:
    """The last component of ``path``."""
    if not is_url(path):
        return Path(path).name
    return posixpath.basename(_split(str(path))[1].rstrip("/"))


def is_file(path: Location) -> bool:
    """True when ``path`` is an existing file (a tar reference: a member of its archive)."""
    return exists_many([path])[0]


def is_dir(path: Location) -> bool:
    """True when ``path`` is an existing folder."""
    if not is_url(path):
        return Path(path).is_dir()
    fs, p = filesystem(str(path))
    return bool(fs.isdir(p))


def list_dir(folder: Location, kind: str | None = "file") -> list[str]:
    """Names (not paths) of the entries of ``folder`` of ``kind`` (``"file"``, ``"directory"``, None = both),
    sorted; empty when the folder does not exist."""
    if not is_url(folder):
        folder = Path(folder)
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir()
                      if kind is None or (p.is_dir() if kind == "directory" else p.is_file()))
    fs, p = filesystem(str(folder))
    try:
        entries = fs.ls(p, detail=True)
    except FileNotFoundError:
        return []
    base = p.rstrip("/")
    return sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries
                  if (kind is None or e.get("type") == kind) and e["name"].rstrip("/") != base)


def glob(pattern: str) -> list[Location]:
    """The existing paths matching a ``*``/``?``/``[...]`` pattern, sorted (URLs keep the pattern's prefix)."""
    if not is_url(pattern):
        import glob as _glob

        return [Path(p) for p in sorted(_glob.glob(pattern))]
    fs, p = filesystem(pattern)
    prefix, path = _split(pattern)
    root = path[: len(path) - len(path.lstrip("/"))]
    return [prefix + root + m.lstrip("/") for m in sorted(fs.glob(p))]


@contextmanager
def open_binary(path: Location) -> Iterator[IO[bytes]]:
    """A binary file object reading ``path`` (a tar reference yields its member's bytes)."""
    if not is_url(path):
        with open(path, "rb") as f:
            yield f
    elif str(path).startswith(_TAR_PREFIX):
        yield io.BytesIO(read_bytes(path))
    else:
        fs, p = filesystem(str(path))
        with fs.open(p, "rb") as f:
            yield f


@contextmanager
def open_write(path: Location) -> Iterator[IO[bytes]]:
    """A binary file object writing ``path``: atomically for a local file (renamed into place at the end),
    through fsspec for a URL (parent folders created)."""
    if not is_url(path):
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            yield f
        return
    fs, p = filesystem(str(path))
    fs.makedirs(posixpath.dirname(p), exist_ok=True)
    with fs.open(p, "wb") as f:
        yield f


def read_bytes(path: Location, start: int | None = None, end: int | None = None) -> bytes:
    """The bytes of ``path`` (``[start, end)`` when given); a tar reference reads its member."""
    if is_url(path) and str(path).startswith(_TAR_PREFIX):
        archive, member = split_tar_ref(str(path))
        index = _TAR_INDEX.get(archive)
        if index is None or member not in index:
            index = scan_tar(archive)[0]
        if member not in index:
            raise FileNotFoundError(f"{member} is not a file in {archive}")
        offset, size = index[member]
        return read_bytes(archive, offset, offset + size)
    if not is_url(path):
        with open(path, "rb") as f:
            f.seek(start or 0)
            return f.read() if end is None else f.read(end - (start or 0))
    fs, p = filesystem(str(path))
    return fs.cat_file(p, start=start, end=end)


def exists_many(paths: list[Location]) -> list[bool]:
    """Whether each path is an existing file. Local paths are checked one by one; URLs with one listing of
    each folder (not one request per file); tar references against their archive's member index."""
    out = [False] * len(paths)
    by_folder: dict[str, list[int]] = {}
    for j, p in enumerate(paths):
        if not is_url(p):
            out[j] = Path(p).is_file()
        elif str(p).startswith(_TAR_PREFIX):
            archive, member = split_tar_ref(str(p))
            index = _TAR_INDEX.get(archive)
            if index is None:
                try:
                    index = scan_tar(archive)[0]
                except (OSError, ManifestError):  # a missing or broken archive: its members are missing
                    index = _TAR_INDEX[archive] = {}
            out[j] = member in index
        else:
            by_folder.setdefault(str(parent(p)), []).append(j)
    for folder, rows in by_folder.items():
        names = set(list_dir(folder, "file"))
        for j in rows:
            out[j] = basename(paths[j]) in names
    return out


def tar_ref(archive: Location, member: str) -> str:
    """The chained fsspec URL ``tar://<member>::<archive>`` of a member of a tar archive."""
    return f"{_TAR_PREFIX}{member}::{archive}"


def split_tar_ref(ref: str) -> tuple[str, str]:
    """``(archive, member)`` of a reference made by :func:`tar_ref`."""
    member, sep, archive = ref[len(_TAR_PREFIX):].partition("::")
    if not ref.startswith(_TAR_PREFIX) or not sep or not member or not archive:
        raise ConfigError(f"{ref}: not a tar member reference; expected tar://<member>::<archive>")
    return archive, member


def remember_tar_index(archive: Location, index: dict[str, tuple[int, int]]) -> None:
    """Record ``{member: (data offset, size)}`` of ``archive`` so that reading its members needs no scan."""
    _TAR_INDEX[str(archive)] = index


def forget_tar_index(archive: Location | None = None) -> None:
    """Drop the remembered member index of ``archive`` (of every archive when None): call it after
    rewriting an archive that this process has read."""
    if archive is None:
        _TAR_INDEX.clear()
    else:
        _TAR_INDEX.pop(str(archive), None)


def scan_tar(archive: Location, want: Callable[[str], bool] | None = None
             ) -> tuple[dict[str, tuple[int, int]], dict[str, bytes]]:
    """Read the member headers of a tar archive once.

    Args:
        archive: a local path or URL of an uncompressed tar.
        want: members (by name) whose bytes to return as well (small ones: captions, JSON).

    Returns:
        ``(index, contents)``: ``{member: (data offset, size)}`` of its regular files, in archive order
        (also remembered for :func:`read_bytes`), and ``{member: bytes}`` of the wanted ones.

    Raises:
        ManifestError: the archive cannot be read as a tar, or it ends without the end-of-archive block
            (cut off, or garbled after its last member: tarfile would stop there silently); one line
            naming it.
    """
    index: dict[str, tuple[int, int]] = {}
    contents: dict[str, bytes] = {}
    try:
        with open_binary(archive) as f, tarfile.open(fileobj=f, mode="r:") as tf:
            for ti in tf:
                if not ti.isfile():
                    continue
                index[ti.name] = (int(ti.offset_data), int(ti.size))
                if want is not None and want(ti.name):
                    member = tf.extractfile(ti)
                    contents[ti.name] = member.read() if member is not None else b""
            f.seek(tf.offset)  # tarfile stops silently at a cut-off or garbled header: the end blocks tell
            if f.read(512) != bytes(512):
                raise ManifestError(f"{archive}: no end-of-archive block after its {len(index)} member(s) (the "
                                    f"file is cut off or garbled at byte {tf.offset}); re-download or re-create "
                                    "the shard")
    except (tarfile.TarError, EOFError) as exc:
        raise ManifestError(f"{archive}: not a readable tar archive ({type(exc).__name__}: {exc}); an "
                            "uncompressed tar is expected, re-create the shard") from None
    remember_tar_index(archive, index)
    return index, contents


def natural_key(name: str) -> list[Any]:
    """Sort key ordering the digit runs of ``name`` by value (``part_10`` after ``part_9``)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
