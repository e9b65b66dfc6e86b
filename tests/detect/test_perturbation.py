"""``perturbation``: the perturbation-stability record as a scan detector -- the score is the noise
stability (or its |robust z|), NaN for a row without a record, and a scan with the record runs it by
default and writes the join to ``run.json``."""
import json

import numpy as np
import pandas as pd
import pytest

from clipguard.detect import DETECTORS, Scan, run_scan
from clipguard.detect.detectors.perturbation import Perturbation, stability_scores
from clipguard.embed import write_stability
from clipguard.errors import ConfigError
from detect_helpers import DEFAULT, pair_folder

NOISE = np.array([0.91, 0.95, 0.80, 0.99, 0.85])


def test_the_score_is_the_noise_stability_or_its_robust_z():
    np.testing.assert_array_equal(stability_scores(NOISE), NOISE)               # more stable = higher
    # two-sided by hand: median 0.91, MAD median(|x - 0.91|) = median(0, 0.04, 0.11, 0.08, 0.06) = 0.06
    expected = np.abs(NOISE - 0.91) / (1.4826 * 0.06)
    np.testing.assert_allclose(stability_scores(NOISE, "two-sided"), expected, rtol=1e-12)
    with_gap = np.r_[NOISE, np.nan]
    for direction in ("stable", "two-sided"):
        s = stability_scores(with_gap, direction)
        assert np.isnan(s[-1]) and np.isfinite(s[:-1]).all()
    np.testing.assert_array_equal(stability_scores(with_gap, "two-sided")[:-1], stability_scores(NOISE, "two-sided"))


def test_estimator_contract():
    det = DETECTORS.get("perturbation")()
    assert det.get_params() == {"direction": "stable"} and det.requires == frozenset({"stability"})
    assert not det.uses_neighbours and not det.reads_embeddings and not det.row_local and det.in_default_scan
    np.testing.assert_array_equal(det.fit_score(stability=np.r_[NOISE, np.nan]), np.r_[NOISE, np.nan])
    assert det.n_reference_ == 5 and det.center_ == 0.91
    two = Perturbation(direction="two-sided")
    s = two.fit_score(stability=NOISE)
    np.testing.assert_array_equal(two.score_samples(stability=NOISE), s)      # same scale as fit_score
    np.testing.assert_allclose(two.score_samples(stability=[0.91, 0.97]), [0.0, 0.06 / (1.4826 * 0.06)])
    with pytest.raises(ConfigError, match="Perturbation is not fitted; call fit\\(stability=...\\)"):
        Perturbation().score_samples(stability=NOISE)
    with pytest.raises(ConfigError, match="perturbation needs a noise stability per sample"):
        Perturbation().fit(np.eye(3))
    with pytest.raises(ConfigError, match="unknown direction of perturbation 'up'; choose one of: stable, two-sided"):
        Perturbation(direction="up").fit(stability=NOISE)
    with pytest.raises(ConfigError, match="infinite"):
        Perturbation().fit_score(stability=[0.5, np.inf])
    assert "perturbation" not in DETECTORS.get("fused")().component_names({"image", "text", "captions", "stability"})


def test_a_scan_with_a_stability_record_runs_it_by_default(tmp_path):
    pair_folder(tmp_path / "emb", sizes=(40, 30, 0))
    ids = [f"s0_{r}" for r in range(40)] + [f"s1_{r}" for r in range(30)]
    rng = np.random.default_rng(0)
    noise = rng.uniform(0.6, 1.0, 70)
    keep = np.ones(70, bool)
    keep[[3, 50]] = False                                              # two rows were not probed
    frame = pd.DataFrame({"id": np.array(ids)[keep], "row": np.arange(70)[keep], "noise_stability": noise[keep],
                          "blur_stability": rng.uniform(0.6, 1.0, 68)})
    path = write_stability(frame, tmp_path / "probe")
    scan = Scan.from_folder(tmp_path / "emb").with_record(tmp_path / "probe").find_suspects(k=5)
    assert scan.detectors == [*DEFAULT[:-1], "perturbation", "fused"] and "stability" in scan.available_inputs
    table = scan.scores
    expected = np.where(keep, noise, np.nan)
    np.testing.assert_array_equal(table["perturbation_score"], expected)
    assert sorted(table.loc[~keep, "perturbation_rank"]) == [69, 70]                 # NaN: ranked last
    assert scan.info["detector_info"]["perturbation"] == {"direction": "stable", "n_scored": 68,
                                                          "n_rows_without_record": 2}
    assert scan.records_info["stability"] == {"source": str(path), "n_record_ids": 68, "n_record_ids_unmatched": 0,
                                              "n_rows": 70, "n_rows_without_record": 2}
    assert scan.dynamics is None and scan.dynamics_info is None
    run = json.loads(scan.save(tmp_path / "scan").read_text())
    assert run["stability"] == scan.records_info["stability"] and "stability" in run["inputs"]
    assert "dynamics" not in run
    assert Scan.load(tmp_path / "scan").records_info == {"stability": scan.records_info["stability"]}

    res = run_scan(tmp_path / "emb", tmp_path / "scan2", records=[tmp_path / "probe"], k=5,
                   detectors=["perturbation"], detector_params={"perturbation": {"direction": "two-sided"}})
    assert res.records_info == {"stability": scan.records_info["stability"]} and res.dynamics_info is None
    np.testing.assert_array_equal(res.scores["perturbation_score"], stability_scores(expected, "two-sided"))


def test_a_record_given_as_a_frame_needs_its_kind_and_a_loaded_scan_takes_none(tmp_path):
    x = np.random.default_rng(0).normal(size=(5, 4))
    frame = pd.DataFrame({"id": [str(i) for i in range(5)], "row": range(5), "noise_stability": NOISE})
    with pytest.raises(ConfigError, match="a record given as a DataFrame needs its kind"):
        Scan(x).with_record(frame)
    scan = Scan(x).with_record(frame, kind="stability")
    np.testing.assert_array_equal(scan.records["stability"], NOISE)
    scan.find_suspects(["perturbation", "kdist"], k=2).save(tmp_path / "scan")
    with pytest.raises(ConfigError, match="holds scores, not embeddings"):
        Scan.load(tmp_path / "scan").with_record(frame, kind="stability")
    with pytest.raises(ConfigError, match="'perturbation' needs a perturbation-stability record"):
        Scan(x).find_suspects(["perturbation"], k=2)
