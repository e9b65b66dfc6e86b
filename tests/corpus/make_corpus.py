"""The bad-input corpus: images, captions and manifests that real datasets hold, written at run time.

Nothing here is committed as a binary: every file is drawn with PIL/NumPy (or written byte by byte)
when :func:`make_corpus` runs. Layout of the folder it fills::

    root/data/                 the dataset root (the folder of its manifests)
        manifest.csv           the good rows, then one row per row-level case (a bad image, a bad
                               caption, a path that escapes the root, a line with more fields than
                               the header); ``label`` holds class names
        manifest.jsonl         the good rows, captions that are not UTF-8, null, a number, a line that
                               names a key twice and a line that is not JSON
        manifest.parquet       the good rows with captions stored as bytes (a binary column), one of
                               them not UTF-8
        classes.json           the class list (``label`` names are mapped through it)
        images/                the images (good ones, then the cases)
        err_*.csv|.jsonl       one manifest per manifest-level case (each must be refused in one line)
    root/outside/              files outside the dataset root, reached by ``../``, absolute paths,
                               a symlink and a file:// URL

Run as a script to write the corpus into a folder and list its cases::

    python tests/corpus/make_corpus.py /tmp/corpus
"""
from __future__ import annotations

import csv
import io
import json
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

__all__ = ["CLASSES", "GOOD_ROWS", "LONG_CAPTION_CHARS", "make_corpus"]

CLASSES = ["red", "green", "blue"]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
GOOD_ROWS = 24
"""Good rows of ``manifest.csv`` (enough for a scan's neighbour search)."""
LONG_CAPTION_CHARS = 100_000
NOT_UTF8 = "@@NOT-UTF8@@"
"""Written as the bytes ``caf\\xe9 \\xff\\xfe`` (Latin-1, not UTF-8) in the manifests."""
_NOT_UTF8_BYTES = b"a caf\xe9 with a \xff\xfe sign"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _declared_png(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` RGB pixels and whose data is a few bytes:
    a decompression bomb as PIL sees it (the size is checked when the file is opened)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _png_chunk(b"IEND", b""))


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _noise(rng: np.random.Generator, size: int = 24) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _good_image(rng: np.random.Generator, colour: str) -> Image.Image:
    a = np.full((24, 24, 3), COLOURS[colour], np.uint8)
    a = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(a)


def _image_cases(images: Path, rng: np.random.Generator) -> dict[str, dict]:
    """Write the image files of the row-level image cases; ``{case: {"image", "expect", "reason"}}``.

    ``expect`` is what a command that decodes the image must do: ``"skip"`` (counted under
    ``reason``) or ``"ok"`` (loaded as an RGB image)."""
    png, jpg, webp = (_encoded(_noise(rng), f) for f in ("PNG", "JPEG", "WEBP"))
    files: dict[str, bytes | Image.Image] = {
        "truncated.png": png[: len(png) // 2], "truncated.jpg": jpg[: len(jpg) // 2],
        "truncated.webp": webp[: len(webp) // 2], "corrupt.png": b"\x89PNG\r\n\x1a\n" + b"not a png at all" * 8,
        "random_bytes.jpg": rng.integers(0, 256, 512, dtype=np.uint8).tobytes(), "zero_bytes.png": b"",
        "bomb.png": _declared_png(40_000, 40_000), "bomb_warning.png": _declared_png(10_000, 10_000),
        "one_pixel.png": Image.new("RGB", (1, 1), (255, 0, 0)),
        "grayscale.png": Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8), "L"),
        "grayscale_alpha.png": Image.new("LA", (24, 24), (128, 100)),
        "cmyk.jpg": Image.new("CMYK", (24, 24), (0, 255, 255, 0)),
        "rgba.png": Image.new("RGBA", (24, 24), (0, 0, 255, 60)),
        "palette.png": _noise(rng).convert("P", palette=Image.Palette.ADAPTIVE, colors=8),
        "sixteen_bit.png": Image.fromarray((np.arange(24 * 24).reshape(24, 24) * 100).astype(np.uint16)),
        "exif_rotated.jpg": Image.new("RGB", (16, 32), (200, 200, 0)),
    }
    for name, content in files.items():
        path = images / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif name == "palette.png":
            content.save(path, transparency=0)
        elif name == "exif_rotated.jpg":
            exif = Image.Exif()
            exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
            content.save(path, exif=exif)
        else:
            content.save(path)
    bad = "unreadable image"
    skip = {"truncated_png": ("truncated.png", bad), "truncated_jpeg": ("truncated.jpg", bad),
            "truncated_webp": ("truncated.webp", bad), "corrupt_png": ("corrupt.png", bad),
            "random_bytes": ("random_bytes.jpg", bad), "zero_byte_file": ("zero_bytes.png", bad),
            "missing_file": ("never_written.png", "missing image"),
            "decompression_bomb": ("bomb.png", "image too large"),
            "decompression_bomb_warning": ("bomb_warning.png", "image too large")}
    ok = {"one_pixel": "one_pixel.png", "grayscale": "grayscale.png", "grayscale_alpha": "grayscale_alpha.png",
          "cmyk": "cmyk.jpg", "rgba": "rgba.png", "palette": "palette.png", "sixteen_bit": "sixteen_bit.png",
          "exif_rotated": "exif_rotated.jpg"}
    out = {case: {"image": f"images/{name}", "expect": "skip", "reason": reason, "kind": "image"}
           for case, (name, reason) in skip.items()}
    out.update({case: {"image": f"images/{name}", "expect": "ok", "kind": "image"} for case, name in ok.items()})
    return out


def _path_cases(root: Path, data: Path, good: str) -> dict[str, dict]:
    """The paths that leave the dataset root (refused unless a root is allowed) and one that does not."""
    outside = root / "outside"
    outside.mkdir(exist_ok=True)
    Image.new("RGB", (24, 24), (255, 0, 255)).save(outside / "secret.png")
    reason = "outside the dataset root"
    out = {"dotdot_escape": {"image": "../outside/secret.png", "expect": "skip", "reason": reason},
           "absolute_outside": {"image": str((outside / "secret.png").resolve()), "expect": "skip", "reason": reason},
           "file_url_outside": {"image": (outside / "secret.png").resolve().as_uri(), "expect": "skip",
                                "reason": reason},
           "absolute_inside": {"image": str((data / good).resolve()), "expect": "ok"}}
    link = data / "images" / "link_out.png"
    try:
        os.symlink(outside / "secret.png", link)
        out["symlink_escape"] = {"image": "images/link_out.png", "expect": "skip", "reason": reason}
    except (OSError, NotImplementedError):  # no symlinks here (Windows without the privilege)
        pass
    for case in out.values():
        case["kind"] = "path"
    return out


def _caption_cases() -> dict[str, dict]:
    """Captions: empty ones are skipped by the commands that pair images with text; the others are read."""
    return {"empty_caption": {"caption": "", "expect": "skip", "reason": "empty caption", "kind": "caption"},
            "blank_caption": {"caption": "   ", "expect": "skip", "reason": "empty caption", "kind": "caption"},
            "not_utf8_caption": {"caption": NOT_UTF8, "expect": "ok", "kind": "caption"},
            "caption_100k_chars": {"caption": ("a red square " * (LONG_CAPTION_CHARS // 13 + 1))[:LONG_CAPTION_CHARS],
                                   "expect": "ok", "kind": "caption"}}


def _write_csv(path: Path, header: list[str], rows: list[list | str]) -> None:
    """A CSV written as bytes, the :data:`NOT_UTF8` marker becoming bytes that are not UTF-8; a row given as
    a string is written as it is (a malformed line)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        if isinstance(row, str):
            buf.write(row + "\n")
        else:
            w.writerow(row)
    path.write_bytes(buf.getvalue().encode("utf-8").replace(NOT_UTF8.encode(), _NOT_UTF8_BYTES))


def _error_manifests(data: Path, good_rows: list[list]) -> dict[str, dict]:
    """One manifest per manifest-level case, each refused with one line holding ``text``."""
    two = [r[:3] for r in good_rows[:2]]
    cases: dict[str, dict] = {}

    def add(case: str, name: str, text: str, content: bytes | None) -> None:
        if content is not None:
            (data / name).write_bytes(content)
        cases[case] = {"manifest": str(data / name), "text": text, "kind": "manifest"}

    add("missing_column", "err_missing_column.csv", "missing column(s) caption",
        "id,image\n" .encode() + b"".join(f"{r[0]},{r[1]}\n".encode() for r in two))
    add("renamed_column", "err_renamed_column.csv", "missing column(s) image",
        b"id,path,caption\n" + b"".join(f"{r[0]},{r[1]},{r[2]}\n".encode() for r in two))
    add("duplicate_column", "err_duplicate_column.csv", "column 'caption' appears 2 times",
        b"id,image,caption,caption\n" + b"".join(f"{r[0]},{r[1]},{r[2]},{r[2]}\n".encode() for r in two))
    add("duplicate_id", "err_duplicate_id.csv", "is not unique",
        b"id,image,caption\n" + b"".join(f"same,{r[1]},{r[2]}\n".encode() for r in two))
    add("jsonl_without_json_object", "err_no_object.jsonl", "line 1 is not a JSON object", b"{not json\n[1, 2]\n")
    add("zero_byte_manifest", "err_empty.csv", "err_empty.csv", b"")
    add("missing_manifest", "err_never_written.csv", "not found", None)
    return cases


def _label_manifests(data: Path, good_rows: list[list]) -> dict[str, dict]:
    """Labelled test manifests ``clipguard eval`` must refuse: a class name not in classes.json, an index
    out of range."""
    out = {}
    for case, bad, text in (("unknown_class_name", "purple", "label 'purple' is not one of the classes"),
                            ("label_index_out_of_range", "7", "label 7 is not a class index")):
        rows = [r[:3] + [r[3]] for r in good_rows[:3]]
        rows[1][3] = bad
        _write_csv(data / f"err_{case}.csv", ["id", "image", "caption", "label"], rows)
        out[case] = {"manifest": str(data / f"err_{case}.csv"), "text": text, "row": f"row 1 (id {rows[1][0]})",
                     "kind": "label"}
    return out


def _line_cases(good_rows: list[list]) -> tuple[dict[str, dict], dict[str, str]]:
    """Lines the manifest reader leaves out (skipped and counted): ``({case: spec}, {case: raw line})``."""
    cases = {"csv_extra_field": {"expect": "skip", "reason": "too many fields", "fmt": "csv"},
             "jsonl_duplicate_key": {"expect": "skip", "reason": "duplicate key", "fmt": "jsonl"},
             "jsonl_line_not_json": {"expect": "skip", "reason": "not a JSON object", "fmt": "jsonl"}}
    image = good_rows[1][1]
    raw = {"csv_extra_field": f"case_csv_extra_field,{image},a photo, of a red star,red",  # unquoted comma: 5 fields
           "jsonl_duplicate_key": f'{{"id": "case_jsonl_duplicate_key", "image": "{image}", "caption": "a red star", '
                                  f'"label": "red", "caption": "a blue star"}}',
           "jsonl_line_not_json": f'{{"id": "case_jsonl_line_not_json", "image": "{image}", "caption": "a red'}
    for case, c in cases.items():
        c.update(id=f"case_{case}", image=image, kind="line")
    return cases, raw


def _write_parquet(data: Path, good_rows: list[list]) -> dict[str, dict]:
    """``manifest.parquet``: the good rows and one case, captions stored as bytes (a binary column)."""
    cases = {"parquet_binary_caption_not_utf8": {"caption": _NOT_UTF8_BYTES, "expect": "ok", "kind": "caption"}}
    rows = [r[:2] + [r[2].encode()] + r[3:] for r in good_rows]
    for case, c in cases.items():
        c.update(id=f"case_{case}", image=good_rows[2][1], label="blue")
        rows.append([c["id"], c["image"], c["caption"], c["label"]])
    pq.write_table(pa.table({name: pa.array([r[j] for r in rows], type=pa.binary() if name == "caption" else
                                            pa.string()) for j, name in enumerate(["id", "image", "caption", "label"])}),
                   data / "manifest.parquet")
    return cases


def make_corpus(root: str | os.PathLike) -> dict:
    """Write the corpus into ``root`` (created) and describe it.

    Returns:
        ``{"root", "data", "outside", "manifest" (the CSV of good rows + row cases), "jsonl", "parquet",
        "classes", "good_ids", "rows": {case: {"id", "image", "caption", "expect", "reason"?, "kind"}},
        "jsonl_rows": {case: ...}, "parquet_rows": {case: ...}, "errors": {case: {"manifest", "text",
        "kind"}}}``: ``rows`` are the row-level cases of ``manifest.csv``, ``jsonl_rows`` those of
        ``manifest.jsonl`` (captions: not UTF-8, null, a number; a line naming a key twice, a line that is
        not JSON) and ``parquet_rows`` those of ``manifest.parquet`` (a binary caption that is not UTF-8),
        each with ``expect`` ``"skip"`` and its counted ``reason``, or ``"ok"``; kind ``"line"`` marks a
        line the manifest reader leaves out. ``errors`` are the manifests every command must refuse with
        one line holding ``text``.
    """
    root = Path(root)
    data = root / "data"
    (data / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    good_rows = []
    for i in range(GOOD_ROWS):
        colour = CLASSES[i % len(CLASSES)]
        _good_image(rng, colour).save(data / "images" / f"good_{i:02d}.png")
        good_rows.append([f"good_{i:02d}", f"images/good_{i:02d}.png", f"a photo of a {colour} star", colour])
    lines, raw = _line_cases(good_rows)
    cases = {**_image_cases(data / "images", rng), **_path_cases(root, data, good_rows[0][1]), **_caption_cases()}
    rows: list[list | str] = list(good_rows)
    for j, (case, c) in enumerate(cases.items()):
        c.update(id=f"case_{case}", image=c.get("image", good_rows[j % GOOD_ROWS][1]),
                 caption=c.get("caption", f"a photo of a {CLASSES[j % 3]} shape"), label=CLASSES[j % 3])
        rows.append([c["id"], c["image"], c["caption"], c["label"]])
        if j == 3:  # the malformed line sits among the other cases
            rows.append(raw["csv_extra_field"])
    cases = {**cases, "csv_extra_field": lines["csv_extra_field"]}
    _write_csv(data / "manifest.csv", ["id", "image", "caption", "label"], rows)
    jsonl_cases = {"jsonl_not_utf8_caption": {"caption": NOT_UTF8, "expect": "ok"},
                   "jsonl_null_caption": {"caption": None, "expect": "skip", "reason": "empty caption"},
                   "jsonl_number_caption": {"caption": 12345, "expect": "ok"}}
    out = [json.dumps(dict(zip(["id", "image", "caption", "label"], r)), ensure_ascii=False) for r in good_rows]
    for case, c in jsonl_cases.items():
        c.update(id=f"case_{case}", image=good_rows[0][1], label="red", kind="caption")
        out.append(json.dumps({k: c[k] for k in ("id", "image", "caption", "label")}, ensure_ascii=False))
        if case == "jsonl_null_caption":
            out.insert(GOOD_ROWS // 2, raw["jsonl_duplicate_key"])
    out.append(raw["jsonl_line_not_json"])  # a last line cut short (a file written halfway)
    jsonl_cases.update({k: v for k, v in lines.items() if v["fmt"] == "jsonl"})
    (data / "manifest.jsonl").write_bytes("\n".join(out).encode("utf-8").replace(NOT_UTF8.encode(), _NOT_UTF8_BYTES)
                                          + b"\n")
    parquet_cases = _write_parquet(data, good_rows)
    (data / "classes.json").write_text(json.dumps({"classes": CLASSES, "templates": ["a photo of a {} star."]}))
    errors = {**_error_manifests(data, good_rows), **_label_manifests(data, good_rows)}
    return {"root": root, "data": data, "outside": root / "outside", "manifest": data / "manifest.csv",
            "jsonl": data / "manifest.jsonl", "parquet": data / "manifest.parquet", "classes": data / "classes.json",
            "good_ids": [r[0] for r in good_rows], "rows": cases, "jsonl_rows": jsonl_cases,
            "parquet_rows": parquet_cases, "errors": errors}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/corpus/make_corpus.py OUT_DIR")
    info = make_corpus(sys.argv[1])
    for name, case in {**info["rows"], **info["jsonl_rows"], **info["parquet_rows"], **info["errors"]}.items():
        print(f"{case['kind']:9s} {name:32s} {case.get('expect', 'error')}")
    print(f"{len(info['rows'])} row cases in {info['manifest']}, {len(info['jsonl_rows'])} in {info['jsonl']}, "
          f"{len(info['parquet_rows'])} in {info['parquet']}, {len(info['errors'])} manifests to refuse")
