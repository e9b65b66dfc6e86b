"""The command line: thin commands, one-line errors, bad rows counted end to end, library defaults.

Most commands run in this process through ``clipguard.cli.main`` (a subprocess pays seconds of
imports per call); one test runs ``python -m clipguard`` for real.
"""
import dataclasses
import json
import os
import re
import subprocess
import sys
from importlib.metadata import entry_points

import click
import numpy as np
import pandas as pd

from clipguard.attacks import get_trigger, poison_dataset
from clipguard.cli import COMMANDS, cli, main
from clipguard.data import read_manifest
from clipguard.detect import ScanConfig
from clipguard.models import create_model, save_model
from clipguard.pipeline import DemoConfig
from clipguard.train import TrainConfig
from clipguard.utils.device import DEFAULT_DEVICE
from tests_helpers import assert_one_line_error, make_bad_manifest, no_gpu, run_cli


def test_python_m_clipguard_and_entry_point(tmp_path):
    """The real process: ``python -m clipguard`` prints one error line, no traceback."""
    p = tmp_path / "bad.csv"
    p.write_text("url,text\nx.png,hello\n")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    r = subprocess.run([sys.executable, "-m", "clipguard", "-q", "train", str(p), "--out", str(tmp_path / "m")],
                       capture_output=True, text=True, env=env, timeout=240)
    assert_one_line_error(r, "id, image, caption")
    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "clipguard"]
    assert ep.value == "clipguard.cli:main" and ep.load() is main


def test_wrong_columns_is_one_line_error(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("url,text\nx.png,hello\n")
    for cmd in (["train", p, "--out", tmp_path / "m"], ["poison", p, "--out", tmp_path / "p", "--target", "star",
                                                          "--rate", "0.1"]):
        assert_one_line_error(run_cli(*cmd), "id, image, caption")


def test_unknown_names_and_bad_rate_are_one_line_errors(tiny_world, tmp_path):
    m = tiny_world / "train" / "manifest.parquet"
    cases = [
        (["poison", m, "--out", tmp_path / "p", "--attack", "nope", "--target", "star", "--rate", "0.1"], "unknown attack"),
        (["poison", m, "--out", tmp_path / "p", "--target", "star", "--rate", "1.5"], "rate must be in (0, 1)"),
        (["poison", m, "--out", tmp_path / "p", "--target", "banana", "--count", "3", "--clean-label"],
         "no caption names the target"),
        (["poison", m, "--out", tmp_path / "p", "--target", "star", "--rate", "0.1", "--param", "size"],
         "--param 'size': expected NAME=VALUE"),
        (["poison", m, "--out", tmp_path / "p", "--target", "star"], "count"),  # neither --rate nor --count
        (["train", m, "--out", tmp_path / "t", "--model", "ViT-Z"], "unknown model"),
    ]
    for args, text in cases:
        assert_one_line_error(run_cli(*args), text)


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
    assert "scored 40 samples" in r.stdout and "dao_rank" in r.stdout
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


def test_poison_cli_and_poison_dataset_write_the_same_captions(tiny_world, tmp_path):
    """One source of templates: `clipguard poison` without --classes == poison_dataset() with its defaults."""
    m = tiny_world / "train" / "manifest.parquet"
    r = run_cli("poison", m, "--out", tmp_path / "cli", "--attack", "badnets", "--param", "size=8",
                "--param", "cell=2", "--rate", "0.05", "--target", "star")
    assert r.returncode == 0, r.stderr
    res = poison_dataset(read_manifest(m), tmp_path / "lib", get_trigger("badnets", size=8, cell=2),
                         target="star", rate=0.05, progress=False)
    cols = ["id", "caption", "poisoned", "trigger"]
    by_cli = pd.read_parquet(tmp_path / "cli" / "manifest.parquet")[cols]
    by_lib = pd.read_parquet(res.manifest_path)[cols]
    assert by_cli["poisoned"].sum() == 30 and by_cli["id"].tolist() == by_lib["id"].tolist()
    differ = (by_cli != by_lib).any(axis=1).to_numpy()
    assert not differ.any(), (
        f"{differ.sum()} rows differ, e.g. {by_cli[differ].iloc[0].to_dict()} (clipguard poison) vs "
        f"{by_lib[differ].iloc[0].to_dict()} (poison_dataset): both must default to DEFAULT_TEMPLATES")
    assert by_cli.loc[by_cli["poisoned"], "caption"].nunique() > 1  # several templates, as in the library


def test_scan_from_model_and_dataset(tmp_path):
    manifest = make_bad_manifest(tmp_path, n_good=30)
    save_model(create_model("tiny-rn"), tmp_path / "model")
    r = run_cli("scan", "--model", tmp_path / "model", "--data", manifest, "--out", tmp_path / "scan",
                "-k", "5", "--top", "2")
    assert r.returncode == 0, r.stderr
    assert "embedded 30 pairs, skipped 3" in r.stdout and "scored 30 samples" in r.stdout
    assert (tmp_path / "scan" / "embeddings" / "img_emb" / "img_emb_0.npy").is_file()
    assert len(pd.read_parquet(tmp_path / "scan" / "scores" / "scores_0.parquet")) == 30
    assert json.loads((tmp_path / "scan" / "run.json").read_text())["config"]["k"] == 5
    assert "note: these embeddings come from a model trained on this very set" not in r.stdout
    save_model(create_model("tiny-rn"), tmp_path / "trained_here", extra={"trained_on": str(manifest)})
    r = run_cli("scan", "--model", tmp_path / "trained_here", "--data", manifest, "--out", tmp_path / "scan2", "-k", "5")
    assert r.returncode == 0 and "note: these embeddings come from a model trained on this very set" in r.stdout
    assert json.loads((tmp_path / "scan2" / "run.json").read_text())["embedding_model"]["trained_on_this_set"]
    for args, text in ((["scan", "--out", tmp_path / "x"], "exactly one input"),
                       (["scan", tmp_path / "scan" / "embeddings", "--data", manifest, "--out", tmp_path / "x"],
                        "exactly one input"),
                       (["scan", "--model", tmp_path / "model", "--out", tmp_path / "x"], "needs --model"),
                       (["scan", "--model", tmp_path / "model", "--data", manifest], "needs --model")):
        assert_one_line_error(run_cli(*args), text)


@no_gpu
def test_missing_gpu_is_a_one_line_error(tiny_world, tmp_path):
    r = run_cli("train", tiny_world / "train" / "manifest.parquet", "--out", tmp_path / "t", "--device", "cuda")
    assert_one_line_error(r, "--device cpu")


def _defaults(command: click.Command) -> dict:
    return {p.name: p.default for p in command.params if isinstance(p, click.Option)}


def _command(name: str) -> click.Command:
    return cli.get_command(click.Context(cli), name)


def test_the_command_list_is_the_commands_own_help_and_loads_nothing():
    """``clipguard --help`` lists COMMANDS without importing a stage; each line is the command's own."""
    code = ("import sys; from clipguard.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'open_clip', 'clipguard.detect') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
    assert re.search(r"\n  detectors +List the registered detectors\.", r.stdout)
    for name, (_, _, line) in COMMANDS.items():
        command = _command(name)
        assert command.name == name
        assert command.get_short_help_str(limit=1000) == line, name
    assert cli.get_command(click.Context(cli), "nope") is None


def test_option_defaults_come_from_the_library():
    """One source of every default: the CLI repeats none of the library's values."""
    scan = _defaults(_command("scan"))
    cfg = dataclasses.asdict(ScanConfig())
    shared = set(scan) & set(cfg)
    assert {"k", "reference", "batch_size", "reference_size", "n_references", "index", "nlist", "nprobe",
            "target_recall", "backend", "suspect_share", "seed"} <= shared
    assert {name: scan[name] for name in shared - {"device"}} == {name: cfg[name] for name in shared - {"device"}}
    train = _defaults(_command("train"))
    tcfg = dataclasses.asdict(TrainConfig())
    tcfg["grad_clip"] = tcfg["grad_clip"] or 0.0  # the CLI's "0 = off"
    assert {name: train[name] for name in tcfg} == tcfg
    demo = _defaults(_command("demo"))
    dcfg = DemoConfig()
    assert (demo["n_train"], demo["n_test"], demo["rate"], demo["epochs"], demo["seed"], demo["device"]) == (
        dcfg.n_train, dcfg.n_test, dcfg.poison_rate, dcfg.epochs, dcfg.seed, dcfg.device)
    assert dcfg.device == "cpu"  # the README's figures
    for name in ("train", "embed", "scan", "eval", "badclip"):
        assert _defaults(_command(name))["device"] == DEFAULT_DEVICE, name


def test_scan_detector_parameters_are_strict_and_reach_fused_components(tmp_path):
    from detect_helpers import pair_folder

    pair_folder(tmp_path / "emb")
    r = run_cli("scan", tmp_path / "emb", "--out", tmp_path / "a", "--param", "fused.methd=rank")
    assert_one_line_error(r, "unknown parameter of detector 'fused' 'methd'", "method", "two_sided")
    r = run_cli("scan", tmp_path / "emb", "--out", tmp_path / "a", "--param", "method=rank")
    assert_one_line_error(r, "DETECTOR.PARAMETER")
    r = run_cli("scan", tmp_path / "emb", "--out", tmp_path / "a", "--param", "fussed.method=rank")
    assert_one_line_error(r, "unknown detector 'fussed'")
    runs = {}
    for name, params in {"plain": [], "rank": ["--param", "fused.method=rank"],
                         "component": ["--param", "caption_dup.source=text",
                                       "--param", "caption_dup.threshold=0.5"]}.items():
        r = run_cli("scan", tmp_path / "emb", "--out", tmp_path / name, "--detector", "fused", *params)
        assert r.returncode == 0, r.stderr
        runs[name] = (json.loads((tmp_path / name / "run.json").read_text()),
                      pd.read_parquet(tmp_path / name / "scores" / "scores_0.parquet")["fused_score"])
    assert runs["rank"][0]["config"]["detector_params"] == {"fused": {"method": "rank"}}
    assert runs["component"][0]["config"]["detector_params"] == {
        "caption_dup": {"source": "text", "threshold": 0.5}}
    assert not runs["rank"][1].equals(runs["plain"][1])
    assert not runs["component"][1].equals(runs["plain"][1])  # honoured although only a component
