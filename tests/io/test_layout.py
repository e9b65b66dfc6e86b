"""Shard naming and listing of the clip-retrieval layout, and the atomic shard writers."""
import numpy as np
import pandas as pd

from clipguard.io import list_shards, load_embedding_folder, shard_path, write_embedding_shard, write_scores_shard
from clipguard.io.layout import shard_name
from clipguard.io.writer import embedding_shard_complete


def test_shard_names():
    assert shard_name("img", 3) == "img_emb/img_emb_3.npy"
    assert shard_name("text", 0) == "text_emb/text_emb_0.npy"
    assert shard_name("meta", 12) == "metadata/metadata_12.parquet"
    assert shard_name("scores", 2) == "scores/scores_2.parquet"
    assert shard_name("skipped", 1) == "skipped/skipped_1.csv"
    assert shard_path("/x", "img", 1).as_posix() == "/x/img_emb/img_emb_1.npy"


def test_list_shards_by_integer_index(tmp_path):
    assert list_shards(tmp_path, "img") == {}
    (tmp_path / "img_emb").mkdir()
    for name in ("img_emb_10.npy", "img_emb_9.npy", "img_emb_2.npy", "img_emb_x.npy", "other.npy",
                 "img_emb_3.npy.tmp"):
        (tmp_path / "img_emb" / name).touch()
    shards = list_shards(tmp_path, "img")
    assert list(shards) == [2, 9, 10] and shards[10].name == "img_emb_10.npy"


def test_writers_give_a_folder_the_reader_reads(tmp_path):
    rng = np.random.default_rng(0)
    assert not embedding_shard_complete(tmp_path, 0, text=True)
    for i, n in enumerate((4, 3)):
        meta = pd.DataFrame({"id": [f"{i}-{r}" for r in range(n)]}, index=np.arange(10, 10 + n))
        write_embedding_shard(tmp_path, i, rng.normal(size=(n, 5)).astype(np.float32), meta,
                              text=rng.normal(size=(n, 5)).astype(np.float32))
        assert embedding_shard_complete(tmp_path, i, text=True)
    write_embedding_shard(tmp_path, 2, np.zeros((2, 5), np.float32), pd.DataFrame({"id": ["a", "b"]}))
    assert embedding_shard_complete(tmp_path, 2, text=False) and not embedding_shard_complete(tmp_path, 2, text=True)
    (tmp_path / "text_emb" / "text_emb_2.npy").write_bytes(
        (tmp_path / "img_emb" / "img_emb_2.npy").read_bytes())
    es = load_embedding_folder(tmp_path)
    assert es.shard_ids == [0, 1, 2] and es.metadata["id"].tolist()[:5] == ["0-0", "0-1", "0-2", "0-3", "1-0"]
    assert not list(tmp_path.rglob("*.tmp"))  # nothing half-written left behind
    path = write_scores_shard(tmp_path, 4, pd.DataFrame({"id": ["a"], "kdist_score": [1.0]}))
    assert path == shard_path(tmp_path, "scores", 4) and list(list_shards(tmp_path, "scores")) == [4]
    assert pd.read_parquet(path)["kdist_score"].tolist() == [1.0]
