"""``clipguard scan --dynamics MODEL_DIR``: train with a record, embed, scan -> ``learning_speed``;
a record of other data, or none, is a one-line error."""
import json

import numpy as np
import pandas as pd

from clipguard.data import read_manifest, write_manifest
from tests_helpers import assert_one_line_error, run_cli


def _subset(world, path, n):
    """The first ``n`` rows of the tiny world's training manifest, image paths made absolute."""
    m = read_manifest(world / "train" / "manifest.parquet")
    df = m.df.head(n).copy()
    df["image"] = [str(m.image_path(i)) for i in range(n)]
    return write_manifest(df, path, sources=[m.path])  # its images lie in m's root


def test_train_with_a_record_embed_and_scan_with_dynamics(tiny_world, tmp_path):
    trained = _subset(tiny_world, tmp_path / "trained.parquet", 150)
    scanned = _subset(tiny_world, tmp_path / "scanned.parquet", 180)  # 30 pairs the model never saw
    r = run_cli("train", trained, "--out", tmp_path / "model", "--epochs", "1", "--record-epochs", "1",
                "--batch-size", "50", "--warmup-steps", "1", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    r = run_cli("embed", tmp_path / "model", scanned, "--out", tmp_path / "emb", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    r = run_cli("scan", tmp_path / "emb", "--out", tmp_path / "scan", "--dynamics", tmp_path / "model", "-k", "5",
                "--top", "3", "--rank-by", "learning_speed")
    assert r.returncode == 0, r.stderr
    assert "dynamics: 150 of 180 samples have a record" in r.stdout and "30 without" in r.stdout
    assert "learning_speed_rank" in r.stdout
    scores = pd.read_parquet(tmp_path / "scan" / "scores" / "scores_0.parquet")
    assert len(scores) == 180 and scores["learning_speed_score"].notna().sum() == 150
    assert scores["dao_score"].notna().all()                           # the default detectors ran too
    run = json.loads((tmp_path / "scan" / "run.json").read_text())
    assert "learning_speed" in run["detectors"] and "dao" in run["detectors"]
    assert run["dynamics"]["n_rows_without_record"] == 30 and run["dynamics"]["n_record_ids_unmatched"] == 0
    assert np.isnan(scores.loc[~scores["id"].isin(read_manifest(trained).df["id"]),
                               "learning_speed_score"]).all()


def test_a_record_of_other_data_or_none_is_a_one_line_error(tmp_path):
    from detect_helpers import pair_folder

    pair_folder(tmp_path / "emb")
    (tmp_path / "model").mkdir()
    pd.DataFrame({"id": ["a", "b"], "row": [0, 1], "epoch": [1, 1], "cosine": [0.1, 0.2]}).to_parquet(
        tmp_path / "model" / "dynamics.parquet", index=False)
    r = run_cli("scan", tmp_path / "emb", "--out", tmp_path / "s", "--dynamics", tmp_path / "model")
    assert_one_line_error(r, str(tmp_path / "model" / "dynamics.parquet"), "none of its 2 ids matches",
                          "was the model trained on this dataset?")
    r = run_cli("scan", tmp_path / "emb", "--out", tmp_path / "s", "--dynamics", tmp_path / "nothing")
    assert_one_line_error(r, "no training-dynamics record", "--record-epochs")
    r = run_cli("scan", tmp_path / "emb", "--out", tmp_path / "s", "--detector", "learning_speed")
    assert_one_line_error(r, "'learning_speed' needs a training-dynamics record", "--dynamics MODEL_DIR")
    r = run_cli("scan", "--model", tmp_path / "model", "--data", tmp_path / "m.csv", "--out", tmp_path / "s",
                "--dynamics", tmp_path / "model")
    assert_one_line_error(r, "--dynamics scans an EMB_DIR")
