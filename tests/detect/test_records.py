"""The per-row records joined by id (``clipguard.detect.detectors.records``): the kind of a folder or
parquet file, the join (missing ids -> NaN, counted), and the errors of a record that cannot be used."""
import numpy as np
import pandas as pd
import pytest

from clipguard.detect import score_embeddings
from clipguard.detect.detectors.records import (
    RECORD_KINDS,
    as_records,
    join_record,
    record_kind_of,
    record_sources,
)
from clipguard.detect.detectors.learning_speed import speeds_of_rows
from clipguard.embed import write_stability
from clipguard.errors import ConfigError
from clipguard.train import learning_speed

DYNAMICS = pd.DataFrame({"id": list("abc") * 2, "row": [0, 1, 2] * 2, "epoch": [1] * 3 + [2] * 3,
                         "cosine": [0.1, 0.2, 0.3, 0.2, 0.1, 0.3]})
STABILITY = pd.DataFrame({"id": list("abcz"), "row": [0, 1, 2, 3], "noise_stability": [0.9, 0.5, 0.7, 0.1],
                          "blur_stability": [0.2, 0.3, 0.4, 0.5]})


def test_the_kinds_and_their_inputs():
    assert list(RECORD_KINDS) == ["dynamics", "stability"]
    assert {k.input for k in RECORD_KINDS.values()} == set(RECORD_KINDS)
    assert RECORD_KINDS["stability"].file == "stability.parquet" and RECORD_KINDS["dynamics"].file == "dynamics.parquet"
    assert RECORD_KINDS["stability"].detector == "perturbation"


def test_kind_of_a_folder_a_file_both_and_neither(tmp_path):
    (tmp_path / "model").mkdir()
    DYNAMICS.to_parquet(tmp_path / "model" / "dynamics.parquet", index=False)
    write_stability(STABILITY, tmp_path / "probe")
    assert record_kind_of(tmp_path / "model") == "dynamics"
    assert record_kind_of(tmp_path / "probe") == "stability"
    assert record_kind_of(tmp_path / "model" / "dynamics.parquet") == "dynamics"
    assert record_kind_of(tmp_path / "probe" / "stability.parquet") == "stability"
    STABILITY.to_parquet(tmp_path / "renamed.parquet", index=False)          # a file: by its columns
    assert record_kind_of(tmp_path / "renamed.parquet") == "stability"
    write_stability(STABILITY, tmp_path / "model")                           # both files in one folder
    with pytest.raises(ConfigError, match="holds dynamics.parquet and stability.parquet; name the file"):
        record_kind_of(tmp_path / "model")
    assert record_kind_of(tmp_path / "model" / "stability.parquet") == "stability"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty: no record there; give a training-dynamics record"):
        record_kind_of(tmp_path / "empty")
    with pytest.raises(ConfigError, match="no record there"):
        record_kind_of(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="no such record file"):
        record_kind_of(tmp_path / "nothing.parquet")
    pd.DataFrame({"id": ["a"], "x": [1.0]}).to_parquet(tmp_path / "other.parquet", index=False)
    with pytest.raises(ConfigError, match=r"other.parquet: its columns \(id, x\) are neither of"):
        record_kind_of(tmp_path / "other.parquet")


def test_record_sources_infer_and_refuse_two_of_a_kind(tmp_path):
    write_stability(STABILITY, tmp_path / "probe")
    assert record_sources("model", [tmp_path / "probe"]) == [("dynamics", "model"), ("stability", tmp_path / "probe")]
    assert record_sources(None, str(tmp_path / "probe")) == [("stability", str(tmp_path / "probe"))]
    with pytest.raises(ConfigError, match="the perturbation-stability record given twice"):
        record_sources(None, [tmp_path / "probe", tmp_path / "probe" / "stability.parquet"])


def test_join_by_id_missing_ids_are_nan_and_counted(tmp_path, caplog):
    path = write_stability(STABILITY, tmp_path / "probe")
    ids = ["c", "x", "a", "b"]                   # x has no record; z matches no row
    values, info = join_record("stability", tmp_path / "probe", ids)
    np.testing.assert_array_equal(values, [0.7, np.nan, 0.9, 0.5])
    assert info == {"source": str(path), "n_record_ids": 4, "n_record_ids_unmatched": 1, "n_rows": 4,
                    "n_rows_without_record": 1}
    assert "1 of 4 scanned rows have no record (perturbation scores them NaN" in caplog.text
    frame_values, frame_info = join_record("stability", STABILITY, ids)
    np.testing.assert_array_equal(frame_values, values)
    assert frame_info["source"] == "the perturbation-stability record"
    speed, dyn = join_record("dynamics", DYNAMICS, np.array(["b", "a", "c"]))
    np.testing.assert_array_equal(speed, learning_speed(DYNAMICS).reindex(["b", "a", "c"]).to_numpy())
    assert dyn["n_rows_without_record"] == dyn["n_record_ids_unmatched"] == 0
    same = speeds_of_rows(DYNAMICS, ["b", "a", "c"])                           # the thin wrapper
    np.testing.assert_array_equal(same[0], speed)
    assert same[1] == dyn
    ints, _ = join_record("stability", STABILITY.assign(id=["0", "1", "2", "3"]), np.arange(3))
    np.testing.assert_array_equal(ints, [0.9, 0.5, 0.7])                      # integer ids match their strings


def test_no_match_and_a_record_without_noise_stability_are_config_errors(tmp_path):
    write_stability(STABILITY, tmp_path / "probe")
    with pytest.raises(ConfigError, match=r"stability.parquet: none of its 4 ids matches an id of the scanned rows "
                                          r".*; was the model trained on this dataset\?") as err:
        join_record("stability", tmp_path / "probe", ["p", "q"])
    assert "\n" not in str(err.value)
    write_stability(STABILITY.drop(columns="noise_stability"), tmp_path / "blur")
    with pytest.raises(ConfigError, match=r"blur/stability.parquet: the perturbation-stability record has no "
                                          r"noise_stability column \(columns: id, row, blur_stability\); .*probe "
                                          r"with the noise perturbation") as err:
        join_record("stability", tmp_path / "blur", list("abc"))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="has no noise_stability column"):
        join_record("stability", STABILITY.drop(columns="noise_stability"), list("abc"))
    with pytest.raises(ConfigError, match="repeats the id 'a'"):
        join_record("stability", pd.concat([STABILITY, STABILITY.head(1)]), list("abc"))
    with pytest.raises(ConfigError, match="no perturbation-stability record"):
        join_record("stability", tmp_path / "nothing", list("abc"))
    with pytest.raises(ConfigError, match="unknown record kind 'speed'; choose one of: dynamics, stability"):
        join_record("speed", STABILITY, list("abc"))


def test_the_engine_takes_records_by_input_name():
    x = np.random.default_rng(0).normal(size=(4, 3))
    noise = np.array([0.9, 0.5, np.nan, 0.7])
    scores, _ = score_embeddings(x, ["perturbation", "learning_speed"], k=2,
                                 records={"stability": noise}, dynamics=[0.2, 0.4, 0.6, np.nan])
    np.testing.assert_array_equal(scores["perturbation"], noise)
    assert np.isnan(scores["learning_speed"][3])
    with pytest.raises(ConfigError, match="given twice"):
        score_embeddings(x, ["learning_speed"], k=2, records={"dynamics": noise}, dynamics=noise)
    with pytest.raises(ConfigError, match="unknown record input 'speed'"):
        score_embeddings(x, ["kdist"], k=2, records={"speed": noise})
    with pytest.raises(ConfigError, match=r"the noise stabilities \(stability\) have shape \(3,\) but must be \(4,\)"):
        score_embeddings(x, ["perturbation"], k=2, records={"stability": noise[:3]})
    with pytest.raises(ConfigError, match="'perturbation' needs a perturbation-stability record"):
        score_embeddings(x, ["perturbation"], k=2)
    assert as_records({"stability": None}) == {}


def test_a_scan_with_a_record_never_takes_the_gpu_fast_path(monkeypatch):
    import clipguard.detect.engine as engine

    def refuse(*args, **kwargs):
        raise AssertionError("the GPU fast path was tried although a record was given")

    monkeypatch.setattr(engine, "_on_device", refuse)
    x = np.random.default_rng(0).normal(size=(6, 3))
    scores, _ = score_embeddings(x, ["kdist"], k=2, records={"stability": np.linspace(0.5, 1.0, 6)})
    assert scores["kdist"].shape == (6,)
    scores, _ = score_embeddings(x, ["kdist"], k=2, dynamics=np.linspace(0.1, 1.0, 6))
    assert scores["kdist"].shape == (6,)
