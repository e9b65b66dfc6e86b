"""The scan folder written by Scan.save and read back by Scan.load (the store module)."""
import json
import logging

import numpy as np
import pandas as pd
import pytest

from clipguard.detect import Scan, ScanConfig, run_scan
from clipguard.detect.options import DEFAULT_RULE
from clipguard.detect.store import default_detector
from clipguard.detect.store import TRAINED_ON_THIS_SET, embedding_model, read_scan
from clipguard.errors import ConfigError
from detect_helpers import pair_folder
from tests_helpers import LogRecords


def _assert_same_scan(loaded: Scan, scan: Scan) -> None:
    pd.testing.assert_frame_equal(loaded.scores, scan.scores)  # every column, dtypes, order, index
    assert list(loaded.scores.columns[:3]) == ["id", "shard", "row_in_shard"]
    assert loaded.detectors == scan.detectors
    assert loaded.skipped_detectors == scan.skipped_detectors
    assert loaded.info == scan.info
    assert loaded.metrics == scan.metrics
    assert loaded.config == scan.config and isinstance(loaded.config, ScanConfig)
    assert loaded.suspect_share == scan.suspect_share
    assert loaded.available_inputs == scan.available_inputs and len(loaded) == len(scan)


def test_load_round_trips_save_of_a_folder_scan(tmp_path):
    pair_folder(tmp_path / "emb")  # shards of 120, 100 and 0 rows, captions, text, ground truth
    params = {"fused": {"two_sided": ("caption_disagreement",), "method": "fisher"}}
    scan = Scan.from_folder(tmp_path / "emb").find_suspects(k=8, suspect_share=0.05,
                                                            detector_params=params)
    scan.save(tmp_path / "scan")
    loaded = Scan.load(tmp_path / "scan")
    _assert_same_scan(loaded, scan)
    assert scan.metrics is not None and "detector_info" in loaded.info
    assert loaded.config.detector_params == {"fused": {"two_sided": ["caption_disagreement"],
                                                       "method": "fisher"}}
    assert [p.name for p in loaded.score_paths] == ["scores_0.parquet", "scores_1.parquet",
                                                    "scores_2.parquet"]
    # what a loaded scan can do: report, list suspects, save the same files again
    assert loaded.report(n=3) == scan.report(n=3)
    pd.testing.assert_frame_equal(loaded.get_suspects("fused"), scan.get_suspects("fused"))
    loaded.save(tmp_path / "again")
    for i in range(3):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "again" / "scores" / f"scores_{i}.parquet"),
                                      pd.read_parquet(tmp_path / "scan" / "scores" / f"scores_{i}.parquet"))
    _assert_same_scan(Scan.load(tmp_path / "again"), scan)
    # ... but not rescore: it holds no embeddings
    with pytest.raises(ConfigError, match="holds scores, not embeddings"):
        loaded.find_suspects(["kdist"])


def test_load_round_trips_a_scan_of_arrays_and_run_scan(tmp_path):
    rng = np.random.default_rng(0)
    scan = Scan(rng.normal(size=(150, 8)), ids=[f"x{i}" for i in range(150)])
    scan.find_suspects(["kdist", "fused"], k=5, reference="multi_reference", reference_size=60,
                       n_references=2).save(tmp_path / "a")
    loaded = Scan.load(tmp_path / "a")
    _assert_same_scan(loaded, scan)
    assert loaded.metrics is None and loaded.info["recall_at_k"] == 1.0
    # integer ids (the default) come back as integers
    ints = Scan(rng.normal(size=(40, 4))).find_suspects(["kdist"], k=3)
    ints.save(tmp_path / "b")
    _assert_same_scan(Scan.load(tmp_path / "b"), ints)
    # the folder of run_scan is the same contract
    pair_folder(tmp_path / "emb", text=False)
    res = run_scan(tmp_path / "emb", tmp_path / "c", k=8)
    loaded = Scan.load(tmp_path / "c")
    pd.testing.assert_frame_equal(loaded.scores, res.scores)
    assert loaded.skipped_detectors == res.skipped_detectors and loaded.metrics == res.metrics


def test_load_reads_only_the_shards_of_its_run(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "scan" / "scores").mkdir(parents=True)
    pd.DataFrame({"id": [1]}).to_parquet(tmp_path / "scan" / "scores" / "scores_7.parquet")  # stale
    scan = Scan(rng.normal(size=(30, 4))).find_suspects(["kdist"], k=3)
    scan.save(tmp_path / "scan")
    saved = read_scan(tmp_path / "scan")
    assert [p.name for p in saved.score_paths] == ["scores_0.parquet"]
    _assert_same_scan(Scan.load(tmp_path / "scan"), scan)


def test_load_errors_name_the_folder_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"no scores/scores_\*\.parquet; pass the --out folder"):
        Scan.load(tmp_path)
    scan = Scan(np.random.default_rng(2).normal(size=(30, 4))).find_suspects(["kdist"], k=3)
    scan.save(tmp_path / "s")
    run = json.loads((tmp_path / "s" / "run.json").read_text())
    (tmp_path / "s" / "run.json").unlink()
    with pytest.raises(ConfigError, match="no run.json"):
        Scan.load(tmp_path / "s")
    (tmp_path / "s" / "run.json").write_text(json.dumps({**run, "command": "embed"}))
    with pytest.raises(ConfigError, match="not the run record of a scan"):
        Scan.load(tmp_path / "s")
    (tmp_path / "s" / "run.json").write_text(json.dumps({**run, "shard_ids": [0, 1]}))
    with pytest.raises(ConfigError, match=r"scores_1\.parquet of this scan are missing"):
        Scan.load(tmp_path / "s")


def test_run_json_names_the_default_ranking(tmp_path):
    pair_folder(tmp_path / "emb")
    run_scan(tmp_path / "emb", tmp_path / "all", k=5)
    assert json.loads((tmp_path / "all" / "run.json").read_text())["default_detector"] == "fused"
    run_scan(tmp_path / "emb", tmp_path / "two", detectors=["dao", "kdist"], k=5)
    assert json.loads((tmp_path / "two" / "run.json").read_text())["default_detector"] == "dao"
    assert json.loads((tmp_path / "two" / "run.json").read_text())["default_rule"] == DEFAULT_RULE
    assert default_detector(["fused", "perturbation", "dao"]) == "perturbation"  # a probe record was joined
    assert default_detector(["dao", "fused"]) == "fused" and default_detector(["kdist", "dao"]) == "kdist"


def test_run_json_notes_embeddings_from_a_model_trained_on_the_set(tmp_path):
    """The embedding folder's run.json (clipguard embed) says its model was trained on the embedded manifest:
    the scan records it with the note; a model trained elsewhere is recorded without a note; no record, none."""
    pair_folder(tmp_path / "emb")
    run_scan(tmp_path / "emb", tmp_path / "plain", k=5)
    assert "embedding_model" not in json.loads((tmp_path / "plain" / "run.json").read_text())
    embed_run = {"command": "embed", "model_trained_on": "/data/train.parquet", "model_trained_on_this_set": True}
    (tmp_path / "emb" / "run.json").write_text(json.dumps(embed_run))
    run_scan(tmp_path / "emb", tmp_path / "same", k=5)
    got = json.loads((tmp_path / "same" / "run.json").read_text())["embedding_model"]
    assert got == {"trained_on": "/data/train.parquet", "trained_on_this_set": True, "note": TRAINED_ON_THIS_SET}
    (tmp_path / "emb" / "run.json").write_text(json.dumps({**embed_run, "model_trained_on_this_set": False}))
    assert embedding_model(tmp_path / "emb") == {"trained_on": "/data/train.parquet", "trained_on_this_set": False}
    (tmp_path / "emb" / "run.json").write_text("{not json")
    log, handler = logging.getLogger("clipguard"), LogRecords()
    log.addHandler(handler)
    try:
        assert embedding_model(tmp_path / "emb") is None
    finally:
        log.removeHandler(handler)
    assert any("the embedding model's training set is not checked" in m for m in handler.messages)
