"""Write the bad-input corpus of embedding folders and webdataset tar shards (issue 15).

Every case is generated here (no binary is committed): ``python tests/corpus/make_embedding_corpus.py OUT``
writes them under ``OUT/emb/<case>/`` (clip-retrieval layout: ``img_emb/img_emb_{i}.npy``,
``text_emb/text_emb_{i}.npy``, ``metadata/metadata_{i}.parquet``) and ``OUT/tar/<case>/`` (webdataset
shards ``000.tar``, ``001.tar``). Arrays are tiny (at most 120 rows of d = 8) so that every case can
go through every command that reads it in seconds.

:data:`EMBEDDING_CASES` and :data:`TAR_CASES` map each case name to one line saying what is wrong
with it; :func:`make_embedding_corpus` writes them all and returns ``{name: folder}``.
"""
from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

__all__ = ["EMBEDDING_CASES", "TAR_CASES", "D", "N", "SHARDS", "make_embedding_corpus", "write_good_folder",
           "write_tar_shards"]

D = 8
"""Embedding dimension of every case."""
N = 120
"""Rows of a good folder (3 shards of 40)."""
SHARDS = 3

EMBEDDING_CASES: dict[str, str] = {
    "good": "a good folder: 3 shards x 40 rows, image + caption embeddings + metadata",
    "nan_image_row": "img_emb_1.npy row 5 is NaN",
    "inf_image_row": "img_emb_2.npy row 7 holds +inf",
    "zero_image_row": "img_emb_0.npy row 3 is all zeros",
    "nan_text_row": "text_emb_1.npy row 2 is NaN (the caption embedding)",
    "text_rows_mismatch": "text_emb_1.npy has 39 rows, img_emb_1.npy 40",
    "metadata_short": "metadata_2.parquet has 38 rows, img_emb_2.npy 40",
    "metadata_missing": "metadata_1.parquet is missing",
    "text_shard_missing": "text_emb_2.npy is missing (text_emb/ has shards 0, 1)",
    "empty_shard": "img_emb_1.npy has 0 rows, between two good shards",
    "all_empty": "every shard has 0 rows",
    "one_row": "one shard of 1 row",
    "fewer_rows_than_k": "12 rows: fewer than the default k (16) neighbours",
    "dim_mismatch": "img_emb_2.npy has dimension 6, the others 8",
    "int_dtype": "img_emb_1.npy holds int64 values",
    "three_d": "img_emb_0.npy has shape (40, 8, 1)",
    "truncated_npy": "img_emb_1.npy is cut off in the middle of its data",
    "stray_file": "img_emb/ also holds notes.txt and img_emb_3.npy.bak (not shards)",
    "identical_rows": "every row of img_emb_0.npy is the same vector (exact duplicates)",
}
"""Embedding-folder cases: name -> what is wrong."""

TAR_CASES: dict[str, str] = {
    "tar_good": "two good tars of 6 samples each",
    "tar_missing_caption": "sample 2 of 000.tar has an image but no .txt and no caption in its .json",
    "tar_missing_image": "sample 4 of 001.tar has a caption but no image member",
    "tar_truncated": "001.tar is cut off in the middle of a member",
    "tar_cut_at_member": "001.tar is cut off at a member boundary (after its first sample, no end-of-archive blocks)",
    "tar_empty": "001.tar is a valid tar with no members",
    "tar_zero_bytes": "001.tar is a 0-byte file",
}
"""Webdataset cases: name -> what is wrong (each folder holds ``000.tar`` and ``001.tar``)."""


# -- embedding folders ----------------------------------------------------------------------------
def _arrays(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """(n, d) clustered image and caption embeddings and their metadata (id, caption: no ground truth, so
    that a scan spends no time on detection metrics)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, d))
    lab = rng.integers(0, 4, n)
    img = (centres[lab] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)
    txt = (centres[lab] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)
    meta = pd.DataFrame({"id": [f"s{j:04d}" for j in range(n)], "caption": [f"a photo of thing {c}" for c in lab]})
    return img, txt, meta


def _write_shard(root: Path, i: int, img: np.ndarray | None, txt: np.ndarray | None,
                 meta: pd.DataFrame | None) -> None:
    for sub, prefix, arr in (("img_emb", "img_emb_", img), ("text_emb", "text_emb_", txt)):
        if arr is not None:
            (root / sub).mkdir(parents=True, exist_ok=True)
            np.save(root / sub / f"{prefix}{i}.npy", arr)
    if meta is not None:
        (root / "metadata").mkdir(parents=True, exist_ok=True)
        meta.reset_index(drop=True).to_parquet(root / "metadata" / f"metadata_{i}.parquet", index=False)


def write_good_folder(root: str | Path, n: int = N, d: int = D, shards: int = SHARDS, seed: int = 0) -> Path:
    """A good folder of ``n`` rows in ``shards`` equal shards (image, caption embeddings, metadata with id
    and caption)."""
    root = Path(root)
    img, txt, meta = _arrays(n, d, seed)
    bounds = np.linspace(0, n, shards + 1).astype(int)
    for i in range(shards):
        sl = slice(bounds[i], bounds[i + 1])
        _write_shard(root, i, img[sl], txt[sl], meta.iloc[sl])
    return root


def _load(root: Path, kind: str, i: int) -> np.ndarray:
    sub = {"img": "img_emb/img_emb_", "text": "text_emb/text_emb_"}[kind]
    return np.load(root / f"{sub}{i}.npy")


def _save(root: Path, kind: str, i: int, arr: np.ndarray) -> None:
    sub = {"img": "img_emb/img_emb_", "text": "text_emb/text_emb_"}[kind]
    np.save(root / f"{sub}{i}.npy", arr)


def _set_row(kind: str, i: int, row: int, value: float) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        arr = _load(root, kind, i)
        arr[row] = value
        _save(root, kind, i, arr)
    return edit


def _drop_rows(kind: str, i: int, keep: int) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        if kind == "meta":
            path = root / "metadata" / f"metadata_{i}.parquet"
            pd.read_parquet(path).iloc[:keep].to_parquet(path, index=False)
        else:
            _save(root, kind, i, _load(root, kind, i)[:keep])
    return edit


def _empty_shard(i: int) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        _save(root, "img", i, np.zeros((0, D), np.float32))
        _save(root, "text", i, np.zeros((0, D), np.float32))
        path = root / "metadata" / f"metadata_{i}.parquet"
        pd.read_parquet(path).iloc[:0].to_parquet(path, index=False)
    return edit


def _all_empty(root: Path) -> None:
    for i in range(SHARDS):
        _empty_shard(i)(root)


def _retype(i: int, arr_of: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        _save(root, "img", i, arr_of(_load(root, "img", i)))
    return edit


def _truncate(root: Path) -> None:
    path = root / "img_emb" / "img_emb_1.npy"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _stray(root: Path) -> None:
    (root / "img_emb" / "notes.txt").write_text("not a shard\n")
    (root / "img_emb" / "img_emb_3.npy.bak").write_bytes((root / "img_emb" / "img_emb_0.npy").read_bytes())


def _identical(root: Path) -> None:
    arr = _load(root, "img", 0)
    _save(root, "img", 0, np.repeat(arr[:1], len(arr), axis=0))


_EDITS: dict[str, Callable[[Path], None]] = {
    "good": lambda root: None,
    "nan_image_row": _set_row("img", 1, 5, np.nan),
    "inf_image_row": _set_row("img", 2, 7, np.inf),
    "zero_image_row": _set_row("img", 0, 3, 0.0),
    "nan_text_row": _set_row("text", 1, 2, np.nan),
    "text_rows_mismatch": _drop_rows("text", 1, 39),
    "metadata_short": _drop_rows("meta", 2, 38),
    "metadata_missing": lambda root: (root / "metadata" / "metadata_1.parquet").unlink(),
    "text_shard_missing": lambda root: (root / "text_emb" / "text_emb_2.npy").unlink(),
    "empty_shard": _empty_shard(1),
    "all_empty": _all_empty,
    "dim_mismatch": _retype(2, lambda a: a[:, :6].copy()),
    "int_dtype": _retype(1, lambda a: (a * 100).astype(np.int64)),
    "three_d": _retype(0, lambda a: a[:, :, None].copy()),
    "truncated_npy": _truncate,
    "stray_file": _stray,
    "identical_rows": _identical,
}


def _write_embedding_case(root: Path, name: str) -> Path:
    if name == "one_row":
        return write_good_folder(root, n=1, shards=1)
    if name == "fewer_rows_than_k":
        return write_good_folder(root, n=12, shards=2)
    write_good_folder(root)
    _EDITS[name](root)
    return root


# -- webdataset tars -------------------------------------------------------------------------------
def _png(seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime = len(data), 0
    tf.addfile(ti, io.BytesIO(data))


def write_tar_shards(folder: str | Path, n_per_shard: int = 6, *, no_caption: tuple[int, int] | None = None,
                     no_image: tuple[int, int] | None = None) -> list[Path]:
    """``folder/000.tar`` and ``001.tar``, ``n_per_shard`` samples each (``<key>.png``, ``.txt``, ``.json``
    with ``uid``); ``(shard, sample)`` given as ``no_caption`` / ``no_image`` lacks that member."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(2):
        path = folder / f"{s:03d}.tar"
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
            for j in range(n_per_shard):
                key, k = f"{s:03d}{j:06d}", s * n_per_shard + j
                if no_image != (s, j):
                    _add(tf, f"{key}.png", _png(k))
                if no_caption != (s, j):
                    _add(tf, f"{key}.txt", f"a photo of thing {k % 3}".encode())
                _add(tf, f"{key}.json", json.dumps({"uid": f"u{k:04d}"}).encode())
        paths.append(path)
    return paths


def _write_tar_case(folder: Path, name: str) -> Path:
    if name == "tar_missing_caption":
        write_tar_shards(folder, no_caption=(0, 2))
    elif name == "tar_missing_image":
        write_tar_shards(folder, no_image=(1, 4))
    else:
        write_tar_shards(folder)
    second = folder / "001.tar"
    if name == "tar_truncated":
        data = second.read_bytes()
        second.write_bytes(data[: 512 * 3 + 100])  # inside the data of the first member
    elif name == "tar_cut_at_member":
        with tarfile.open(second) as tf:
            cut = tf.getmembers()[3].offset  # the header of the second sample's first member
        second.write_bytes(second.read_bytes()[:cut])
    elif name == "tar_empty":
        with tarfile.open(second, "w"):
            pass
    elif name == "tar_zero_bytes":
        second.write_bytes(b"")
    return folder


def make_embedding_corpus(out: str | Path, names: list[str] | None = None) -> dict[str, Path]:
    """Write every case (or those in ``names``) under ``out``: ``{case: folder}``.

    Embedding cases go to ``out/emb/<case>`` (a clip-retrieval folder), tar cases to ``out/tar/<case>``
    (a folder with ``000.tar`` and ``001.tar``). Each folder is rewritten from scratch.
    """
    import shutil

    out = Path(out)
    written = {}
    for name in names or [*EMBEDDING_CASES, *TAR_CASES]:
        if name not in EMBEDDING_CASES and name not in TAR_CASES:
            raise KeyError(f"unknown case {name!r}")
        folder = out / ("tar" if name in TAR_CASES else "emb") / name
        shutil.rmtree(folder, ignore_errors=True)
        written[name] = _write_tar_case(folder, name) if name in TAR_CASES else _write_embedding_case(folder, name)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/corpus/make_embedding_corpus.py OUT")
    for case, path in make_embedding_corpus(sys.argv[1]).items():
        print(f"{case:22s} {path}  ({(EMBEDDING_CASES | TAR_CASES)[case]})")
