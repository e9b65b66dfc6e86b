"""No user error ends in a traceback: each case below is one ``error: ...`` line on stderr and exit code 2.

The commands run in-process through ``clipguard.cli.main`` (one of them also as a subprocess, the way a
user runs it). Log warnings about skipped rows may precede the error line; nothing else may.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clipguard.data.manifest import write_manifest
from clipguard.models import create_model, save_model
from tests_helpers import assert_one_line_error, make_bad_manifest, run_cli


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "m"
    save_model(create_model("tiny-rn", seed=0), out)
    return out


def test_training_where_every_row_is_skipped(tmp_path):
    manifest = make_bad_manifest(tmp_path, n_good=0)  # a missing image, a corrupt one, an empty caption
    r = run_cli("train", manifest, "--out", tmp_path / "m", "--epochs", "1")
    assert_one_line_error(r, "no usable image-caption pair", "all 3 rows skipped", "skipped.csv")
    assert (tmp_path / "m" / "skipped.csv").is_file()


@pytest.mark.parametrize("option,value,text", [("--batch-size", "0", "batch_size must be an integer >= 1"),
                                               ("--epochs", "0", "epochs must be an integer >= 1"),
                                               ("--lr", "-1", "lr must be a number in (0, inf)"),
                                               ("--adaptive-k", "0", "adaptive_k must be an integer >= 1")])
def test_training_settings_out_of_range(tiny_world, tmp_path, option, value, text):
    r = run_cli("train", tiny_world / "train" / "manifest.parquet", "--out", tmp_path / "m",
                            option, value)
    assert_one_line_error(r, text)


def test_adaptive_training_needs_ground_truth(tiny_world, tmp_path):
    r = run_cli("train", tiny_world / "train" / "manifest.parquet", "--out", tmp_path / "m",
                            "--adaptive-density", "1.0")
    assert_one_line_error(r, "--adaptive-density needs the ground-truth 'poisoned' column")


@pytest.mark.parametrize("params,text", [
    (["size=abc"], "badnets size must be an integer >= 1 or None, got 'abc'"),
    (["size=0"], "badnets size must be an integer >= 1"),
    (["colour=red"], "unknown parameter of attack 'badnets': 'colour'; valid: cell, location, pattern, size, "
                     "test_location"),
    (["location=middle"], "unknown badnets location 'middle'; choose one of: random, center"),
    (["size=200"], "badnets: patch of 200 px does not fit a 32x32 image"),
])
def test_bad_trigger_parameters(tiny_world, tmp_path, params, text):
    args = [x for p in params for x in ("--param", p)]
    r = run_cli("poison", tiny_world / "train" / "manifest.parquet", "--out", tmp_path / "p",
                            "--target", "star", "--count", "3", *args)
    assert_one_line_error(r, text)


@pytest.mark.parametrize("attack,params,text", [
    ("blended", ["alpha=abc"], "blended alpha must be a number in (0, 1]"),
    ("blended", ["pattern=/nonexistent.png"], "blended: cannot read pattern image"),
    ("sig", ["frequency=-2"], "sig frequency must be a number in (0, inf)"),
    ("wanet", ["k=1"], "wanet k must be an integer >= 2"),
    ("nashville", ["strenght=1"], "unknown parameter of attack 'nashville': 'strenght'; valid: strength"),
    ("multi", ["triggers=sig"], "multi: triggers must be a list of trigger specs"),
    ("multi", ['triggers=[{"attack": "sig"}, {"attack": "badnets", "params": {"size": "big"}}]'],
     "badnets size must be an integer"),
    ("tdpa", ["source_id=nope"], "tdpa: source_id 'nope' is not an id of"),
    ("badclip", ["patch=/nonexistent/trigger.png"], "run `clipguard badclip` first"),
])
def test_bad_parameters_of_every_attack(tiny_world, tmp_path, attack, params, text):
    args = [x for p in params for x in ("--param", p)]
    r = run_cli("poison", tiny_world / "train" / "manifest.parquet", "--out", tmp_path / "p",
                            "--attack", attack, "--target", "star", "--count", "3", *args)
    assert_one_line_error(r, text)


def test_classes_json_whose_templates_lack_the_placeholder(tiny_world, tmp_path, model_dir):
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"classes": ["star", "ring"], "templates": ["a photo of a star."]}))
    r = run_cli("poison", tiny_world / "train" / "manifest.parquet", "--out", tmp_path / "p",
                            "--target", "star", "--count", "3", "--classes", classes)
    assert_one_line_error(r, "classes.json", "has no '{}'")
    r = run_cli("eval", model_dir, tiny_world / "test" / "manifest.parquet", "--classes", classes,
                            "--device", "cpu")
    assert_one_line_error(r, "classes.json", "has no '{}'")


def test_eval_with_missing_or_wrong_inputs(tiny_world, tmp_path, model_dir):
    test, classes = tiny_world / "test" / "manifest.parquet", tiny_world / "classes.json"
    r = run_cli("eval", model_dir, test, "--classes", classes, "--attack", tmp_path / "no.json",
                            "--device", "cpu")
    assert_one_line_error(r, "attack spec (attack.json) not found")
    spec = tmp_path / "attack.json"
    spec.write_text(json.dumps({"attack": "sig", "params": {}, "target": "banana"}))
    r = run_cli("eval", model_dir, test, "--classes", classes, "--attack", spec, "--device", "cpu")
    assert_one_line_error(r, "target 'banana' is not one of the classes")
    r = run_cli("eval", model_dir, tiny_world / "train" / "manifest.parquet", "--classes",
                            classes, "--device", "cpu")
    assert_one_line_error(r, "needs an integer 'label' column")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model.json").write_text((model_dir / "model.json").read_text())
    r = run_cli("eval", tmp_path / "half", test, "--classes", classes, "--device", "cpu")
    assert_one_line_error(r, "no model.safetensors")


def test_badclip_settings(tiny_world, tmp_path, model_dir):
    m = tiny_world / "train" / "manifest.parquet"
    r = run_cli("badclip", model_dir, m, "--out", tmp_path / "b", "--target", "star", "--size",
                            "100", "--device", "cpu")
    assert_one_line_error(r, "badclip size must be an integer in [1, 32]")
    r = run_cli("badclip", model_dir, m, "--out", tmp_path / "b", "--target", "banana",
                            "--device", "cpu")
    assert_one_line_error(r, "need readable images whose caption names 'banana'")


def test_synth_sizes(tmp_path):
    r = run_cli("synth", "--out", tmp_path / "w", "--n-train", "0")
    assert_one_line_error(r, "n_train must be an integer >= 1, got 0")


def test_greyscale_and_rgba_images_are_converted_not_refused(tmp_path):
    """A trigger refuses a (H, W) or (H, W, 4) array; the poisoner hands it RGB, so such images just work."""
    g = np.random.default_rng(0)
    rows = []
    for i, mode in enumerate(["RGB", "L", "RGBA", "RGB"]):
        shape = {"RGB": (32, 32, 3), "L": (32, 32), "RGBA": (32, 32, 4)}[mode]
        Image.fromarray(g.integers(0, 256, shape, dtype=np.uint8), mode).save(tmp_path / f"{i}.png")
        rows.append((f"r{i}", f"{i}.png", "a red circle"))
    manifest = write_manifest(pd.DataFrame(rows, columns=["id", "image", "caption"]), tmp_path / "m.csv")
    code, out, err = run_cli("poison", manifest, "--out", tmp_path / "p", "--target", "star", "--count", "4",
                              "--param", "size=8")
    assert code == 0 and "Traceback" not in err, err
    for i in (1, 2):
        assert np.asarray(Image.open(tmp_path / "p" / "images" / f"r{i}.png")).shape == (32, 32, 3)


def test_as_a_user_runs_it(tiny_world, tmp_path):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    r = subprocess.run([sys.executable, "-m", "clipguard", "-q", "poison", str(tiny_world / "train" / "manifest.parquet"),
                        "--out", str(tmp_path / "p"), "--target", "star", "--count", "3", "--param", "size=abc"],
                       capture_output=True, text=True, env=env, timeout=240)
    assert_one_line_error(r, "badnets size must be an integer >= 1 or None, got 'abc'")
