import numpy as np
import pandas as pd

from clipguard.data import read_manifest, write_manifest
from clipguard.embed import embed_dataset
from clipguard.models import create_model
from clipguard.utils.io import read_json
from tests_helpers import no_gpu


def _small_manifest(world, tmp_path, n=50):
    df = read_manifest(world / "train" / "manifest.parquet").df.iloc[:n].copy()
    df["image"] = [str(world / "train" / p) for p in df["image"]]
    df["poisoned"] = np.arange(n) % 10 == 0
    return write_manifest(df, tmp_path / "m.parquet", sources=[world / "train" / "manifest.parquet"])


def test_layout_and_alignment(tiny_world, tmp_path):
    b = create_model("tiny-rn")
    m = read_manifest(_small_manifest(tiny_world, tmp_path))
    res = embed_dataset(b, m, tmp_path / "emb", shard_size=20, batch_size=8, progress=False)
    assert res.n_embedded == 50 and res.n_skipped == 0 and res.shards_written == [0, 1, 2]
    sizes = []
    for i in range(3):
        img = np.load(tmp_path / "emb" / "img_emb" / f"img_emb_{i}.npy")
        txt = np.load(tmp_path / "emb" / "text_emb" / f"text_emb_{i}.npy")
        meta = pd.read_parquet(tmp_path / "emb" / "metadata" / f"metadata_{i}.parquet")
        assert img.shape == txt.shape == (len(meta), 64) and img.dtype == np.float32
        assert np.allclose(np.linalg.norm(img, axis=1), 1, atol=1e-5)
        assert meta["row"].tolist() == list(range(20 * i, 20 * i + len(meta)))
        assert {"id", "image", "caption", "poisoned"} <= set(meta.columns)
        sizes.append(len(meta))
    assert sizes == [20, 20, 10]
    assert read_json(tmp_path / "emb" / "run.json")["n_embedded"] == 50


def test_resume_reuses_finished_shards_and_gives_identical_files(tiny_world, tmp_path):
    b = create_model("tiny-rn")
    m = read_manifest(_small_manifest(tiny_world, tmp_path))
    embed_dataset(b, m, tmp_path / "full", shard_size=20, batch_size=8, progress=False)
    embed_dataset(b, m, tmp_path / "part", shard_size=20, batch_size=8, progress=False)
    # simulate a kill during shard 1: its metadata (written last) is missing
    (tmp_path / "part" / "metadata" / "metadata_1.parquet").unlink()
    res = embed_dataset(b, m, tmp_path / "part", shard_size=20, batch_size=8, progress=False)
    assert res.shards_reused == [0, 2] and res.shards_written == [1]
    for i in range(3):
        for sub, name in (("img_emb", "img_emb"), ("text_emb", "text_emb")):
            a = np.load(tmp_path / "full" / sub / f"{name}_{i}.npy")
            c = np.load(tmp_path / "part" / sub / f"{name}_{i}.npy")
            assert np.array_equal(a, c)


def test_bad_rows_are_left_out_and_listed(tmp_path):
    from tests_helpers import make_bad_manifest

    b = create_model("tiny-rn")
    m = read_manifest(make_bad_manifest(tmp_path))
    res = embed_dataset(b, m, tmp_path / "emb", progress=False)
    assert res.n_embedded == 1 and res.n_skipped == 3
    assert res.skip_counts == {"missing image": 1, "empty caption": 1, "unreadable image": 1}
    skipped = pd.read_csv(tmp_path / "emb" / "skipped" / "skipped_0.csv")
    assert sorted(skipped["id"]) == ["corrupt", "empty", "missing"]


def test_device_cpu_gives_the_same_embeddings_and_records_throughput(tiny_world, tmp_path):
    m = read_manifest(_small_manifest(tiny_world, tmp_path, n=20))
    embed_dataset(create_model("tiny-rn"), m, tmp_path / "a", progress=False)
    embed_dataset(create_model("tiny-rn"), m, tmp_path / "b", progress=False, device="cpu")
    a = np.load(tmp_path / "a" / "img_emb" / "img_emb_0.npy")
    b = np.load(tmp_path / "b" / "img_emb" / "img_emb_0.npy")
    assert np.array_equal(a, b)
    run = read_json(tmp_path / "b" / "run.json")
    assert run["config"]["device"] == "cpu" and run["config"]["precision"] == "fp32"
    assert run["pairs_per_second"] > 0


@no_gpu
def test_bf16_on_cpu_is_refused_with_the_fix(tiny_world, tmp_path):
    import pytest

    from clipguard.errors import ConfigError

    m = read_manifest(_small_manifest(tiny_world, tmp_path, n=10))
    with pytest.raises(ConfigError, match="--precision fp32"):
        embed_dataset(create_model("tiny-rn"), m, tmp_path / "e", progress=False, precision="bf16")
    with pytest.raises(ConfigError, match="unknown precision .* choose one of: fp32, bf16"):
        embed_dataset(create_model("tiny-rn"), m, tmp_path / "e", progress=False, precision="fp16")


def test_defaults_come_from_their_one_source(tiny_world, tmp_path):
    import inspect

    from clipguard.io.writer import embedding_shard_complete
    from clipguard.utils.device import DEFAULT_DEVICE

    assert inspect.signature(embed_dataset).parameters["device"].default == DEFAULT_DEVICE
    m = read_manifest(_small_manifest(tiny_world, tmp_path, n=12))
    embed_dataset(create_model("tiny-rn"), m, tmp_path / "e", shard_size=5, text=False, progress=False)
    assert [embedding_shard_complete(tmp_path / "e", i, text=False) for i in range(4)] == [True] * 3 + [False]
    assert not (tmp_path / "e" / "text_emb").exists()


def test_the_record_says_when_the_model_was_trained_on_the_embedded_set(tiny_world, tmp_path):
    """``model_trained_on_this_set``: True for the manifest the model was trained on, False for another one;
    no such keys for a model without a training record."""
    path = _small_manifest(tiny_world, tmp_path, n=12)
    b = create_model("tiny-rn")
    b.trained_on = str(path)
    embed_dataset(b, read_manifest(path), tmp_path / "same", progress=False)
    rec = read_json(tmp_path / "same" / "run.json")
    assert rec["model_trained_on"] == str(path) and rec["model_trained_on_this_set"] is True
    b.trained_on = str(tiny_world / "train" / "manifest.parquet")
    embed_dataset(b, read_manifest(path), tmp_path / "other", progress=False)
    assert read_json(tmp_path / "other" / "run.json")["model_trained_on_this_set"] is False
    embed_dataset(create_model("tiny-rn"), read_manifest(path), tmp_path / "fresh", progress=False)
    assert "model_trained_on" not in read_json(tmp_path / "fresh" / "run.json")
