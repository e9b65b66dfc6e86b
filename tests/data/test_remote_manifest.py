"""Manifests and webdataset shards read through fsspec give the same embeddings as a local manifest."""
import sys

import fsspec
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clipguard.data import ImageCaptionDataset, read_manifest, read_source, read_webdataset, write_manifest, \
    write_webdataset
from clipguard.embed import embed_dataset
from clipguard.errors import ConfigError, ManifestError
from clipguard.io import load_embedding_folder
from clipguard.models import create_model


def _world(root, n=10):
    """``n`` random 32x32 PNGs (one missing, one with an empty caption) and their manifest."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    for i in range(n):
        if i != 3:
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
    caps = [f"a photo of thing {i}" for i in range(n)]
    caps[5] = ""
    df = pd.DataFrame({"id": [f"p{i}" for i in range(n)], "image": [f"img/{i}.png" for i in range(n)],
                       "caption": caps, "poisoned": np.arange(n) % 4 == 0})
    return write_manifest(df, root / "manifest.parquet")


def _by_id(folder):
    es = load_embedding_folder(folder)
    order = np.argsort(es.metadata["id"].to_numpy())
    return es.metadata["id"].to_numpy()[order], es.image[order], es.text[order], es.metadata.iloc[order]


def test_webdataset_and_memory_inputs_embed_exactly_like_the_local_manifest(tmp_path, memory_root):
    local = read_manifest(_world(tmp_path / "src"))
    write_webdataset(local, tmp_path / "wds", samples_per_shard=4)
    fs = fsspec.filesystem("memory")
    fs.put(str(tmp_path / "src") + "/", f"{memory_root}/src/", recursive=True)
    fs.put(str(tmp_path / "wds") + "/", f"{memory_root}/wds/", recursive=True)
    sources = {
        "local": local,
        "wds": read_source(str(tmp_path / "wds" / "{00000..00002}.tar")),
        "memory": read_manifest(f"{memory_root}/src/manifest.parquet"),
        "memory_wds": read_webdataset(f"{memory_root}/wds/{{00000..00002}}.tar"),
    }
    assert sources["memory"].image_path(0) == f"{memory_root}/src/img/0.png"
    bundle = create_model("tiny-rn")
    results = {name: embed_dataset(bundle, m, tmp_path / name, shard_size=6, batch_size=4, progress=False)
               for name, m in sources.items()}
    ids, img, txt, meta = _by_id(tmp_path / "local")
    assert results["local"].n_embedded == 8 and results["local"].skip_counts == {"missing image": 1,
                                                                                 "empty caption": 1}
    for name in ("wds", "memory", "memory_wds"):
        assert results[name].n_embedded == 8 and results[name].skip_counts == results["local"].skip_counts
        ids2, img2, txt2, meta2 = _by_id(tmp_path / name)
        assert ids2.tolist() == ids.tolist()
        if name == "memory":  # the same shards and batches as the local manifest: the same bits
            assert np.array_equal(img2, img) and np.array_equal(txt2, txt), name
        else:  # one shard per tar: other batches, so float rounding of the batched model may differ
            np.testing.assert_allclose(img2, img, rtol=0, atol=1e-6, err_msg=name)
            np.testing.assert_allclose(txt2, txt, rtol=0, atol=1e-6, err_msg=name)
        assert meta2["poisoned"].tolist() == meta["poisoned"].tolist()
        skipped = pd.concat([pd.read_csv(p) for p in sorted((tmp_path / name / "skipped").glob("*.csv"))])
        assert skipped["id"].tolist() == ["p3", "p5"]


def test_memory_manifest_resolves_images_beside_it_and_skips_missing_ones(tmp_path, memory_root):
    fs = fsspec.filesystem("memory")
    _world(tmp_path / "src", n=6)
    fs.put(str(tmp_path / "src") + "/", f"{memory_root}/a/src/", recursive=True)
    df = pd.DataFrame({"id": ["up", "abs", "url", "gone"],
                       "image": ["../src/img/0.png", f"/{memory_root[9:]}/a/src/img/1.png",
                                 f"{memory_root}/a/src/img/2.png", "img/nope.png"],
                       "caption": ["a", "b", "c", "d"]})
    write_manifest(df, f"{memory_root}/a/sub/manifest.csv")
    m = read_manifest(f"{memory_root}/a/sub")  # a folder URL finds its manifest
    assert m.path == f"{memory_root}/a/sub/manifest.csv" and m.root == f"{memory_root}/a/sub"
    assert m.image_path(0) == f"{memory_root}/a/src/img/0.png"
    ds = ImageCaptionDataset(m)
    assert ds.rows == [0, 1, 2]
    assert ds.skip_log.entries == [(3, "gone", f"missing image: {memory_root}/a/sub/img/nope.png")]
    assert all(ds[j]["image"].size == (32, 32) for j in range(3))
    rel = m.rows_relative_to(tmp_path)  # a derived local manifest points at the same URLs
    assert rel["image"].tolist()[0] == f"{memory_root}/a/src/img/0.png"
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(f"{memory_root}/a/none.parquet")


def test_a_missing_protocol_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if s3fs were not installed
    monkeypatch.setitem(sys.modules, "gcsfs", None)
    with pytest.raises(ConfigError, match=r"needs s3fs, which is not installed; pip install 'clipguard\[s3\]'"):
        read_manifest("s3://bucket/manifest.parquet")
    with pytest.raises(ConfigError, match=r"pip install 'clipguard\[gcs\]'") as exc:
        read_webdataset("gs://bucket/shards/{00000..00001}.tar")
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match=r"pip install 'clipguard\[s3\]'"):
        load_embedding_folder("s3://bucket/emb")
    with pytest.raises(ConfigError, match="Protocol not known: nosuchfs"):
        read_manifest("nosuchfs://bucket/manifest.parquet")


def test_clipguard_embed_takes_a_webdataset_pattern(tmp_path):
    from clipguard.models import save_model
    from tests_helpers import run_cli

    write_webdataset(read_manifest(_world(tmp_path / "src", n=6)), tmp_path / "wds", samples_per_shard=4)
    save_model(create_model("tiny-rn"), tmp_path / "model")
    code, out, err = run_cli("embed", tmp_path / "model", tmp_path / "wds" / "{00000..00001}.tar",
                             "--out", tmp_path / "emb")
    assert code == 0, err
    assert "embedded 4 pairs, skipped 2" in out
    assert load_embedding_folder(tmp_path / "emb").metadata["id"].tolist() == ["p0", "p1", "p2", "p4"]
    code, _, err = run_cli("embed", tmp_path / "model", tmp_path / "wds" / "{00000..00009}.tar",
                           "--out", tmp_path / "emb2")
    assert code == 2 and "8 of 10 tar file(s) not found" in err and "Traceback" not in err
