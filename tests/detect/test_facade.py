"""The Scan facade end to end, the scan with caption embeddings, and bad input."""
import json
import logging

import numpy as np
import pandas as pd
import pytest

from clipguard.detect import Scan, run_scan
from clipguard.errors import ConfigError, EmbeddingError
from detect_helpers import DEFAULT
from detect_helpers import pair_folder as _folder


def test_scan_facade_end_to_end(tmp_path):
    poisoned = _folder(tmp_path / "emb")
    scan = Scan.from_folder(tmp_path / "emb")
    assert len(scan) == 220 and scan.available_inputs == {"image", "text", "captions"}
    with pytest.raises(ConfigError, match="find_suspects"):
        scan.report()
    assert scan.find_suspects(k=8, suspect_share=0.05) is scan
    assert scan.detectors == DEFAULT and scan.skipped_detectors == {}
    assert scan.info["reference_plan"]["mode"] == "global"
    assert scan.info["detector_info"]["fused"]["components"] == [
        "dao", "density_anomaly", "clipscore", "caption_dup", "caption_disagreement"]
    # seen when written: kdist 0.99, density_anomaly 0.99, clipscore 1.0, caption_dup 1.0,
    # fused 0.96 (dao 0.80: 8 poisoned points with k = 8 are nearly each other's neighbours)
    for name in ("kdist", "density_anomaly", "clipscore", "caption_dup", "fused"):
        assert scan.metrics[name]["auroc"] >= 0.95, (name, scan.metrics[name])

    sus = scan.get_suspects("clipscore")  # the top 5% = ceil(11.0) = 11
    assert list(sus.columns) == ["id", "clipscore_score", "clipscore_rank",
                                 "is_clipscore_suspect", "poisoned"]
    assert len(sus) == 11 and sus["is_clipscore_suspect"].all()
    assert sus["clipscore_rank"].tolist() == list(range(1, 12))
    assert (np.diff(sus["clipscore_score"]) <= 0).all()
    assert set(np.flatnonzero(poisoned)) <= set(sus.index)  # index = dataset row
    assert sus.loc[sus["poisoned"], "id"].str.startswith("s").all()
    assert len(scan.get_suspects("dao", n=3)) == 3 and len(scan.get_suspects("dao", n=0)) == 0
    with pytest.raises(ConfigError, match="was not part of this scan"):
        scan.get_suspects("lof")

    text = scan.report(n=3)
    assert "220 samples" in text and "reference: global" in text
    assert "caption_disagreement" in text and "AUROC" in text and "top 3 by fused" in text

    # save() writes the run_scan contract; run_scan on the same folder gives the same files
    run_json = scan.save(tmp_path / "a")
    res = run_scan(tmp_path / "emb", tmp_path / "b", k=8, suspect_share=0.05)
    for i in range(3):
        a = pd.read_parquet(tmp_path / "a" / "scores" / f"scores_{i}.parquet")
        b = pd.read_parquet(tmp_path / "b" / "scores" / f"scores_{i}.parquet")
        pd.testing.assert_frame_equal(a, b)
    assert [len(pd.read_parquet(p)) for p in res.score_paths] == [120, 100, 0]
    ra, rb = json.loads(run_json.read_text()), json.loads(res.run_json.read_text())
    for key in ("n", "d", "detectors", "reference_plan", "detection", "data_fingerprint",
                "n_suspects", "skipped_shards", "inputs"):
        assert ra[key] == rb[key], key
    assert ra["inputs"] == ["captions", "image", "text"] and ra["n_suspects"] == 11


def test_scan_from_arrays_saves_one_shard(tmp_path):
    rng = np.random.default_rng(0)
    scan = Scan(rng.normal(size=(150, 8)), ids=[f"x{i}" for i in range(150)])
    scan.find_suspects(["kdist", "fused"], k=5, reference="multi_reference", reference_size=60,
                       n_references=2)
    assert scan.metrics is None and "AUROC" not in scan.report()
    run = json.loads(scan.save(tmp_path).read_text())
    assert run["reference_plan"]["n_references"] == 2 and len(run["references"]) == 2
    assert run["recall_at_k"] == 1.0 and run["shard_ids"] == [0]
    part = pd.read_parquet(tmp_path / "scores" / "scores_0.parquet")
    assert part["id"].tolist()[:2] == ["x0", "x1"]
    assert list(part.columns) == ["id", "kdist_score", "kdist_rank", "is_kdist_suspect",
                                  "fused_score", "fused_rank", "is_fused_suspect"]
    assert part["is_kdist_suspect"].sum() == 2  # ceil(1% of 150)


# --- bad input ------------------------------------------------------------------------------

def test_text_detectors_without_text_emb(tmp_path, caplog):
    _folder(tmp_path / "emb", text=False)
    with caplog.at_level(logging.WARNING, logger="clipguard"):
        res = run_scan(tmp_path / "emb", tmp_path / "out", k=8)
    assert "skipped 2 detector(s)" in caplog.text
    assert res.detectors == [n for n in DEFAULT if n not in ("clipscore", "caption_disagreement")]
    run = json.loads(res.run_json.read_text())
    assert run["n_skipped_detectors"] == 2
    assert set(run["skipped_detectors"]) == {"clipscore", "caption_disagreement"}
    with pytest.raises(ConfigError, match=r"detector 'clipscore' needs caption embeddings \(text_emb/"):
        run_scan(tmp_path / "emb", tmp_path / "out", k=8, detectors=["dao", "clipscore"])
    with pytest.raises(ConfigError, match="caption_disagreement"):
        Scan.from_folder(tmp_path / "emb").find_suspects(["caption_disagreement"])


def test_nan_in_text_embeddings_names_the_row(tmp_path):
    emb = tmp_path / "emb"
    _folder(emb, sizes=(10, 12))
    t = np.load(emb / "text_emb" / "text_emb_1.npy")
    t[4, 0] = np.inf
    np.save(emb / "text_emb" / "text_emb_1.npy", t)
    with pytest.raises(EmbeddingError, match=r"NaN or inf \(first: text of .*img_emb_1\.npy row 4"):
        run_scan(emb, tmp_path / "out", k=4)


def test_bad_arguments():
    x = np.random.default_rng(0).normal(size=(30, 4))
    with pytest.raises(ConfigError, match="row-aligned"):
        Scan(x, captions=["a"] * 29)
    with pytest.raises(ConfigError, match="text_emb must have shape"):
        Scan(x, text_emb=np.ones((29, 4)))
    with pytest.raises(ConfigError, match="0 rows"):
        Scan(np.empty((0, 4)))
    scan = Scan(x)
    with pytest.raises(ConfigError, match="suspect_share"):
        scan.find_suspects(["kdist"], k=3, suspect_share=0)
    with pytest.raises(ConfigError, match="k <= 29"):
        scan.find_suspects(["kdist"], k=30)
    with pytest.raises(ConfigError, match="k=16 needs at least 17 reference rows"):
        scan.find_suspects(["kdist"], reference="reference", reference_size=10)
    with pytest.raises(ConfigError, match="unknown index"):
        scan.find_suspects(["kdist"], k=3, index="hnsw")
