"""Webdataset tar shards as a manifest (clipguard.data.webdataset): patterns, reading, writing, bad shards."""
import io
import json
import tarfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import clipguard.data.webdataset as wds
import clipguard.utils.fs as cfs
from clipguard.data import ImageCaptionDataset, expand_braces, read_manifest, read_source, read_webdataset, \
    write_manifest, write_webdataset
from clipguard.data.dataset import load_rgb
from clipguard.errors import ConfigError, ManifestError


def _images(root, n, seed=0):
    """A manifest of ``n`` random PNGs with ground truth (poisoned, label, trigger)."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
    df = pd.DataFrame({"id": [f"x{i}" for i in range(n)], "image": [f"img/{i}.png" for i in range(n)],
                       "caption": [f"a photo of thing {i}" for i in range(n)],
                       "poisoned": np.arange(n) % 3 == 0, "label": np.arange(n) % 4,
                       "trigger": ["patch" if i % 3 == 0 else "" for i in range(n)]})
    return read_manifest(write_manifest(df, root / "manifest.parquet"))


def _tar(path, members):
    """Write a tar of ``{name: bytes}`` (in the order given)."""
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


def _png(seed=0):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("pattern, expected", [
    ("shards/{00000..00002}.tar", ["shards/00000.tar", "shards/00001.tar", "shards/00002.tar"]),
    ("s/{8..11}.tar", ["s/8.tar", "s/9.tar", "s/10.tar", "s/11.tar"]),
    ("s/{008..011}.tar", ["s/008.tar", "s/009.tar", "s/010.tar", "s/011.tar"]),
    ("s/{2..0}", ["s/2", "s/1", "s/0"]),
    ("{a,b}/{0..1}.tar", ["a/0.tar", "a/1.tar", "b/0.tar", "b/1.tar"]),
    ("x{a,{b,c}d}", ["xa", "xbd", "xcd"]),
    ("s3://bucket/{a,}x", ["s3://bucket/ax", "s3://bucket/x"]),
    ("plain/00000.tar", ["plain/00000.tar"]),
])
def test_expand_braces(pattern, expected):
    assert expand_braces(pattern) == expected


@pytest.mark.parametrize("pattern, match", [
    ("s/{00000..00002.tar", "unbalanced"), ("s/00000}.tar", "without a"), ("s/{abc}.tar", "neither a range"),
])
def test_malformed_pattern_is_one_config_error(pattern, match):
    with pytest.raises(ConfigError, match=match) as exc:
        expand_braces(pattern)
    assert "\n" not in str(exc.value) and pattern in str(exc.value)


def test_round_trip_keeps_ids_captions_ground_truth_and_image_bytes(tmp_path):
    m = _images(tmp_path / "src", 7)
    tars = write_webdataset(m, tmp_path / "wds", samples_per_shard=3)
    assert [t.name for t in tars] == ["00000.tar", "00001.tar", "00002.tar"]
    w = read_webdataset(str(tmp_path / "wds" / "{00000..00002}.tar"))
    assert w.path is None and len(w) == 7
    assert w.df["id"].tolist() == m.df["id"].tolist()
    assert w.df["caption"].tolist() == m.df["caption"].tolist()
    assert w.df["poisoned"].tolist() == m.df["poisoned"].tolist()
    assert w.df["label"].tolist() == m.df["label"].tolist()
    assert w.df["trigger"].tolist() == m.df["trigger"].tolist()
    assert w.df["source_shard"].tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert w.df["image"].iat[4] == f"tar://000000004.png::{tmp_path / 'wds' / '00001.tar'}"
    for i in range(7):
        assert cfs.read_bytes(w.image_path(i)) == (tmp_path / "src" / "img" / f"{i}.png").read_bytes()
    # rewriting a tar this process has read invalidates its member index
    write_webdataset(_images(tmp_path / "other", 7, seed=1), tmp_path / "wds", samples_per_shard=3)
    assert cfs.read_bytes(w.image_path(0)) == (tmp_path / "other" / "img" / "0.png").read_bytes()


def test_samples_are_grouped_by_key_within_their_folder_and_json_fields_are_read(tmp_path):
    _tar(tmp_path / "a.tar", {
        "d1/0001.jpg": _png(1), "d1/0001.txt": b"a cat", "d1/0001.json": json.dumps(
            {"uid": "u-1", "key": "0001", "poisoned": True, "label": 2, "exif": {"x": 1}}).encode(),
        "d2/0001.webp": _png(2), "d2/0001.json": json.dumps({"caption": "a dog", "poisoned": False}).encode(),
        "d2/0002.txt": b"no image here", "README": b"not a sample", "d2/._0003.jpg": b"mac junk"})
    w = read_webdataset(tmp_path / "a.tar")
    assert w.df["key"].tolist() == ["d1/0001", "d2/0001", "d2/0002"]
    assert w.df["id"].tolist() == ["u-1", "d2/0001", "d2/0002"]  # json uid, else the key
    assert w.df["caption"].tolist() == ["a cat", "a dog", "no image here"]  # .txt, else json caption
    assert w.df["poisoned"].tolist()[:2] == [True, False] and "exif" not in w.df.columns
    assert w.df["image"].iat[1].startswith("tar://d2/0001.webp::")
    ds = ImageCaptionDataset(w)
    assert ds.rows == [0, 1]
    assert ds.skip_log.entries[0][:2] == (2, "d2/0002")
    assert ds.skip_log.entries[0][2].startswith("missing image: tar://d2/0002.{jpg,jpeg,png,webp}::")
    assert load_rgb(w.image_path(0)).size == (8, 8)


def test_a_sample_without_caption_or_image_is_kept_and_skipped_with_its_reason(tmp_path):
    _tar(tmp_path / "00000.tar", {"k1.png": _png(1), "k1.txt": b"a cat",
                                  "k2.png": _png(2), "k2.json": b'{"poisoned": true}',
                                  "k3.txt": b"a caption without image", "k4.png": b"not a png", "k4.txt": b"x"})
    w = read_source(str(tmp_path / "00000.tar"))
    assert w.df["id"].tolist() == ["k1", "k2", "k3", "k4"] and w.df["caption"].iat[1] == ""
    ds = ImageCaptionDataset(w)
    assert ds.skip_log.counts() == {"empty caption": 1, "missing image": 1}
    assert ds.rows == [0, 3]
    item = ds[1]
    assert item["error"].startswith("unreadable image:") and "k4.png::" in item["error"]


def test_reading_images_does_not_rescan_the_tar(tmp_path, monkeypatch):
    m = _images(tmp_path / "src", 6)
    write_webdataset(m, tmp_path / "wds", samples_per_shard=3)
    calls = []
    real = cfs.scan_tar
    counted = lambda *a, **k: calls.append(a[0]) or real(*a, **k)  # noqa: E731
    monkeypatch.setattr(cfs, "scan_tar", counted)
    monkeypatch.setattr(wds, "scan_tar", counted)
    w = read_webdataset(str(tmp_path / "wds" / "*.tar"))
    for i in range(len(w)):
        load_rgb(w.image_path(i))
    ImageCaptionDataset(w)
    assert len(calls) == 2  # one pass per tar while listing, none per image
    cfs.forget_tar_index()  # a new process (a spawned DataLoader worker): one scan per tar, then none
    for i in range(len(w)):
        load_rgb(w.image_path(i))
    assert len(calls) == 4


def test_read_source_chooses_the_reader(tmp_path, monkeypatch):
    m = _images(tmp_path / "src", 4)
    write_webdataset(m, tmp_path / "wds", samples_per_shard=2)
    monkeypatch.chdir(tmp_path)
    rel = read_source("wds/{00000..00001}.tar")  # a relative pattern gives references that do not need the cwd
    assert rel.df["image"].iat[3] == f"tar://000000003.png::{tmp_path / 'wds' / '00001.tar'}"
    assert read_source(tmp_path / "src").path == tmp_path / "src" / "manifest.parquet"
    assert read_source(str(tmp_path / "src" / "manifest.parquet")).df["id"].tolist() == ["x0", "x1", "x2", "x3"]
    for source in (tmp_path / "wds", str(tmp_path / "wds" / "{00000..00001}.tar"),
                   [tmp_path / "wds" / "00001.tar", tmp_path / "wds" / "00000.tar"]):
        w = read_source(source)
        assert w.df["id"].tolist() == ["x0", "x1", "x2", "x3"] and w.df["source_shard"].tolist() == [0, 0, 1, 1]


def test_missing_tars_and_bad_tars_are_one_line_errors(tmp_path):
    _tar(tmp_path / "00000.tar", {"k.png": _png(), "k.txt": b"a cat"})
    with pytest.raises(ManifestError, match=r"1 of 2 tar file\(s\) not found \(first: .*00001.tar\)") as exc:
        read_webdataset(str(tmp_path / "{00000..00001}.tar"))
    assert "{00000..00001}" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(ManifestError, match="no tar file matches"):
        read_webdataset(str(tmp_path / "nothing-*.tar"))
    (tmp_path / "bad.tar").write_bytes(b"this is not a tar archive" * 40)
    with pytest.raises(ManifestError, match="bad.tar: not a readable tar archive"):
        read_webdataset(tmp_path / "bad.tar")
    _tar(tmp_path / "json.tar", {"k.png": _png(), "k.json": b"{not json"})
    with pytest.raises(ManifestError, match="member k.json is not valid JSON"):
        read_webdataset(tmp_path / "json.tar")
    _tar(tmp_path / "dup.tar", {"k.png": _png(), "k.txt": b"a cat"})
    with pytest.raises(ManifestError, match="id 'k' is not unique .*00000.tar, .*dup.tar"):
        read_webdataset([tmp_path / "00000.tar", tmp_path / "dup.tar"])
    with pytest.raises(ConfigError, match="samples_per_shard"):
        write_webdataset(read_webdataset(tmp_path / "00000.tar"), tmp_path / "out", samples_per_shard=0)
