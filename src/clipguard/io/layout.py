"""The clip-retrieval folder layout: where every shard of an embedding (or scan) folder lives.

::

    root/
        img_emb/img_emb_{i}.npy          (n_i, d) image embeddings
        text_emb/text_emb_{i}.npy        optional, same shards and rows as img_emb
        metadata/metadata_{i}.parquet    optional, row-aligned with img_emb_{i}.npy
        skipped/skipped_{i}.csv          rows of shard i left out when embedding (clipguard embed)
        scores/scores_{i}.parquet        row-aligned scores of shard i (clipguard scan)

Shards are ordered by their integer index (``img_emb_10`` comes after ``img_emb_9``). ``root`` may be a
local folder or an fsspec URL (``s3://bucket/emb``, ``memory://emb``): :func:`list_shards` then gives URLs.

Example:
    >>> from pathlib import Path
    >>> shard_path(Path("emb"), "img", 3).as_posix()
    'emb/img_emb/img_emb_3.npy'
"""
from __future__ import annotations

import re
from pathlib import Path

from clipguard.utils.fs import Location, is_url, join, list_dir

__all__ = ["SHARD_KINDS", "shard_name", "shard_path", "list_shards", "stray_files"]

SHARD_KINDS: dict[str, tuple[str, str, str]] = {
    "img": ("img_emb", "img_emb_", ".npy"),
    "text": ("text_emb", "text_emb_", ".npy"),
    "meta": ("metadata", "metadata_", ".parquet"),
    "skipped": ("skipped", "skipped_", ".csv"),
    "scores": ("scores", "scores_", ".parquet"),
}
"""``kind -> (sub-folder, file prefix, suffix)``: shard ``i`` of ``kind`` is ``<folder>/<prefix><i><suffix>``."""

_PATTERNS = {kind: re.compile(rf"^{re.escape(prefix)}(\d+){re.escape(suffix)}$")
             for kind, (_, prefix, suffix) in SHARD_KINDS.items()}


def shard_name(kind: str, i: int) -> str:
    """``"img_emb/img_emb_3.npy"`` for ``("img", 3)``: the shard's path relative to the root."""
    folder, prefix, suffix = SHARD_KINDS[kind]
    return f"{folder}/{prefix}{int(i)}{suffix}"


def shard_path(root: str | Path, kind: str, i: int) -> Path:
    """The path of shard ``i`` of ``kind`` (a key of :data:`SHARD_KINDS`) under ``root``."""
    return Path(root) / shard_name(kind, i)


def list_shards(root: str | Path, kind: str) -> dict[int, Location]:
    """``{i: path}`` of the shards of ``kind`` under ``root``, in ascending integer order
    (empty when the sub-folder does not exist); paths are URLs when ``root`` is an fsspec URL."""
    if is_url(root):
        folder: Location = join(root, SHARD_KINDS[kind][0])
        names = list_dir(folder, "file")
    else:
        folder = Path(root) / SHARD_KINDS[kind][0]
        if not folder.is_dir():
            return {}
        names = [p.name for p in folder.iterdir()]
    out: dict[int, Location] = {}
    for name in names:
        m = _PATTERNS[kind].match(name)
        if m:
            out[int(m.group(1))] = join(folder, name)
    return dict(sorted(out.items()))


def stray_files(root: str | Path, kinds: tuple[str, ...] = ("img", "text", "meta")) -> list[str]:
    """Files in the sub-folders of ``kinds`` under ``root`` that are not shards of that kind
    (``img_emb/notes.txt``, ``img_emb/img_emb_3.npy.bak``), relative to ``root`` and sorted. Hidden
    files (``.name``: the temporary files of an atomic write) are not listed."""
    out = []
    for kind in kinds:
        folder_name = SHARD_KINDS[kind][0]
        out += [f"{folder_name}/{name}" for name in list_dir(join(root, folder_name), "file")
                if not name.startswith(".") and not _PATTERNS[kind].match(name)]
    return sorted(out)
