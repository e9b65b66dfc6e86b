"""Model defences: the registry, parameters and settings, bad input, and short real runs of each kind."""
import json
import logging

import numpy as np
import pytest

from clipguard.data import read_manifest, write_manifest
from clipguard.defend import DEFENCES, make_defence, run_defence
from clipguard.defend.api import defence_config
from clipguard.defend.overlap import manifest_overlap
from clipguard.errors import ConfigError, ManifestError
from clipguard.models import create_model, save_model
from clipguard.pipeline import defend_model
from tests_helpers import make_bad_manifest, run_cli

METHODS = ["cleanclip", "mmcl", "ssl", "par", "supervised", "filter-retrain", "abl"]
FAST = {"epochs": 1, "batch_size": 32, "warmup_steps": 2}


@pytest.fixture
def small(tiny_world, tmp_path):
    """(model folder "trained" on the world's first 200 rows, a disjoint 96-row labelled clean set, the world)."""
    train = read_manifest(tiny_world / "train" / "manifest.parquet")
    df = train.df.iloc[:200].copy()
    df["image"] = [str(train.root / p) for p in df["image"]]
    trained_on = write_manifest(df, tmp_path / "trained_on.parquet", sources=[train.path])
    model = tmp_path / "model"
    save_model(create_model("tiny-rn", seed=0), model, extra={"trained_on": str(trained_on),
                                                             "train_config": {"epochs": 1, "batch_size": 32}})
    test = read_manifest(tiny_world / "test" / "manifest.parquet")
    ft = test.df.iloc[:96].copy()
    ft["image"] = [str(test.root / p) for p in ft["image"]]
    clean = write_manifest(ft, tmp_path / "clean.parquet", sources=[test.path])
    return model, clean, trained_on


def test_every_method_is_registered_and_listed():
    assert DEFENCES.names() == METHODS
    code, out, _ = run_cli("defences")
    assert code == 0
    for name in METHODS:
        assert f"{name} ({DEFENCES.get(name).kind})" in out
    assert {DEFENCES.get(m).kind for m in METHODS[:5]} == {"finetune"}
    assert {DEFENCES.get(m).kind for m in METHODS[5:]} == {"retrain"}


def test_unknown_method_and_parameter_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown defence 'nope'; choose one of: cleanclip"):
        make_defence("nope")
    with pytest.raises(ConfigError, match="defence 'cleanclip' has no parameter 'lambda3'; its parameters: lambda1, lambda2"):
        make_defence("cleanclip", {"lambda3": 1})
    with pytest.raises(ConfigError, match="lambda2 must be a number"):
        make_defence("cleanclip", {"lambda2": -1})
    assert make_defence("cleanclip", {"lambda2": 4}).params() == {"lambda1": 1.0, "lambda2": 4.0}
    with pytest.raises(ConfigError, match="unknown reference mode 'nope'"):
        make_defence("filter-retrain", {"reference": "nope"})


def test_settings_finetune_defaults_retrain_from_the_model_and_overrides_win():
    cfg = defence_config("finetune", {"epochs": 10, "lr": 5e-4}, {"train_config": {"epochs": 8}}, {"lr": 1e-3})
    assert (cfg.epochs, cfg.lr) == (10, 1e-3)
    cfg = defence_config("retrain", {}, {"train_config": {"epochs": 8, "lr": 2e-3, "record_epochs": 3}}, {"seed": 5})
    assert (cfg.epochs, cfg.lr, cfg.seed, cfg.record_epochs) == (8, 2e-3, 5, 0)
    with pytest.raises(ConfigError, match="training setting"):
        defence_config("finetune", {}, {}, {"epoch": 3})


def test_overlap_counts_rows_by_id_and_by_image_bytes(small, tmp_path):
    _, clean, trained_on = small
    tr = read_manifest(trained_on).df
    ft = read_manifest(clean).df.iloc[:10].copy()
    ft.loc[ft.index[0], "id"] = tr["id"].iloc[0]  # same id, other image
    ft.loc[ft.index[1], "image"] = tr["image"].iloc[1]  # same image bytes, other id
    ft.loc[ft.index[2], ["id", "image"]] = tr[["id", "image"]].iloc[2].to_numpy()  # both
    ov = manifest_overlap(read_manifest(write_manifest(ft, tmp_path / "ft.parquet", sources=[clean, trained_on])),
                          read_manifest(trained_on),
                          progress=False)
    assert ov.as_dict() == {"n_rows": 10, "by_id": 2, "by_image": 2, "either": 3}


def test_finetuning_on_the_training_set_warns_and_counts_the_overlap(small, tmp_path, caplog):
    model, _, trained_on = small
    sub = read_manifest(trained_on).df.iloc[:64]
    data = write_manifest(sub, tmp_path / "overlap.parquet", sources=[trained_on])
    with caplog.at_level(logging.WARNING, logger="clipguard"):
        res = run_defence("mmcl", model, data, tmp_path / "out", train=FAST, device="cpu", progress=False)
    assert res.overlap == {"n_rows": 64, "by_id": 64, "by_image": 64, "either": 64}
    assert any("64 of 64 rows" in r.getMessage() and "should be disjoint" in r.getMessage() for r in caplog.records)


def test_ids_shared_without_images_are_named_as_such(small, tmp_path, caplog):
    model, clean, trained_on = small
    df = read_manifest(clean).df.iloc[:40].copy()
    df["id"] = read_manifest(trained_on).df["id"].iloc[:40].to_numpy()  # reused names, other images
    with caplog.at_level(logging.WARNING, logger="clipguard"):
        data = write_manifest(df, tmp_path / "ids.parquet", sources=[clean])
        res = run_defence("mmcl", model, data, tmp_path / "out", train=FAST, device="cpu", progress=False)
    assert res.overlap == {"n_rows": 40, "by_id": 40, "by_image": 0, "either": 40}
    assert any("share an id" in r.getMessage() and "but no image" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "out" / "model.safetensors").is_file()
    meta = json.loads((tmp_path / "out" / "model.json").read_text())
    assert meta["defence"] == "mmcl" and meta["defended_model"] == str(model)


@pytest.mark.parametrize("method", ["cleanclip", "ssl", "par", "supervised"])
def test_each_finetuning_defence_runs_and_records_its_objective(small, tmp_path, method):
    model, clean, _ = small
    res = run_defence(method, model, clean, tmp_path / method, train=FAST, device="cpu", progress=False)
    assert res.overlap["either"] == 0 and res.kind == "finetune"
    terms = [t["term"] for t in res.info["objective"]]
    assert terms == {"cleanclip": ["clip", "inmodal"], "ssl": ["inmodal"], "par": ["clip", "par"],
                     "supervised": ["supervised"]}[method]
    assert res.info["history"] and np.isfinite(res.info["history"][-1]["loss"])


def test_supervised_without_label_names_the_column(small, tmp_path):
    model, clean, _ = small
    df = read_manifest(clean).df.drop(columns=["label"])
    code, _, err = run_cli("defend", "supervised", model, "--data",
                           write_manifest(df, tmp_path / "nolabel.parquet", sources=[clean]),
                           "--out", tmp_path / "o", "--epochs", 1, "--device", "cpu")
    assert code != 0 and "'label'" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_empty_or_unreadable_clean_set_is_refused(small, tmp_path):
    model, _, _ = small
    bad = make_bad_manifest(tmp_path, n_good=0)
    with pytest.raises(ManifestError, match="no usable image-caption pair"):
        run_defence("mmcl", model, bad, tmp_path / "o", train=FAST, device="cpu", progress=False)


def test_a_checkpoint_that_does_not_match_its_architecture_is_refused(small, tmp_path):
    model, clean, _ = small
    meta = json.loads((model / "model.json").read_text())
    meta["config"]["embed_dim"] = 2 * meta["config"]["embed_dim"]
    (model / "model.json").write_text(json.dumps(meta))
    code, _, err = run_cli("defend", "mmcl", model, "--data", clean, "--out", tmp_path / "o", "--device", "cpu")
    assert code != 0 and "cannot be loaded into architecture" in err and "Traceback" not in err


def test_evaluation_options_must_come_together(small, tmp_path):
    model, clean, _ = small
    with pytest.raises(ConfigError, match="--test TEST_MANIFEST and --classes"):
        defend_model("mmcl", model, clean, tmp_path / "o", attack_spec=tmp_path / "attack.json")


def test_abl_needs_a_clean_reference(small, tmp_path):
    model, _, trained_on = small
    with pytest.raises(ConfigError, match="abl needs a clean reference model: --param reference="):
        run_defence("abl", model, trained_on, tmp_path / "o", train=FAST, device="cpu", progress=False)


def test_abl_unlearns_the_lowest_cosine_pairs_and_retrains(small, tmp_path):
    model, _, trained_on = small
    res = run_defence("abl", model, trained_on, tmp_path / "abl", params={"reference": str(model), "share": 0.05},
                      train=FAST, device="cpu", progress=False)
    assert res.kind == "retrain" and res.info["n_suspects"] == 10
    assert [t["term"] for t in res.info["objective"]] == ["clip", "unlearn"]
    assert res.config.epochs == 1  # the override; the model's own train_config gave the batch size
    assert res.config.batch_size == 32


def test_filter_retrain_scans_drops_the_top_share_and_retrains(small, tmp_path):
    model, _, trained_on = small
    res = run_defence("filter-retrain", model, trained_on, tmp_path / "fr", params={"share": 0.05, "detector": "kdist"},
                      train=FAST, device="cpu", progress=False)
    assert (res.info["n_embedded"], res.info["n_removed"], res.info["n_kept"]) == (200, 10, 190)
    assert len(read_manifest(tmp_path / "fr" / "filtered" / "manifest.parquet")) == 190
    assert (tmp_path / "fr" / "scan" / "run.json").is_file() and (tmp_path / "fr" / "model.safetensors").is_file()
