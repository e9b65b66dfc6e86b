"""Distributed embedding: Ray gives the same embedding folder as the single process, one shard per
webdataset tar, resumes finished shards, and names a shard that keeps failing."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from clipguard.data import read_manifest, write_webdataset
from clipguard.distributed import embed_sharded
from clipguard.embed import embed_dataset
from clipguard.io.reader import load_embedding_folder
from clipguard.models import create_model, save_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "tiny"
    save_model(create_model("tiny-rn"), out)
    return out


def test_ray_embedding_equals_the_single_process_one(tiny_world, model_dir, tmp_path, ray_cluster, monkeypatch):
    from clipguard.models import load_model

    manifest = tiny_world / "train" / "manifest.parquet"
    embed_dataset(load_model(model_dir), read_manifest(manifest), tmp_path / "seq", shard_size=250,
                  batch_size=64, progress=False, device="cpu")
    monkeypatch.chdir(tmp_path)  # relative paths: the Ray workers run in another directory
    os.symlink(model_dir, tmp_path / "m")
    res = embed_sharded("m", manifest, "ray", shard_size=250, batch_size=64, device="cpu")
    a, b = load_embedding_folder(tmp_path / "seq"), load_embedding_folder(tmp_path / "ray")
    assert res.n_embedded == len(a) == 600 and b.shard_ids == a.shard_ids == [0, 1, 2]
    np.testing.assert_array_equal(b.image, a.image)
    np.testing.assert_array_equal(b.text, a.text)
    assert b.metadata.equals(a.metadata)
    run = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert run["distributed"]["distributor"] == "ray" and run["distributed"]["tasks_run"] == 3
    assert {"decode", "model", "write"} <= set(run["stage_seconds"])
    assert {"decode", "model", "write", "load_model"} <= set(run["distributed"]["stage_seconds"])
    again = embed_sharded(model_dir, manifest, tmp_path / "ray", shard_size=250, batch_size=64, device="cpu")
    assert again.shards_reused == [0, 1, 2] and again.n_embedded == 600


def test_webdataset_gives_one_shard_per_tar(tiny_world, model_dir, tmp_path):
    m = read_manifest(tiny_world / "train" / "manifest.parquet")
    write_webdataset(m, tmp_path / "wds", samples_per_shard=200)
    res = embed_sharded(model_dir, str(tmp_path / "wds" / "{00000..00002}.tar"), tmp_path / "emb",
                        distributor="sequential", batch_size=64, device="cpu")
    es = load_embedding_folder(tmp_path / "emb")
    assert res.n_embedded == 600 and es.shard_sizes == [200, 200, 200]
    assert es.metadata["id"].tolist() == m.df["id"].tolist()


def test_a_shard_that_keeps_failing_is_named(tiny_world, model_dir, tmp_path, monkeypatch):
    from clipguard.distributed import embed as embed_module

    real = embed_module.embed_shard

    def flaky(job, i, bar=None):
        if i == 1:
            raise OSError("image store unreachable")
        return real(job, i, bar)

    monkeypatch.setattr(embed_module, "embed_shard", flaky)
    manifest = tiny_world / "train" / "manifest.parquet"
    with pytest.raises(Exception, match=r"1 shard\(s\) failed after every retry: shard 1: OSError: image store "
                                        r"unreachable; rerun the same command"):
        embed_sharded(model_dir, manifest, tmp_path / "emb", distributor="sequential", shard_size=250,
                      batch_size=64, device="cpu", retries=1)
    run = json.loads((tmp_path / "emb" / "run.json").read_text())
    assert run["distributed"]["tasks_failed"] == {"1": "OSError: image store unreachable"}
    monkeypatch.setattr(embed_module, "embed_shard", real)
    res = embed_sharded(model_dir, manifest, tmp_path / "emb", distributor="sequential", shard_size=250,
                        batch_size=64, device="cpu")
    assert res.shards_reused == [0, 2] and res.shards_written == [1] and res.n_embedded == 600
