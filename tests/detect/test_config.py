"""ScanConfig: validation, strict detector parameters, overrides, and what run.json records."""
import dataclasses
import json

import numpy as np
import pytest

from clipguard.detect import Scan, ScanConfig, run_scan, score_embeddings
from clipguard.errors import ConfigError
from clipguard.utils.device import DEFAULT_DEVICE
from detect_helpers import image_folder as _folder
from tests_helpers import no_gpu


@pytest.mark.parametrize("kwargs, match", [
    (dict(k=0), "k must be an integer >= 1"),
    (dict(k=2.5), "k must be an integer >= 1"),
    (dict(k=True), "k must be an integer >= 1"),
    (dict(reference="nearest"), "unknown reference mode 'nearest'; choose one of: auto, global"),
    (dict(reference="batch", k=16, batch_size=16), "batch_size must be an integer larger than k=16"),
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
    (dict(reference_size=1), "reference_size must be an integer >= 2"),
    (dict(n_references=0), "n_references must be an integer >= 1"),
    (dict(nprobe=-1), "nprobe must be an integer >= 1"),
    (dict(index="hnsw"), "unknown index 'hnsw'"),
    (dict(backend="annoy"), "unknown kNN backend 'annoy'; choose one of: blocked, faiss"),
    (dict(target_recall=1.5), "target_recall must be a number in"),
    (dict(n_recall=0), "n_recall must be an integer >= 1"),
    (dict(seed=-1), "seed must be an integer >= 0"),
    (dict(suspect_share=0), r"suspect_share must be a number in \(0, 1\]"),
    (dict(detector_params={"nope": {}}), "nope"),
    (dict(detector_params={"fused": 3}), r"detector_params\['fused'\] must be a dict"),
    (dict(device=0), "device must be None or one of 'cpu', 'cuda'"),
    (dict(device="tpu"), "unknown device 'tpu'"),
])
def test_invalid_options_raise_clear_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ScanConfig(**kwargs)


def test_config_is_frozen_json_ready_and_overridable():
    params = {"fused": {"method": "fisher"}}
    cfg = ScanConfig(k=np.int64(8), suspect_share=1, detector_params=params)
    params["fused"]["method"] = "zsum"  # the config keeps its own copy
    assert cfg.detector_params == {"fused": {"method": "fisher"}}
    assert type(cfg.k) is int and type(cfg.suspect_share) is float
    d = dataclasses.asdict(cfg)
    assert list(d) == list(ScanConfig.field_names()) and json.loads(json.dumps(d)) == d
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.k = 3
    assert cfg.replace(seed=4) == dataclasses.replace(cfg, seed=4)
    assert ScanConfig.resolve(None, k=3) == ScanConfig(k=3)
    assert ScanConfig.resolve(cfg) is cfg
    # a batch-mode k check is made against the final combination
    with pytest.raises(ConfigError, match="larger than k=8"):
        cfg.replace(reference="batch", batch_size=8)
    with pytest.raises(ConfigError, match=r"unknown scan option\(s\) 'kk'; valid options: k, reference"):
        ScanConfig.resolve(cfg, kk=3)
    with pytest.raises(ConfigError, match="config must be a ScanConfig"):
        ScanConfig.resolve({"k": 3})


def test_layers_take_a_config_and_record_it(tmp_path):
    _folder(tmp_path / "emb")
    cfg = ScanConfig(k=8, reference="batch", batch_size=64, suspect_share=0.05, seed=1)
    res = run_scan(tmp_path / "emb", tmp_path / "a", detectors=["kdist", "dao"], config=cfg)
    run = json.loads(res.run_json.read_text())
    assert {k: run["config"][k] for k in ScanConfig.field_names()} == dataclasses.asdict(cfg)
    assert run["config"]["detectors"] == ["kdist", "dao"]
    assert run["reference_plan"]["mode"] == "batch"
    # keyword overrides on top of a config; the same as spelling everything out
    b = run_scan(tmp_path / "emb", tmp_path / "b", detectors=["kdist", "dao"],
                 config=ScanConfig(k=3), k=8, reference="batch", batch_size=64,
                 suspect_share=0.05, seed=1)
    assert b.scores.equals(res.scores)
    with pytest.raises(ConfigError, match=r"unknown scan option\(s\) 'refrence'"):
        run_scan(tmp_path / "emb", tmp_path / "c", refrence="global")
    scan = Scan.from_folder(tmp_path / "emb")
    assert scan.find_suspects(["kdist"], config=cfg).config == cfg
    with pytest.raises(ConfigError, match="valid options"):
        scan.find_suspects(["kdist"], n_neighbours=4)
    x = scan.image
    s1, info = score_embeddings(x, ["kdist"], ScanConfig(k=5, reference="global"))
    s2, _ = score_embeddings(x, ["kdist"], k=5, reference="global")
    np.testing.assert_array_equal(s1["kdist"], s2["kdist"])
    assert info["reference_plan"]["mode"] == "global"


@no_gpu  # "auto" is the CPU only without a GPU; tests/detect/test_gpu_paths.py compares the devices
def test_device_option_runs_the_scan_there_and_is_recorded(tmp_path):
    _folder(tmp_path / "emb")
    assert ScanConfig().device == DEFAULT_DEVICE == "auto"  # the one device default (the CPU here)
    cfg = ScanConfig(k=8, reference="batch", batch_size=64)
    plain = run_scan(tmp_path / "emb", tmp_path / "a", detectors=["kdist", "dao"], config=cfg)
    cpu = run_scan(tmp_path / "emb", tmp_path / "b", detectors=["kdist", "dao"], config=cfg,
                   device="cpu")
    assert cpu.scores.equals(plain.scores)
    assert json.loads(cpu.run_json.read_text())["config"]["device"] == "cpu"
    scan = Scan.from_folder(tmp_path / "emb")
    glob = scan.find_suspects(["dao"], k=5, reference="global").scores
    assert scan.find_suspects(["dao"], k=5, reference="global", device="cpu").scores.equals(glob)
    assert ScanConfig(device="auto").device == "auto"  # the CPU here


@no_gpu
def test_a_missing_gpu_is_a_config_error_before_any_work(tmp_path):
    _folder(tmp_path / "emb")
    scan = Scan.from_folder(tmp_path / "emb")
    with pytest.raises(ConfigError, match="torch sees no CUDA GPU here; use --device cpu"):
        ScanConfig(device="cuda")
    with pytest.raises(ConfigError, match="--device cpu"):
        scan.find_suspects(["dao"], device="cuda")
    with pytest.raises(ConfigError, match="--device cpu"):  # checked before any work
        run_scan(tmp_path / "emb", tmp_path / "c", device="cuda")
    assert not (tmp_path / "c").exists()

