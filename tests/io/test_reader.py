"""Reading the clip-retrieval embedding layout (clipguard.io.reader)."""
import logging

import numpy as np
import pandas as pd
import pytest

from clipguard.io import load_embedding_folder
from clipguard.errors import EmbeddingError


def _write(root, sizes, d=8, dtype=np.float16, text=False, meta=True, seed=0):
    """Write shards {i: n_rows}; metadata ids are 'shard-row'."""
    rng = np.random.default_rng(seed)
    for sub in ("img_emb", "text_emb", "metadata"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, n in sizes.items():
        np.save(root / "img_emb" / f"img_emb_{i}.npy", rng.normal(size=(n, d)).astype(dtype))
        if text:
            np.save(root / "text_emb" / f"text_emb_{i}.npy", rng.normal(size=(n, d)).astype(dtype))
        if meta:
            pd.DataFrame({
                "id": [f"{i}-{r}" for r in range(n)],
                "caption": ["a photo"] * n,
                "poisoned": np.arange(n) % 5 == 0,
            }).to_parquet(root / "metadata" / f"metadata_{i}.parquet", index=False)


def test_two_shards_and_an_empty_one(tmp_path, caplog):
    _write(tmp_path, {0: 30, 1: 20, 2: 0}, text=True)
    with caplog.at_level(logging.WARNING, logger="clipguard"):
        es = load_embedding_folder(tmp_path)
    assert "img_emb_2.npy" in caplog.text
    assert es.image.shape == (50, 8) and es.image.dtype == np.float32
    assert es.text is not None and es.text.shape == (50, 8)
    assert es.shard_sizes == [30, 20] and es.shard_ids == [0, 1] and es.skipped_shards == [2]
    assert len(es.metadata) == 50
    assert es.metadata["id"].tolist()[28:32] == ["0-28", "0-29", "1-0", "1-1"]
    np.testing.assert_array_equal(es.metadata["shard"], [0] * 30 + [1] * 20)
    np.testing.assert_array_equal(es.metadata["row_in_shard"], list(range(30)) + list(range(20)))
    first = np.load(tmp_path / "img_emb" / "img_emb_0.npy").astype(np.float32)
    np.testing.assert_array_equal(es.image[:30], first)
    assert es.locate(31) == "img_emb/img_emb_1.npy row 1 (global row 31)"


def test_shards_sorted_numerically(tmp_path):
    _write(tmp_path, {9: 2, 10: 3, 2: 1})
    es = load_embedding_folder(tmp_path)
    assert es.shard_ids == [2, 9, 10] and es.shard_sizes == [1, 2, 3]
    assert es.metadata["id"].tolist() == ["2-0", "9-0", "9-1", "10-0", "10-1", "10-2"]


def test_without_metadata_or_text(tmp_path):
    _write(tmp_path, {0: 4, 1: 3}, meta=False, dtype=np.float32)
    es = load_embedding_folder(tmp_path)
    assert es.text is None
    assert list(es.metadata.columns) == ["shard", "row_in_shard"]


def test_metadata_row_mismatch_names_the_shard(tmp_path):
    _write(tmp_path, {0: 5, 1: 6})
    pd.DataFrame({"id": ["x"] * 4}).to_parquet(tmp_path / "metadata" / "metadata_1.parquet")
    with pytest.raises(EmbeddingError, match=r"metadata_1\.parquet has 4 rows but .*img_emb_1\.npy has 6"):
        load_embedding_folder(tmp_path)


def test_missing_metadata_shard(tmp_path):
    _write(tmp_path, {0: 5, 1: 6})
    (tmp_path / "metadata" / "metadata_0.parquet").unlink()
    with pytest.raises(EmbeddingError, match=r"metadata_0\.parquet is missing"):
        load_embedding_folder(tmp_path)


def test_missing_folder_or_shards(tmp_path):
    with pytest.raises(EmbeddingError, match="does not exist"):
        load_embedding_folder(tmp_path / "nope")
    with pytest.raises(EmbeddingError, match=r"no image embedding shards \(img_emb/img_emb_<i>\.npy\)"):
        load_embedding_folder(tmp_path)
    _write(tmp_path, {0: 0})
    with pytest.raises(EmbeddingError, match="every image embedding shard .* is empty"):
        load_embedding_folder(tmp_path)


def test_dimension_mismatch(tmp_path):
    _write(tmp_path, {0: 5, 1: 6})
    np.save(tmp_path / "img_emb" / "img_emb_1.npy", np.ones((6, 4), np.float32))
    with pytest.raises(EmbeddingError, match=r"img_emb_1\.npy has dimension 4 but .*img_emb_0\.npy has 8"):
        load_embedding_folder(tmp_path)


def test_text_mismatch(tmp_path):
    _write(tmp_path, {0: 5, 1: 6}, text=True)
    np.save(tmp_path / "text_emb" / "text_emb_1.npy", np.ones((5, 8), np.float32))
    with pytest.raises(EmbeddingError, match=r"text_emb_1\.npy has 5 rows but .*img_emb_1\.npy has 6"):
        load_embedding_folder(tmp_path)
    (tmp_path / "text_emb" / "text_emb_1.npy").unlink()
    with pytest.raises(EmbeddingError, match=r"text_emb has shards \[0\] but img_emb has \[0, 1\]"):
        load_embedding_folder(tmp_path)


def test_unreadable_shard(tmp_path):
    _write(tmp_path, {0: 5})
    (tmp_path / "img_emb" / "img_emb_0.npy").write_bytes(b"not a npy file")
    with pytest.raises(EmbeddingError, match=r"cannot read .*img_emb_0\.npy"):
        load_embedding_folder(tmp_path)


def test_empty_shard_needs_no_metadata(tmp_path):
    _write(tmp_path, {0: 5, 1: 0})
    (tmp_path / "metadata" / "metadata_1.parquet").unlink()
    es = load_embedding_folder(tmp_path)
    assert es.shard_ids == [0] and es.skipped_shards == [1]
