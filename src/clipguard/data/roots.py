"""Where a manifest's images may lie: the dataset root, the roots a user allows, a derived manifest's sources.

A manifest names image files, and clipguard opens them, embeds them and inlines them in reports. A
manifest received from elsewhere must not make it read files the user did not give it
(``../../home/me/photo.jpg``, ``/etc/...``, a symlink that leaves the folder), so a local image path
is resolved (``..`` and symlinks followed) and must lie inside one of the manifest's *roots*:

* the dataset root: the folder of the manifest;
* the folders a user allows (:mod:`clipguard.utils.roots`): :func:`allow_roots` (the CLI's
  ``clipguard --allow-root DIR``, repeatable), the ``CLIPGUARD_ALLOW_ROOTS`` environment variable
  (folders separated by ``os.pathsep``) and the ``allow_roots`` argument of
  :func:`~clipguard.data.manifest.read_manifest` -- absolute paths into a data mount are common;
* for a manifest that clipguard derived from another one (``poison``, ``plant``, ``filter`` write
  rows that still point at the source's images), the roots of that source, named in the sidecar
  ``<manifest>.sources.json`` with the SHA-256 of the source manifest: a source whose bytes no longer
  match (edited since, or a sidecar that was not written by clipguard) gives no root.

A path outside every root raises :class:`OutsideRootError`; the readers count such a row as skipped
(reason "outside the dataset root"), like an unreadable image. fsspec URLs are not local paths and
keep their own rules (a ``tar://member::archive`` reference reads only members of its archive),
except ``file://`` and ``local://`` URLs, which are local paths and confined like them.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable, Sequence
from urllib.parse import unquote, urlparse

from clipguard.errors import ManifestError
from clipguard.utils.fs import Location, is_url
from clipguard.utils.roots import ENV_VAR, allow_roots, user_roots
from clipguard.utils.runrecord import fingerprint_files

__all__ = ["ENV_VAR", "OutsideRootError", "allow_roots", "confine", "dataset_roots", "local_path_of_url",
           "sources_sidecar", "user_roots", "write_sources"]

log = logging.getLogger("clipguard")

_MAX_DEPTH = 8
"""How many derivations deep the sources of a derived manifest are followed."""

_HINT = f"allow its folder with `clipguard --allow-root DIR` or {ENV_VAR}"


class OutsideRootError(ManifestError, PermissionError):
    """An image path that resolves outside every allowed root (its message starts with "outside the
    dataset root"; it is an OSError too, so readers that skip unreadable files skip it)."""


def sources_sidecar(manifest_path: str | os.PathLike) -> Path:
    """``<manifest>.sources.json``: where a derived manifest names the manifests it was derived from."""
    p = Path(manifest_path)
    return p.with_name(p.name + ".sources.json")


def write_sources(manifest_path: str | os.PathLike, sources: Sequence[str | os.PathLike]) -> Path | None:
    """Name the local manifests ``sources`` (with their SHA-256) as the sources of ``manifest_path``, whose
    rows may point at their images; with no source, remove a stale sidecar. Returns the sidecar or None."""
    side = sources_sidecar(manifest_path)
    local = [Path(s) for s in sources if s is not None and not is_url(s) and Path(s).is_file()]
    if not local:
        side.unlink(missing_ok=True)
        return None
    here = Path(manifest_path).resolve().parent
    entries = [{"manifest": os.path.relpath(s.resolve(), here), "sha256": fingerprint_files([s])} for s in local]
    side.write_text(json.dumps({"written_by": "clipguard", "sources": entries}, indent=1))
    return side


def _source_roots(manifest_path: Path, depth: int) -> list[Path]:
    """The roots of the verified sources of ``manifest_path`` (their folders and, recursively, theirs)."""
    side = sources_sidecar(manifest_path)
    if depth >= _MAX_DEPTH or not side.is_file():
        return []
    try:
        entries = json.loads(side.read_text())["sources"]
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("%s: not a sources file written by clipguard; ignored", side)
        return []
    out: list[Path] = []
    for e in entries if isinstance(entries, list) else []:
        try:
            src = (manifest_path.parent / str(e["manifest"])).resolve()
            ok = src.is_file() and fingerprint_files([src]) == e["sha256"]
        except (OSError, KeyError, TypeError):
            ok = False
        if not ok:
            log.warning("%s: source manifest %s is missing or changed since this manifest was derived from it; "
                        "its images are not allowed (%s)", side, e.get("manifest") if isinstance(e, dict) else e, _HINT)
            continue
        out += [src.parent, *_source_roots(src, depth + 1)]
    return out


def dataset_roots(root: Location, manifest_path: Location | None = None,
                  allow: Iterable[str | os.PathLike] = ()) -> tuple[Path, ...]:
    """Every folder a manifest's local images may lie in, resolved: ``root`` (when local), the sources of
    ``manifest_path`` (a derived manifest), ``allow`` and the user's roots (:func:`user_roots`)."""
    out: list[Path] = []
    if not is_url(root):
        out.append(Path(root).resolve())
    if manifest_path is not None and not is_url(manifest_path):
        out += _source_roots(Path(manifest_path).resolve(), 0)
    return tuple(dict.fromkeys([*out, *user_roots(allow)]))


def local_path_of_url(url: str) -> Path | None:
    """The local path a ``file://`` or ``local://`` URL names (None for any other URL, tar references included)."""
    for proto in ("file://", "local://"):
        if url.startswith(proto) and "::" not in url:
            return Path(unquote(urlparse(url).path) if proto == "file://" else url[len(proto):])
    return None


def confine(path: Location, roots: Sequence[Path]) -> Location:
    """``path`` itself when it lies inside one of ``roots`` after resolving ``..`` and symlinks (a URL other
    than ``file://`` passes unchanged).

    Raises:
        OutsideRootError: the path leaves every root (the message names it and how to allow it).
    """
    local = local_path_of_url(path) if is_url(path) else Path(path)
    if local is None:
        return path
    real = local.resolve()
    if any(real.is_relative_to(r) for r in roots):
        return path
    where = f" (resolves to {real})" if real != local.absolute() else ""
    raise OutsideRootError(f"outside the dataset root: {path}{where} is not inside "
                           f"{', '.join(map(str, roots)) or 'an allowed folder'}; {_HINT}")
