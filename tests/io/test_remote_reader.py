"""Embedding folders read through fsspec, and NeMo Curator embedding Parquet, give the same scans."""

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipguard.detect import Scan, run_scan
from clipguard.errors import EmbeddingError
from clipguard.io import load_embedding_folder
from clipguard.io.reader import can_memory_map
from detect_helpers import pair_folder


def _scores(source):
    return Scan.from_folder(source).find_suspects(k=8, suspect_share=0.05).scores


def _to_nemo(emb, out, text=True, names=("part_0.parquet", "part_1.parquet", "part_2.parquet")):
    """The clip-retrieval folder ``emb`` as NeMo-style Parquet shards (id, embedding, caption, poisoned)."""
    out.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        meta = pd.read_parquet(emb / "metadata" / f"metadata_{i}.parquet")
        cols = {"id": meta["id"].tolist(),
                "embedding": pa.array(list(np.load(emb / "img_emb" / f"img_emb_{i}.npy").astype(np.float32)),
                                      type=pa.list_(pa.float32())),
                "caption": meta["caption"].tolist(), "poisoned": meta["poisoned"].tolist()}
        if text:
            cols["text_embedding"] = pa.array(list(np.load(emb / "text_emb" / f"text_emb_{i}.npy").astype(
                np.float32)), type=pa.list_(pa.float32()))
        pq.write_table(pa.table(cols), out / name)
    return out


def test_a_memory_folder_scans_like_the_local_folder(tmp_path, memory_root):
    pair_folder(tmp_path / "emb")
    fsspec.filesystem("memory").put(str(tmp_path / "emb") + "/", f"{memory_root}/emb/", recursive=True)
    assert can_memory_map(tmp_path / "emb") and not can_memory_map(f"{memory_root}/emb")
    local, remote = load_embedding_folder(tmp_path / "emb"), load_embedding_folder(f"{memory_root}/emb")
    assert remote.root == f"{memory_root}/emb" and remote.skipped_shards == local.skipped_shards == [2]
    assert np.array_equal(remote.image, local.image) and np.array_equal(remote.text, local.text)
    pd.testing.assert_frame_equal(remote.metadata, local.metadata)
    pd.testing.assert_frame_equal(_scores(f"{memory_root}/emb"), _scores(tmp_path / "emb"))
    res = run_scan(f"{memory_root}/emb", tmp_path / "scan", detectors=["kdist"], k=8)
    assert len(res.scores) == 220 and [p.name for p in res.score_paths] == ["scores_0.parquet", "scores_1.parquet",
                                                                             "scores_2.parquet"]


def test_nemo_parquet_scans_like_the_clip_retrieval_folder(tmp_path):
    pair_folder(tmp_path / "emb", sizes=(120, 100, 0))
    # shards in natural name order: part_9 before part_10 (the empty one, skipped)
    nemo = _to_nemo(tmp_path / "emb", tmp_path / "nemo", names=("part_8.parquet", "part_9.parquet",
                                                                 "part_10.parquet"))
    assert not can_memory_map(nemo) and not can_memory_map(nemo / "part_9.parquet")
    es = load_embedding_folder(nemo)
    assert es.shard_ids == [0, 1] and es.skipped_shards == [2] and es.shard_sizes == [120, 100]
    assert es.locate(121) == "part_9.parquet row 1 (global row 121)"
    assert {"id", "caption", "poisoned", "shard", "row_in_shard"} == set(es.metadata.columns)
    pd.testing.assert_frame_equal(_scores(nemo), _scores(tmp_path / "emb"))
    # one file: shard 0 of its folder
    single = load_embedding_folder(nemo / "part_9.parquet")
    assert single.root == nemo and len(single) == 100 and single.metadata["id"].iat[0] == "s1_0"
    # without caption embeddings: the image-only detectors give the same scores
    image_only = _to_nemo(tmp_path / "emb", tmp_path / "nemo_img", text=False)
    a = Scan.from_folder(image_only).find_suspects(["kdist", "lid"], k=8).scores
    b = Scan.from_folder(tmp_path / "emb").find_suspects(["kdist", "lid"], k=8).scores
    pd.testing.assert_frame_equal(a, b)


def test_nemo_parquet_through_fsspec_and_with_curator_column_names(tmp_path, memory_root):
    pq.write_table(pa.table({"key": ["a", "b", "c"], "image_embedding": [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]],
                             "url": ["u1", "u2", "u3"], "extra": [[1], [2], [3]]}),
                   tmp_path / "emb.parquet")
    fsspec.filesystem("memory").put(str(tmp_path / "emb.parquet"), f"{memory_root}/n/00010.parquet")
    for source in (tmp_path / "emb.parquet", f"{memory_root}/n"):
        es = load_embedding_folder(source)
        assert es.image.dtype == np.float32 and es.image.shape == (3, 2) and es.text is None
        assert es.metadata["id"].tolist() == ["a", "b", "c"] and "extra" not in es.metadata.columns


@pytest.mark.parametrize("table, match", [
    ({"id": ["a", "b"], "embedding": [[1.0, 2.0], [1.0]]}, r"column 'embedding' is ragged \(row 0 has 2 values, "
                                                           r"row 1 has 1\)"),
    ({"id": ["a", "b"], "vector": [[1.0], [2.0]]}, r"no embedding column \(embedding or image_embedding; "
                                                  r"found: id, vector\)"),
    ({"id": ["a", "b"], "embedding": [[1.0], None]}, "column 'embedding' is null in row 1"),
    ({"id": ["a", "b"], "embedding": [[1], [2]]}, "holds int64 values, expected floats"),
    ({"id": ["a", "b"], "embedding": [1.0, 2.0]}, "is double, expected a list of floats"),
])
def test_bad_nemo_parquet_is_one_line_naming_the_file(tmp_path, table, match):
    pq.write_table(pa.table(table), tmp_path / "bad_7.parquet")
    with pytest.raises(EmbeddingError, match=match) as exc:
        load_embedding_folder(tmp_path)
    assert str(exc.value).startswith(str(tmp_path / "bad_7.parquet")) and "\n" not in str(exc.value)


def test_nemo_shards_must_agree_on_caption_embeddings(tmp_path):
    pq.write_table(pa.table({"id": ["a"], "embedding": [[1.0, 0.0]], "text_embedding": [[1.0, 0.0]]}),
                   tmp_path / "p0.parquet")
    pq.write_table(pa.table({"id": ["b"], "embedding": [[0.0, 1.0]]}), tmp_path / "p1.parquet")
    with pytest.raises(EmbeddingError, match="p0.parquet has a text_embedding column but .*p1.parquet has none"):
        load_embedding_folder(tmp_path)
    pq.write_table(pa.table({"id": ["b"], "embedding": [[0.0, 1.0, 2.0]], "text_embedding": [[1.0, 0.0]]}),
                   tmp_path / "p1.parquet")
    with pytest.raises(EmbeddingError, match="p1.parquet has dimension 3 but .*p0.parquet has 2"):
        load_embedding_folder(tmp_path)


def test_a_missing_memory_folder_is_the_usual_error(memory_root):
    with pytest.raises(EmbeddingError, match=f"embedding folder {memory_root}/nope does not exist"):
        load_embedding_folder(f"{memory_root}/nope")
