"""EmbeddingRows: random access to the rows of a folder, equal to the loaded folder."""
from __future__ import annotations

import importlib
import pickle

import numpy as np
import pandas as pd
import pytest

from clipguard.errors import EmbeddingError
from clipguard.io.reader import load_embedding_folder
from clipguard.io.rows import EmbeddingRows
from clipguard.io.writer import write_embedding_shard


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for i, n in enumerate([5, 0, 7, 3]):  # shard 1 is empty
        meta = pd.DataFrame({"id": [f"{i}-{j}" for j in range(n)], "caption": ["c"] * n})
        write_embedding_shard(tmp_path, i, rng.normal(size=(n, 4)).astype(np.float16), meta,
                              rng.normal(size=(n, 6)).astype(np.float32))
    return tmp_path


def test_rows_equal_the_loaded_folder_in_any_order(folder):
    es, rows = load_embedding_folder(folder), EmbeddingRows(folder)
    assert len(rows) == 15 and rows.shard_ids == [0, 2, 3] and rows.skipped_shards == [1]
    pick = np.array([14, 0, 7, 5, 5, 12])
    np.testing.assert_array_equal(rows.image(pick), es.image[pick])
    np.testing.assert_array_equal(rows.text(pick), es.text[pick])
    meta = rows.metadata(["id", "poisoned"])
    assert list(meta.columns) == ["id", "shard", "row_in_shard"]
    assert meta["id"].tolist() == es.metadata["id"].tolist()
    assert rows.locate(6).endswith("img_emb/img_emb_2.npy row 1 (global row 6)")
    again = pickle.loads(pickle.dumps(rows))  # what a distributor ships
    np.testing.assert_array_equal(again.image(pick), es.image[pick])


def test_out_of_range_and_misaligned_text(folder):
    rows = EmbeddingRows(folder)
    with pytest.raises(EmbeddingError, match="row 15 is outside the 15 rows"):
        rows.image([15])
    np.save(folder / "text_emb" / "text_emb_2.npy", np.zeros((6, 6), np.float32))
    with pytest.raises(EmbeddingError, match="text_emb_2.npy has 6 rows but .*img_emb_2.npy has 7"):
        EmbeddingRows(folder)


def test_rows_read_in_blocks_of_maps_equal_one_read(folder, monkeypatch):
    """Reading through a fresh memory map per block of rows (bounded mapped pages) changes no value."""
    es = load_embedding_folder(folder)
    pick = np.array([14, 0, 7, 5, 5, 12, 1, 2, 3, 4, 6])
    monkeypatch.setattr(importlib.import_module("clipguard.io.rows"), "_READ_BLOCK_ROWS", 2)
    rows = EmbeddingRows(folder)
    got = rows.image(pick)
    np.testing.assert_array_equal(got, es.image[pick])
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.flags.writeable  # the caller's own copy
