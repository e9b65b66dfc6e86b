"""One bad line never refuses a manifest: a CSV line with more fields than the header, a JSON line that is
not an object or names a key twice are left out and counted (``Manifest.read_skips``); bytes in a Parquet
text column are decoded with replacement and counted."""
from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipguard.data.dataset import ImageCaptionDataset, SkipLog
from clipguard.data.manifest import read_manifest
from clipguard.errors import ManifestError


def _csv(tmp_path, text: str | bytes):
    path = tmp_path / "m.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return read_manifest(path)


def test_a_csv_line_with_extra_fields_is_left_out_and_counted(tmp_path):
    m = _csv(tmp_path, 'id,image,caption\na,a.png,one\nb,b.png,a photo, of b\nc,c.png,"two\nlines"\n'
                       'd,d.png,x,y,z\ne,e.png,"quoted, comma"\n')
    assert m.df["id"].tolist() == ["a", "c", "e"]
    assert m.df["caption"].tolist() == ["one", "two\nlines", "quoted, comma"]
    assert [(n, i) for n, i, _ in m.read_skips] == [(3, "b"), (6, "d")]  # file lines (the quoted newline counts)
    assert m.read_skips[0][2].startswith("too many fields: line 3 has 4 fields, the header 3; quote a field")
    assert m.read_counts() == {"rows_decoded_with_replacement": 0, "rows_skipped_when_read": 2,
                               "read_skip_counts": {"too many fields": 2}}


def test_the_first_data_line_with_extra_fields_does_not_shift_the_columns(tmp_path):
    """pandas takes a first data line longer than the header as an index column (every row shifted) or cuts it
    silently; the reader leaves that line out like any other."""
    m = _csv(tmp_path, "id,image,caption\nb,b.png,x,y\na,a.png,hi\nc,c.png,q,r\n")
    assert m.df[["id", "image", "caption"]].values.tolist() == [["a", "a.png", "hi"]]
    assert [i for _, i, _ in m.read_skips] == ["b", "c"]


def test_a_well_formed_csv_takes_no_detour(tmp_path):
    m = _csv(tmp_path, 'id,image,caption,label\na,a.png,"x, y",1\nb,b.png,,2\n')
    assert m.read_skips == () and m.df["caption"].tolist() == ["x, y", ""] and m.df["label"].tolist() == [1, 2]


def test_extra_fields_and_text_that_is_not_utf8_in_one_csv(tmp_path):
    m = _csv(tmp_path, b"id,image,caption\na,a.png,caf\xe9\nb,b.png,x,y\nc,c.png," + b"w" * 200_000 + b"\n")
    assert m.df["id"].tolist() == ["a", "c"] and m.replaced_rows == (0,) and len(m.df["caption"][1]) == 200_000
    assert m.read_counts()["rows_decoded_with_replacement"] == 1 and len(m.read_skips) == 1


def test_jsonl_lines_that_are_no_object_or_name_a_key_twice_are_left_out(tmp_path):
    good = json.dumps({"id": "a", "image": "a.png", "caption": "one"})
    lines = [good, '{"id": "b", "image": "b.png", "caption": "x", "caption": "y"}', "", "[1, 2]",
             '{"id": "c", "image": "c.png", "capt', json.dumps({"id": "d", "image": "d.png", "caption": "two"})]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    m = read_manifest(tmp_path / "m.jsonl")
    assert m.df["id"].tolist() == ["a", "d"]
    assert [(n, i, r.split(":")[0]) for n, i, r in m.read_skips] == [
        (2, "b", "duplicate key"), (4, "", "not a JSON object"), (5, "c", "not a JSON object")]
    assert "names the key 'caption' more than once" in m.read_skips[0][2]
    assert "holds an array, not an object" in m.read_skips[1][2]
    assert m.read_counts()["read_skip_counts"] == {"duplicate key": 1, "not a JSON object": 2}


def test_a_jsonl_file_without_one_object_is_refused_naming_its_first_line(tmp_path):
    (tmp_path / "m.jsonl").write_text("{not json\n[1]\n")
    with pytest.raises(ManifestError, match=r"m.jsonl: line 1 is not a JSON object"):
        read_manifest(tmp_path / "m.jsonl")


def test_parquet_bytes_are_decoded_and_the_replacements_counted(tmp_path):
    table = pa.table({"id": pa.array([b"a", b"b", b"c"], pa.binary()), "image": ["a.png", "b.png", "c.png"],
                      "caption": pa.array([b"caf\xc3\xa9", b"caf\xe9", None], pa.binary())})
    pq.write_table(table, tmp_path / "m.parquet")
    m = read_manifest(tmp_path / "m.parquet")
    assert m.df["id"].tolist() == ["a", "b", "c"]
    assert m.df["caption"].tolist()[:2] == ["café", "caf\ufffd"] and pd.isna(m.df["caption"][2])
    assert m.replaced_rows == (1,) and m.read_counts()["rows_decoded_with_replacement"] == 1


def test_the_lines_left_out_join_a_dataset_skip_log_once(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    m = _csv(tmp_path, "id,image,caption\na,a.png,one\nb,b.png,x,y\n")
    log = SkipLog()
    ImageCaptionDataset(m, skip_log=log)
    assert [e[:2] for e in log.entries] == [(-1, "b")] and log.counts() == {"too many fields": 1}
