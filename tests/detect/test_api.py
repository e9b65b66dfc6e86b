"""run_scan end to end on a small embedding folder (the api module), and rank_desc."""
import json

import numpy as np
import pandas as pd
import pytest

from clipguard.detect import run_scan, top_suspects
from clipguard.detect.results import rank_desc
from clipguard.errors import ConfigError, EmbeddingError
from clipguard.utils.runrecord import fingerprint_arrays
from detect_helpers import image_folder as _folder

NAMES = ["kdist", "lid", "slof", "dao", "density_anomaly", "iforest", "caption_dup", "fused"]


def test_run_scan_end_to_end(tmp_path):
    emb, out = tmp_path / "emb", tmp_path / "out"
    poisoned = _folder(emb)
    res = run_scan(emb, out, k=8)

    # default = every registered detector whose inputs the folder has: it has captions in
    # metadata but no text_emb/, so the two that need caption embeddings are skipped
    assert res.detectors == NAMES
    assert set(res.skipped_detectors) == {"clipscore", "caption_disagreement"}
    assert [p.name for p in res.score_paths] == ["scores_0.parquet", "scores_1.parquet",
                                                 "scores_2.parquet"]
    cols = ["id"] + [f"{pre}{n}{post}" for n in NAMES
                     for pre, post in (("", "_score"), ("", "_rank"), ("is_", "_suspect"))]
    cols.append("poisoned")
    parts = [pd.read_parquet(out / "scores" / f"scores_{i}.parquet") for i in range(3)]
    assert [len(p) for p in parts] == [150, 120, 0]
    for p in parts:
        assert list(p.columns) == cols
    allp = pd.concat(parts, ignore_index=True)
    assert allp["id"].tolist()[148:152] == ["s0_148", "s0_149", "s1_0", "s1_1"]
    np.testing.assert_array_equal(allp["poisoned"], poisoned)
    for name in NAMES:
        assert allp[f"{name}_score"].dtype == np.float64
        assert allp[f"{name}_rank"].dtype == np.int64
        np.testing.assert_array_equal(np.sort(allp[f"{name}_rank"]), np.arange(1, 271))
        top = allp.loc[allp[f"{name}_rank"] == 1, f"{name}_score"].item()
        assert top == allp[f"{name}_score"].max()
        # is_<det>_suspect = the top 1% = ceil(2.7) = 3 samples
        assert allp[f"is_{name}_suspect"].sum() == 3
        assert (allp.loc[allp[f"is_{name}_suspect"], f"{name}_rank"] <= 3).all()
    pd.testing.assert_frame_equal(allp, res.scores[cols])

    run = json.loads(res.run_json.read_text())
    assert run["n"] == 270 and run["d"] == 16
    assert run["shard_sizes"] == [150, 120] and run["skipped_shards"] == [2]
    assert run["config"]["k"] == 8 and run["config"]["reference"] == "auto"
    assert run["reference_plan"]["mode"] == "global" and "N=270" in run["reference_plan"]["reason"]
    assert run["n_skipped_detectors"] == 2
    assert "caption embeddings" in run["skipped_detectors"]["clipscore"]
    assert run["detectors"] == NAMES and run["n_suspects"] == 3
    assert run["detector_info"]["fused"]["components"] == ["dao", "density_anomaly", "caption_dup"]
    assert {"load", "score", "write", "total"} <= set(run["timings_s"])
    image = np.concatenate([np.load(emb / "img_emb" / f"img_emb_{i}.npy") for i in range(2)])
    assert run["data_fingerprint"] == fingerprint_arrays(image.astype(np.float32))
    assert set(run["detection"]) == set(NAMES)
    for name in NAMES:
        assert set(run["detection"][name]) == {"auroc", "auprc", "tpr_at_1pct_fpr"}
    assert run["detection"] == res.metrics
    for name in ("kdist", "slof", "dao"):
        assert res.metrics[name]["auroc"] >= 0.95

    top3 = top_suspects(res, "dao", 3)
    assert top3["dao_rank"].tolist() == [1, 2, 3]
    with pytest.raises(ConfigError, match="was not part of this scan"):
        top_suspects(res, "lof", 3)


def test_run_scan_batch_mode_without_ground_truth(tmp_path):
    emb, out = tmp_path / "emb", tmp_path / "out"
    _folder(emb, sizes=(100, 90), ground_truth=False)
    res = run_scan(emb, out, detectors=["dao", "kdist"], k=8, reference="batch", batch_size=64,
                   seed=1)
    assert res.metrics is None
    part = pd.read_parquet(out / "scores" / "scores_1.parquet")
    assert list(part.columns) == ["id", "dao_score", "dao_rank", "is_dao_suspect", "kdist_score",
                                  "kdist_rank", "is_kdist_suspect"]
    run = json.loads(res.run_json.read_text())
    assert run["detection"] is None and run["config"]["batch_size"] == 64


def test_nan_embedding_names_the_row(tmp_path):
    emb = tmp_path / "emb"
    _folder(emb, sizes=(10, 12))
    x = np.load(emb / "img_emb" / "img_emb_1.npy")
    x[3, 2] = np.nan
    np.save(emb / "img_emb" / "img_emb_1.npy", x)
    with pytest.raises(EmbeddingError, match=r"NaN or inf \(first: .*img_emb_1\.npy row 3 \(global row 13\)\)"):
        run_scan(emb, tmp_path / "out", k=4)


def test_bad_config(tmp_path):
    emb = tmp_path / "emb"
    _folder(emb, sizes=(10, 12))
    with pytest.raises(ConfigError, match="unknown detector"):
        run_scan(emb, tmp_path / "out", detectors=["nope"])
    with pytest.raises(ConfigError, match="k <= 21"):
        run_scan(emb, tmp_path / "out", k=30)


def test_rank_desc_ties_and_nan():
    s = np.array([0.5, np.nan, 2.0, 0.5, -np.inf, np.inf])
    np.testing.assert_array_equal(rank_desc(s), [3, 6, 2, 4, 5, 1])
