"""`clipguard heads analyze | repair | filter` on a small backdoored ViT (tiny-vit-p8, BadNets 10 %)."""
import json

import pandas as pd
import pytest
from PIL import Image

from clipguard.attacks import get_trigger, poison_dataset
from clipguard.data import read_manifest
from clipguard.data.synth import generate_world
from clipguard.evaluate import evaluate_model
from clipguard.models import RepairedVisual, create_model, load_model, save_model
from clipguard.pipeline.heads import heads_analyze, heads_filter, heads_repair
from clipguard.train import TrainConfig, train_from_manifest
from tests_helpers import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def backdoored(tmp_path_factory):
    """A tiny-vit-p8 trained 8 epochs on a 1,500-pair world with 10 % BadNets (about 20 s)."""
    tmp = tmp_path_factory.mktemp("heads")
    generate_world(tmp / "w", n_train=1500, n_test=10, seed=1, progress=False, workers=1)
    res = poison_dataset(read_manifest(tmp / "w" / "train" / "manifest.parquet"), tmp / "p",
                         get_trigger("badnets", size=8, cell=2), target="star", rate=0.1, seed=1, progress=False)
    train_from_manifest(res.manifest_path, tmp / "m", model="tiny-vit-p8",
                        config=TrainConfig(epochs=8, batch_size=64, seed=1), progress=False, device="cpu")
    return tmp / "m", res.spec_path


def test_analyze_writes_profile_heat_maps_and_filter_quality(backdoored, tiny_world, tmp_path):
    model, spec = backdoored
    rec = heads_analyze(model, tiny_world / "train" / "manifest.parquet", tmp_path, test=tiny_world / "test" / "manifest.parquet",
                        attack_spec=spec, classes=tiny_world / "classes.json", fpr=0.05, device="cpu", progress=False)
    assert rec["reconstruction_error"] <= 1e-5
    for name in ("profile.safetensors", "profile.json", "heads.csv", "mlps.csv", "run.json"):
        assert (tmp_path / name).is_file(), name
    for name in ("heads_infection.png", "mlps_infection.png"):
        assert Image.open(tmp_path / name).format == "PNG"
    heads = pd.read_csv(tmp_path / "heads.csv")
    assert len(heads) == 4 * 4 and {"eps", "clean_rate", "triggered_rate"} <= set(heads.columns)
    # eps was calibrated on other clean images at 5 % per head: held-out clean test images agree
    assert 0.0 < heads["clean_rate"].mean() <= 0.12
    f = rec["filter"]
    assert 0.0 <= f["auroc_count"] <= 1.0 and f["fpr_at_zeta"] <= 0.2
    assert rec["test"]["n_triggered"] < rec["test"]["n_clean"]  # the target's own images are left out
    saved = json.loads((tmp_path / "run.json").read_text())
    assert saved["profile"]["n_prototype"] + saved["profile"]["n_eps"] + saved["profile"]["n_zeta"] == 600


def test_repair_writes_a_model_folder_that_evaluates(backdoored, tiny_world, tmp_path):
    model, spec = backdoored
    test, classes = tiny_world / "test" / "manifest.parquet", tiny_world / "classes.json"
    rec = heads_repair(model, tiny_world / "train" / "manifest.parquet", tmp_path / "rep", classes=classes,
                       test=test, attack_spec=spec, device="cpu", progress=False)
    assert rec["mlp_choice"]["rule"] == "auto" and rec["mlp_choice"]["tried"][0]["mlp_layers"] == []
    again = load_model(tmp_path / "rep")
    assert isinstance(again.model.visual, RepairedVisual)
    assert list(again.model.visual.repair.mlp_layers) == rec["mlp_layers"]
    ev = evaluate_model(tmp_path / "rep", test, classes, attack_spec=spec, device="cpu", progress=False)
    assert ev["clean_accuracy"] == rec["after"]["clean_accuracy"]
    assert ev["attack_success_rate"] == rec["after"]["attack_success_rate"]
    assert rec["ca_change"] == pytest.approx(100 * (rec["after"]["clean_accuracy"] - rec["before"]["clean_accuracy"]),
                                             abs=1e-3)
    # inference-only: training or defending the repaired folder is refused in one line
    r = run_cli("defend", "mmcl", tmp_path / "rep", "--data", tiny_world / "train" / "manifest.parquet",
                "--out", tmp_path / "d", "--epochs", "1", "--device", "cpu")
    assert_one_line_error(r, "repaired at inference", "original model folder")


def test_filter_scores_a_manifest(backdoored, tiny_world, tmp_path):
    model, spec = backdoored
    heads_analyze(model, tiny_world / "train" / "manifest.parquet", tmp_path / "prof", device="cpu", progress=False)
    rec = heads_filter(model, spec.parent / "manifest.parquet", tmp_path / "f", profile=tmp_path / "prof",
                       device="cpu", progress=False)
    table = pd.read_parquet(tmp_path / "f" / "scores.parquet")
    assert list(table.columns) == ["id", "heads_score", "heads_rank", "heads_infected", "is_heads_suspect", "poisoned"]
    assert len(table) == rec["n_inputs"] == 1500 and table["heads_rank"].min() == 1
    assert (table["heads_score"] >= table["heads_infected"]).all()
    assert 0.0 <= rec["metrics"]["auroc"] <= 1.0 and rec["n_suspects"] == int(table["is_heads_suspect"].sum())
    assert rec["rule"] == "score"
    assert table["is_heads_suspect"].equals(table["heads_score"] > rec["zeta_score"])
    by_count = heads_filter(model, spec.parent / "manifest.parquet", tmp_path / "g", profile=tmp_path / "prof",
                            rule="count", device="cpu", progress=False)
    table = pd.read_parquet(tmp_path / "g" / "scores.parquet")
    assert by_count["rule"] == "count" and table["is_heads_suspect"].equals(table["heads_infected"] > by_count["zeta"])


def test_non_vit_models_are_refused_in_one_line(tiny_world, tmp_path):
    save_model(create_model("tiny-rn", seed=0), tmp_path / "rn")
    for sub in ("analyze", "repair"):
        r = run_cli("heads", sub, tmp_path / "rn", "--clean", tiny_world / "train" / "manifest.parquet",
                    "--out", tmp_path / sub)
        assert_one_line_error(r, "needs a ViT image tower", "ModifiedResNet", "supported")
    r = run_cli("heads", "filter", tmp_path / "rn", "--input", tiny_world / "test" / "manifest.parquet",
                "--out", tmp_path / "f")
    assert_one_line_error(r, "--clean CLEAN_MANIFEST", "--profile DIR")
