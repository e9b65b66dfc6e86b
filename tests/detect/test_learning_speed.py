"""``learning_speed``: the training-dynamics record as a scan detector -- direction semantics on a
hand-made record, the join by id (shuffled ids, rows without a record, ids of no row), and the
errors of a record that belongs to other data."""
import json

import numpy as np
import pandas as pd
import pytest

from clipguard.detect import DETECTORS, Scan, score_embeddings
from clipguard.detect.detectors.learning_speed import LearningSpeed, speed_scores, speeds_of_rows
from clipguard.detect.neighbours.stats import robust_z
from clipguard.errors import ConfigError
from clipguard.train import learning_speed

#: five pairs in the same cosine order at both epochs: learning speeds 0.2, 0.4, 0.6, 0.8, 1.0
RECORD = pd.DataFrame({"id": list("abcde") * 2, "row": list(range(5)) * 2, "epoch": [1] * 5 + [2] * 5,
                       "cosine": [0.1, 0.2, 0.3, 0.4, 0.5, 0.3, 0.35, 0.4, 0.6, 0.9]})
SPEED = np.array([0.2, 0.4, 0.6, 0.8, 1.0])


def test_directions_on_a_hand_made_record():
    speed = learning_speed(RECORD).to_numpy()
    np.testing.assert_allclose(speed, SPEED)
    # two-sided: |x - median| / (1.4826 * MAD) with median 0.6 and MAD 0.2
    expected = np.abs(SPEED - 0.6) / (1.4826 * 0.2)
    np.testing.assert_allclose(speed_scores(speed), expected)
    np.testing.assert_array_equal(speed_scores(speed), np.abs(robust_z(speed)))
    np.testing.assert_array_equal(speed_scores(speed, "fast"), speed)                # learned faster = higher
    np.testing.assert_allclose(speed_scores(speed, "slow"), 1.0 - speed)             # learned later = higher
    with_gap = np.r_[speed, np.nan]
    for direction in ("two-sided", "fast", "slow"):
        s = speed_scores(with_gap, direction)
        assert np.isnan(s[-1]) and np.isfinite(s[:-1]).all()
    np.testing.assert_array_equal(speed_scores(with_gap)[:-1], speed_scores(speed))  # NaN rows do not move z


def test_estimator_contract():
    det = DETECTORS.get("learning_speed")()
    assert det.get_params() == {"direction": "two-sided"} and det.requires == frozenset({"dynamics"})
    assert not det.uses_neighbours
    s = det.fit_score(dynamics=np.r_[SPEED, np.nan])
    assert det.n_reference_ == 5 and det.center_ == 0.6
    np.testing.assert_array_equal(det.score_samples(dynamics=np.r_[SPEED, np.nan]), s)  # same scale as fit_score
    np.testing.assert_allclose(det.score_samples(dynamics=[0.6, 0.9]), [0.0, 0.3 / (1.4826 * 0.2)])
    with pytest.raises(ConfigError, match="LearningSpeed is not fitted; call fit\\(dynamics=...\\)"):
        LearningSpeed().score_samples(dynamics=SPEED)
    with pytest.raises(ConfigError, match="learning_speed needs a learning speed per sample"):
        LearningSpeed().fit(np.eye(3))
    with pytest.raises(ConfigError, match="unknown direction of learning_speed 'up'; choose one of: two-sided, "
                                          "fast, slow"):
        LearningSpeed(direction="up").fit(dynamics=SPEED)


def _scan(ids, seed=0):
    x = np.random.default_rng(seed).normal(size=(len(ids), 6)).astype(np.float32)
    return Scan(x, ids=ids)


def test_join_by_id_with_shuffled_ids_and_missing_rows(tmp_path):
    record = pd.concat([RECORD, pd.DataFrame({"id": ["z", "z"], "row": [5, 5], "epoch": [1, 2],
                                              "cosine": [0.0, 0.0]})], ignore_index=True)
    ids = ["c", "x", "a", "e", "b", "y", "d"]   # shuffled; x and y have no record; z matches no row
    expected = learning_speed(record).reindex(ids).to_numpy()
    record.to_parquet(tmp_path / "dynamics.parquet", index=False)
    scan = _scan(ids).with_dynamics(tmp_path)
    np.testing.assert_array_equal(scan.dynamics, expected)
    assert np.isnan(scan.dynamics[[1, 5]]).all() and np.isfinite(np.delete(scan.dynamics, [1, 5])).all()
    assert scan.dynamics_info == {"source": str(tmp_path / "dynamics.parquet"), "n_record_ids": 6,
                                  "n_record_ids_unmatched": 1, "n_rows": 7, "n_rows_without_record": 2}
    assert "dynamics" in scan.available_inputs

    scan.find_suspects(k=3)                                              # a default scan adds learning_speed
    assert "learning_speed" in scan.detectors and "learning_speed" not in scan.skipped_detectors
    table = scan.scores
    np.testing.assert_array_equal(table["learning_speed_score"], speed_scores(expected))
    assert sorted(table.loc[table["learning_speed_score"].isna(), "learning_speed_rank"]) == [6, 7]  # NaN: last
    assert scan.info["detector_info"]["learning_speed"] == {"direction": "two-sided", "n_scored": 5,
                                                            "n_rows_without_record": 2}
    run = json.loads(scan.save(tmp_path / "scan").read_text())
    assert run["dynamics"] == scan.dynamics_info and "dynamics" in run["inputs"]
    assert run["detector_info"]["learning_speed"]["n_rows_without_record"] == 2
    assert Scan.load(tmp_path / "scan").dynamics_info == scan.dynamics_info


def test_the_score_does_not_depend_on_the_reference_and_takes_its_direction():
    scan = _scan(list("abcde")).with_dynamics(RECORD)
    base = scan.find_suspects(["learning_speed"], k=2).scores["learning_speed_score"].to_numpy()
    multi = scan.find_suspects(["learning_speed"], k=2, reference="multi_reference", reference_size=3,
                               n_references=3).scores["learning_speed_score"].to_numpy()
    np.testing.assert_array_equal(base, multi)
    slow = scan.find_suspects(["learning_speed"], k=2, detector_params={"learning_speed": {"direction": "slow"}})
    np.testing.assert_allclose(slow.scores["learning_speed_score"], 1.0 - SPEED)
    speed, info = speeds_of_rows(RECORD.assign(id=[str(i) for i in range(5)] * 2), np.arange(5))
    np.testing.assert_allclose(speed, SPEED)                             # integer ids match their strings
    assert info["n_rows_without_record"] == info["n_record_ids_unmatched"] == 0


def test_a_record_of_other_data_and_a_missing_input_are_config_errors(tmp_path):
    other = RECORD.assign(id=[f"other{i}" for i in range(5)] * 2)
    other.to_parquet(tmp_path / "dynamics.parquet", index=False)
    with pytest.raises(ConfigError, match=r"dynamics.parquet: none of its 5 ids matches an id of the scanned rows "
                                          r".*; was the model trained on this dataset\?") as err:
        _scan(list("abcde")).with_dynamics(tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="no training-dynamics record"):
        _scan(list("abcde")).with_dynamics(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="'learning_speed' needs a training-dynamics record"):
        _scan(list("abcde")).find_suspects(["learning_speed"], k=2)
    with pytest.raises(ConfigError, match="have shape \\(4,\\) but must be \\(5,\\)"):
        score_embeddings(np.eye(5), ["learning_speed"], dynamics=SPEED[:4], k=2)
    with pytest.raises(ConfigError, match="infinite"):
        score_embeddings(np.eye(5), ["learning_speed"], dynamics=np.r_[SPEED[:4], np.inf], k=2)
