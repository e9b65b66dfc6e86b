"""`clipguard audit` and `clipguard audit-calibrate` end to end on a small model (outputs, calibration, errors)."""
import json

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file, save_file

from clipguard.analyze import ReverseConfig
from clipguard.errors import ConfigError
from clipguard.models import create_model, save_model
from clipguard.pipeline.audit import audit_model, calibrate_audits, candidate_targets
from tests_helpers import assert_one_line_error, run_cli

FAST = ReverseConfig(steps=4, batch_size=16)


def _audit(model, world, out, **kw):
    return audit_model(model, world / "test" / "manifest.parquet", out, classes=world / "classes.json", n_images=40,
                       config=FAST, device="cpu", progress=False, **kw)


def test_audit_writes_a_verdict_and_calibrates(tiny_world, tmp_path):
    save_model(create_model("tiny-vit-p8", seed=0), tmp_path / "m")
    v = _audit(tmp_path / "m", tiny_world, tmp_path / "a")
    saved = json.loads((tmp_path / "a" / "verdict.json").read_text())
    assert set(saved) >= {"verdict", "target", "anomaly_index", "attack_success_rate", "threshold", "calibrated"}
    assert saved["verdict"] in ("backdoored", "clean") and saved["threshold"] == 2.0 and not saved["calibrated"]
    assert (saved["target"] is None) == (saved["verdict"] == "clean") and v == saved
    cands = pd.read_csv(tmp_path / "a" / "candidates.csv")
    assert len(cands) == 8 and set(cands["source"]) == {"class"}
    assert saved["closest_target"] == cands.loc[cands["anomaly_index"].idxmax(), "target"]
    assert cands.loc[cands["anomaly_index"].idxmax(), "mask_l1"] == cands["mask_l1"].min()
    assert (tmp_path / "a" / saved["trigger"]).is_file() and (tmp_path / "a" / "triggers" / "07_mask.png").is_file()
    assert json.loads((tmp_path / "a" / "run.json").read_text())["command"] == "audit"
    # calibration on three audits of clean models: with n = 3 the threshold is their largest statistic
    for s in (1, 2):
        save_model(create_model("tiny-vit-p8", seed=s), tmp_path / f"m{s}")
        _audit(tmp_path / f"m{s}", tiny_world, tmp_path / f"a{s}")
    dirs = [tmp_path / "a", tmp_path / "a1", tmp_path / "a2"]
    verdicts = [json.loads((d / "verdict.json").read_text()) for d in dirs]
    stats = [v["anomaly_index"] for v in verdicts]
    # Neural Cleanse's index, calibrated: with n = 3 the threshold is the largest clean statistic
    r = run_cli("audit-calibrate", *dirs, "--out", tmp_path / "cal.json", "--no-reference")
    assert r.returncode == 0, r.stderr
    cal = json.loads((tmp_path / "cal.json").read_text())
    assert cal["conformal_threshold"] == max(stats) and cal["k"] == 3 and cal["false_alarm_bound"] == pytest.approx(0.25)
    assert cal["threshold"] == max(max(stats), 2.0)
    assert cal["reference"] == {}
    again = _audit(tmp_path / "m", tiny_world, tmp_path / "b", calibration=tmp_path / "cal.json")
    assert again["calibrated"] and not again["per_target_reference"] and again["threshold"] == cal["threshold"]
    assert again["verdict"] == "clean"  # the largest calibration statistic is not above itself
    # with the per-target reference (the default): the reference is the mean log mask of each class
    ref = calibrate_audits(dirs, tmp_path / "cal_ref.json")
    for target in ("star", "ring"):
        sizes = [next(c["mask_l1"] for c in v["candidates"] if c["target"] == target) for v in verdicts]
        assert ref.reference[target] == pytest.approx(float(np.mean(np.log(sizes))))
    judged = _audit(tmp_path / "m", tiny_world, tmp_path / "c", calibration=tmp_path / "cal_ref.json")
    assert judged["per_target_reference"] and judged["threshold"] == ref.threshold


def test_candidates_come_from_classes_clusters_or_captions(tiny_world, tmp_path):
    targets, sources = candidate_targets(classes=tiny_world / "classes.json", scan=None, images_captions=[])
    assert len(targets) == 8 and sources == ["class"] * 8
    targets, sources = candidate_targets(classes=None, scan=None, images_captions=["a", "b", "a", "c"])
    assert targets == ["a", "b", "c"] and sources == ["caption"] * 3
    (tmp_path / "scan" / "discover").mkdir(parents=True)
    pd.DataFrame({"kind": ["backdoor", "noisy pairs", "backdoor"], "name": ["a cake", "x", "star"]}).to_parquet(
        tmp_path / "scan" / "discover" / "clusters.parquet")
    targets, sources = candidate_targets(classes=tiny_world / "classes.json", scan=tmp_path / "scan",
                                         images_captions=[])
    assert targets[-1] == "a cake" and sources[-1] == "cluster" and targets.count("star") == 1


def test_audit_bad_input_is_one_line(tiny_world, tmp_path):
    save_model(create_model("tiny-vit-p8", seed=0), tmp_path / "m")
    pd.DataFrame({"id": [], "image": [], "caption": []}).to_parquet(tmp_path / "empty.parquet")
    r = run_cli("audit", tmp_path / "m", "--images", tmp_path / "empty.parquet", "--classes",
                tiny_world / "classes.json", "--out", tmp_path / "x")
    assert_one_line_error(r, "the image set is empty")
    # a checkpoint holding only the image tower
    save_model(create_model("tiny-vit-p8", seed=0), tmp_path / "v")
    state = load_file(str(tmp_path / "v" / "model.safetensors"))
    save_file({k: t for k, t in state.items() if k.startswith("visual.")}, str(tmp_path / "v" / "model.safetensors"))
    r = run_cli("audit", tmp_path / "v", "--images", tiny_world / "test" / "manifest.parquet", "--out", tmp_path / "x")
    assert_one_line_error(r, "no text tower")
    r = run_cli("audit", tmp_path / "m", "--images", tiny_world / "test" / "manifest.parquet", "--out", tmp_path / "x",
                "--calibration", tmp_path / "missing.json")
    assert_one_line_error(r, "audit calibration not found")
    two = pd.read_parquet(tiny_world / "test" / "manifest.parquet")
    two["caption"] = ["a star", "a ring"] * (len(two) // 2)
    two["image"] = [str(tiny_world / "test" / p) for p in two["image"]]
    two.to_parquet(tmp_path / "two.parquet")
    with pytest.raises(ConfigError, match="at least 3 candidate targets, found 2"):
        audit_model(tmp_path / "m", tmp_path / "two.parquet", tmp_path / "x", n_images=40, config=FAST, device="cpu",
                    progress=False)
