"""``clipguard scan EMB_DIR --record PATH``: a per-row record joined by id, its kind inferred (a
perturbation-stability record adds ``perturbation``); a record that cannot be used is a one-line error."""
import json

import numpy as np
import pandas as pd

from clipguard.embed import write_stability
from tests_helpers import assert_one_line_error, run_cli


def _ids():
    return [f"s0_{r}" for r in range(40)] + [f"s1_{r}" for r in range(30)]


def test_scan_with_a_stability_and_a_dynamics_record(tmp_path):
    from detect_helpers import pair_folder

    pair_folder(tmp_path / "emb", sizes=(40, 30, 0))
    ids = _ids()
    noise = np.random.default_rng(0).uniform(0.6, 1.0, 70)
    write_stability(pd.DataFrame({"id": ids[:60], "row": range(60), "noise_stability": noise[:60]}), tmp_path / "probe")
    (tmp_path / "model").mkdir()
    pd.DataFrame({"id": ids * 2, "row": list(range(70)) * 2, "epoch": [1] * 70 + [2] * 70,
                  "cosine": np.r_[noise, noise[::-1]]}).to_parquet(tmp_path / "model" / "dynamics.parquet", index=False)
    r = run_cli("scan", tmp_path / "emb", "--out", tmp_path / "scan", "--record", tmp_path / "probe",
                "--record", tmp_path / "model" / "dynamics.parquet", "-k", "5", "--top", "3", "--rank-by", "perturbation")
    assert r.returncode == 0, r.stderr
    assert (f"stability: 60 of 70 samples have a record in {tmp_path / 'probe' / 'stability.parquet'} (10 without: "
            "perturbation NaN, least suspicious; 0 record ids match no sample)") in r.stdout
    assert "dynamics: 70 of 70 samples have a record" in r.stdout and "perturbation_rank" in r.stdout
    scores = pd.read_parquet(tmp_path / "scan" / "scores" / "scores_0.parquet")
    assert scores["perturbation_score"].notna().sum() == 40                 # shard 0: all 40 probed
    run = json.loads((tmp_path / "scan" / "run.json").read_text())
    assert {"perturbation", "learning_speed", "dao", "fused"} <= set(run["detectors"])
    assert run["stability"]["n_rows_without_record"] == 10 and run["dynamics"]["n_rows_without_record"] == 0


def test_a_record_that_cannot_be_used_is_a_one_line_error(tmp_path):
    from detect_helpers import pair_folder

    pair_folder(tmp_path / "emb", sizes=(40, 30, 0))
    write_stability(pd.DataFrame({"id": ["a", "b"], "row": [0, 1], "noise_stability": [0.1, 0.2]}), tmp_path / "other")
    r = run_cli("scan", tmp_path / "emb", "--out", tmp_path / "s", "--record", tmp_path / "other")
    assert_one_line_error(r, str(tmp_path / "other" / "stability.parquet"), "none of its 2 ids matches")
    r = run_cli("scan", tmp_path / "emb", "--out", tmp_path / "s", "--record", tmp_path / "nothing")
    assert_one_line_error(r, "no record there", "clipguard probe MODEL_DIR MANIFEST --out DIR")
    write_stability(pd.DataFrame({"id": _ids(), "row": range(70), "blur_stability": 0.5}), tmp_path / "blur")
    r = run_cli("scan", tmp_path / "emb", "--out", tmp_path / "s", "--record", tmp_path / "blur")
    assert_one_line_error(r, "has no noise_stability column", "probe with the noise perturbation")
    r = run_cli("scan", tmp_path / "emb", "--out", tmp_path / "s", "--record", tmp_path / "other",
                "--record", tmp_path / "blur")
    assert_one_line_error(r, "the perturbation-stability record given twice")
    r = run_cli("scan", tmp_path / "emb", "--out", tmp_path / "s", "--detector", "perturbation")
    assert_one_line_error(r, "'perturbation' needs a perturbation-stability record", "--record DIR")
    r = run_cli("scan", "--model", tmp_path / "model", "--data", tmp_path / "m.csv", "--out", tmp_path / "s",
                "--record", tmp_path / "other")
    assert_one_line_error(r, "--record scans an EMB_DIR", "clipguard scan EMB --record DIR")
