"""The demo pipeline: every stage's outputs, summary.json, the printed table, resume."""
import json

import pytest

from clipguard.pipeline import DemoConfig, format_summary, run_demo
from clipguard.pipeline.demo import DEMO_DEVICE


def test_demo_defaults_stay_on_the_cpu():
    assert DEMO_DEVICE == "cpu" and DemoConfig().device == "cpu"  # the README's figures


@pytest.mark.slow
def test_small_demo_writes_every_stage_and_resumes(tmp_path):
    cfg = DemoConfig(out=str(tmp_path / "demo"), n_train=400, n_test=100, epochs=1, batch_size=64,
                     scan_references=("auto", "batch"), scan_batch_size=256)
    summary = run_demo(cfg, progress=False)
    out = tmp_path / "demo"
    for path in ("world/classes.json", "poisoned/attack.json", "model/model.safetensors",
                 "embeddings/img_emb/img_emb_0.npy", "scan_auto/run.json", "scan_batch/run.json",
                 "summary.json", "run.json"):
        assert (out / path).is_file(), path
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["n_train"] == 400 and summary["n_test"] == 100 and summary["n_poisoned"] == 20
    assert set(summary["detection_by_reference"]) == {"auto", "batch"}
    assert summary["detection"] == summary["detection_by_reference"]["auto"]
    assert 0 <= summary["clean_accuracy"] <= 1 and 0 <= summary["attack_success_rate"] <= 1
    assert json.loads((out / "run.json").read_text())["config"]["device"] == "cpu"
    table = format_summary(summary)
    assert "clean accuracy (CA)" in table and "auto AUROC" in table and "fused" in table
    # resume keeps the finished stages (the world is not regenerated)
    mtime = (out / "world" / "classes.json").stat().st_mtime_ns
    again = run_demo(DemoConfig(**{**cfg.__dict__, "resume": True}), progress=False)
    assert (out / "world" / "classes.json").stat().st_mtime_ns == mtime
    assert again["n_poisoned"] == summary["n_poisoned"]
