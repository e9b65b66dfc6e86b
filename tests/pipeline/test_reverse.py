"""`clipguard reverse` end to end on a small model (outputs, verification record, controls, errors)."""
import json

import pytest
from PIL import Image

from clipguard.analyze import ReverseConfig
from clipguard.data.manifest import read_manifest
from clipguard.models import create_model, save_model
from clipguard.pipeline.reverse import reverse_model
from tests_helpers import assert_one_line_error, run_cli


def test_reverse_writes_the_trigger_and_its_verification(tiny_world, tmp_path):
    save_model(create_model("tiny-vit-p8", seed=0), tmp_path / "m")
    rec = reverse_model(tmp_path / "m", "star", tiny_world / "test" / "manifest.parquet", tmp_path / "r",
                        classes=tiny_world / "classes.json", controls=2, n_images=40,
                        config=ReverseConfig(steps=6, batch_size=16), device="cpu", progress=False)
    assert Image.open(tmp_path / "r" / "trigger.png").size == (32, 32)
    assert Image.open(tmp_path / "r" / "mask.png").mode == "L"
    saved = json.loads((tmp_path / "r" / "trigger.json").read_text())
    assert saved["target"] == "star" and not saved["target_is_added_class"] and saved["n_classes"] == 8
    assert len(saved["controls"]) == 2 and all(c["caption"] != "star" for c in saved["controls"])
    assert 0.0 <= rec["mask_l1"] <= 1.0 and rec["n_held_out"] <= 20
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["command"] == "reverse" and run["config"]["search"]["steps"] == 6
    # the controls are held to the target trigger's mask size
    assert saved["control_max_mask"] == pytest.approx(max(rec["mask_l1"], 1e-4))
    assert all(c["mask_l1"] <= 1.05 * saved["control_max_mask"] or c["success"] == 0 for c in saved["controls"])
    # a caption of the training data that is no class is added as one
    train = read_manifest(tiny_world / "train" / "manifest.parquet")
    caption = next(c for c in train.df["caption"] if c not in set(read_manifest(tiny_world / "test").df["caption"]))
    rec = reverse_model(tmp_path / "m", caption, tiny_world / "test" / "manifest.parquet", tmp_path / "r2",
                        classes=tiny_world / "classes.json", data=tiny_world / "train" / "manifest.parquet",
                        controls=0, n_images=40, config=ReverseConfig(steps=2, batch_size=16), device="cpu",
                        progress=False)
    assert rec["target_is_added_class"] and rec["n_classes"] == 9 and rec["control_held_out_asr_max"] is None


def test_reverse_bad_input_is_one_line(tiny_world, tmp_path):
    save_model(create_model("tiny-vit-p8", seed=0), tmp_path / "m")
    r = run_cli("reverse", tmp_path / "m", "--target", " ", "--images", tiny_world / "test" / "manifest.parquet",
                "--out", tmp_path / "r")
    assert_one_line_error(r, "--target must be a caption")
    r = run_cli("reverse", tmp_path / "m", "--target", "star", "--images", tmp_path / "none.parquet",
                "--out", tmp_path / "r")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = run_cli("reverse", tmp_path / "m", "--target", "a photo of a purple moon", "--images",
                tiny_world / "test" / "manifest.parquet", "--classes", tiny_world / "classes.json", "--out", tmp_path / "r")
    assert_one_line_error(r, "'a photo of a purple moon' is neither a class nor a caption", "--data")
