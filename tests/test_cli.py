"""The command line: thin commands, one-line errors, bad rows counted end to end."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd

from tests_helpers import make_bad_manifest, no_gpu


def run_cli(*args, cwd=None):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([sys.executable, "-m", "clipguard", "-q", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=240)


def test_wrong_columns_is_one_line_error(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("url,text\nx.png,hello\n")
    for cmd in (["train", p, "--out", tmp_path / "m"], ["poison", p, "--out", tmp_path / "p", "--target", "star",
                                                          "--rate", "0.1"]):
        r = run_cli(*cmd)
        assert r.returncode != 0
        assert "Traceback" not in r.stderr
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, r.stderr
        assert lines[0].startswith("error:") and "id, image, caption" in lines[0]


def test_unknown_names_and_bad_rate_are_one_line_errors(tiny_world, tmp_path):
    m = tiny_world / "train" / "manifest.parquet"
    cases = [
        (["poison", m, "--out", tmp_path / "p", "--attack", "nope", "--target", "star", "--rate", "0.1"], "unknown attack"),
        (["poison", m, "--out", tmp_path / "p", "--target", "star", "--rate", "1.5"], "rate must be in (0, 1)"),
        (["poison", m, "--out", tmp_path / "p", "--target", "banana", "--count", "3", "--clean-label"],
         "no caption names the target"),
        (["train", m, "--out", tmp_path / "t", "--model", "ViT-Z"], "unknown model"),
    ]
    for args, text in cases:
        r = run_cli(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and text in r.stderr, r.stderr


def test_bad_rows_are_counted_through_train_embed_scan(tmp_path):
    manifest = make_bad_manifest(tmp_path, n_good=40)
    r = run_cli("train", manifest, "--out", tmp_path / "model", "--epochs", "1", "--batch-size", "16")
    assert r.returncode == 0, r.stderr
    run = json.loads((tmp_path / "model" / "run.json").read_text())
    assert run["n_rows"] == 43 and run["n_pairs"] == 40 and run["n_skipped"] == 3
    assert run["skip_counts"] == {"missing image": 1, "unreadable image": 1, "empty caption": 1}
    assert len(pd.read_csv(tmp_path / "model" / "skipped.csv")) == 3

    r = run_cli("embed", tmp_path / "model", manifest, "--out", tmp_path / "emb")
    assert r.returncode == 0, r.stderr
    assert "skipped 3" in r.stdout
    r = run_cli("scan", tmp_path / "emb", "--out", tmp_path / "scan", "-k", "5", "--top", "3", "--detector", "dao")
    assert r.returncode == 0, r.stderr
    scores = pd.read_parquet(tmp_path / "scan" / "scores" / "scores_0.parquet")
    assert len(scores) == 40 and np.isfinite(scores["dao_score"]).all()


def test_listing_commands(tmp_path):
    for cmd, expect in (("models", "tiny-rn"), ("detectors", "dao")):
        r = run_cli(cmd)
        assert r.returncode == 0 and expect in r.stdout
    r = run_cli("attacks", "--gallery", tmp_path / "g.png")
    assert r.returncode == 0 and (tmp_path / "g.png").is_file()
    for name in ("badnets", "blended", "sig", "wanet", "nashville", "multi", "tdpa", "badclip"):
        assert f"{name}:" in r.stdout


def test_poison_with_json_params_and_clean_label(tiny_world, tmp_path):
    m = tiny_world / "train" / "manifest.parquet"
    r = run_cli("poison", m, "--out", tmp_path / "p", "--attack", "multi", "--target", "star", "--count", "6",
                "--param", 'triggers=[{"attack": "sig"}, {"attack": "wanet"}]', "--param", 'targets=["star", "ring"]')
    assert r.returncode == 0, r.stderr
    df = pd.read_parquet(tmp_path / "p" / "manifest.parquet")
    assert sorted(df.loc[df["poisoned"], "trigger"].unique()) == ["multi:0:sig", "multi:1:wanet"]
    r = run_cli("poison", m, "--out", tmp_path / "c", "--attack", "blended", "--target", "star", "--rate", "0.01",
                "--clean-label")
    assert r.returncode == 0, r.stderr
    assert "poisoned 6 of 600" in r.stdout


def test_scan_from_model_and_dataset(tmp_path):
    from clipguard.models import create_model, save_model

    manifest = make_bad_manifest(tmp_path, n_good=30)
    save_model(create_model("tiny-rn"), tmp_path / "model")
    r = run_cli("scan", "--model", tmp_path / "model", "--data", manifest, "--out", tmp_path / "scan",
                "-k", "5", "--top", "2")
    assert r.returncode == 0, r.stderr
    assert "embedded 30 pairs, skipped 3" in r.stdout and "scored 30 samples" in r.stdout
    assert (tmp_path / "scan" / "embeddings" / "img_emb" / "img_emb_0.npy").is_file()
    assert len(pd.read_parquet(tmp_path / "scan" / "scores" / "scores_0.parquet")) == 30
    assert json.loads((tmp_path / "scan" / "run.json").read_text())["config"]["k"] == 5
    for args, text in ((["scan", "--out", tmp_path / "x"], "exactly one input"),
                       (["scan", tmp_path / "scan" / "embeddings", "--data", manifest, "--out", tmp_path / "x"],
                        "exactly one input"),
                       (["scan", "--model", tmp_path / "model", "--out", tmp_path / "x"], "needs --model"),
                       (["scan", "--model", tmp_path / "model", "--data", manifest], "needs --model")):
        r = run_cli(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and text in r.stderr, r.stderr


@no_gpu
def test_missing_gpu_is_a_one_line_error(tiny_world, tmp_path):
    r = run_cli("train", tiny_world / "train" / "manifest.parquet", "--out", tmp_path / "t", "--device", "cuda")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "--device cpu" in r.stderr, r.stderr
