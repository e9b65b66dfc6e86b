"""kill -9 in the middle of ``poison``, ``train``, ``embed``, ``scan`` and ``defend``: no half-written output
looks finished, and rerunning the same command ends with the outputs of an uninterrupted run.

Each command is the real command line in its own process (forked from the CLI server,
``cli_server.py``), killed with ``SIGKILL`` as soon as a sign of progress appears on disk (polled every
2 ms: a poisoned PNG, the first epoch's checkpoint, the first embedding shard, the first scan part),
then rerun to its end. Its output folder is compared file by file with the same command run
uninterrupted (the session's chain; for ``defend`` a run of this test): every data file byte for byte,
JSON without timings and without the counters that say what a rerun reused (which are checked).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fault_helpers import N_TEST, assert_same_outputs, chain_commands, with_out


def _checkpoint(out: Path) -> dict:
    return torch.load(out / "checkpoints" / "state.pt", map_location="cpu", weights_only=True)


def test_poison(cli, chain):
    argv, out = chain_commands(chain)["poison"], chain / "poison_killed"
    cli.kill_when(lambda: any((out / "images").glob("*.png")), *with_out(argv, out))
    assert not (out / "manifest.parquet").exists() and not (out / "attack.json").exists()
    cli.run(*with_out(argv, out))
    n = assert_same_outputs(chain / "poison", out)  # manifest.parquet, attack.json, every images/*.png
    assert n >= 48 + 2


def test_train_resumes_at_the_epoch_boundary(cli, chain):
    argv, out = chain_commands(chain)["train"], chain / "model_killed"
    cli.kill_when((out / "checkpoints" / "state.pt").is_file, *with_out(argv, out))
    for name in ("model.safetensors", "model.json", "run.json"):
        assert not (out / name).exists(), f"{name} written before training ended"
    state = _checkpoint(out)
    assert state["epoch"] == 1  # killed in epoch 2
    cli.run(*with_out(argv, out))
    # model.safetensors, model.json, skipped.csv byte for byte; state.pt tensors; run.json
    assert_same_outputs(chain / "model", out)
    run = json.loads((out / "run.json").read_text())
    assert run["history"][0] == state["history"][0]  # epoch 1 came from the checkpoint (its timings too)


def test_embed_reuses_finished_shards(cli, chain):
    argv, out = chain_commands(chain)["embed"], chain / "emb_killed"
    cli.kill_when((out / "metadata" / "metadata_0.parquet").is_file, *with_out(argv, out))
    assert not (out / "run.json").exists()
    done = sorted(int(p.stem.rsplit("_", 1)[1]) for p in (out / "metadata").glob("metadata_*.parquet"))
    assert 1 <= len(done) < 8
    for i in done:  # a shard with metadata (written last) is complete
        rows = len(pd.read_parquet(out / "metadata" / f"metadata_{i}.parquet"))
        assert np.load(out / "img_emb" / f"img_emb_{i}.npy").shape[0] == rows
        assert np.load(out / "text_emb" / f"text_emb_{i}.npy").shape[0] == rows
    cli.run(*with_out(argv, out))
    assert_same_outputs(chain / "emb", out, ignore=("shards_reused",))  # every .npy, metadata, run.json
    assert json.loads((out / "run.json").read_text())["shards_reused"] == done


def test_scan_reuses_finished_parts(cli, chain):
    argv, out = chain_commands(chain)["scan"], chain / "scan_killed"
    cli.kill_when(lambda: any((out / "parts").glob("part_*.npz")), *with_out(argv, out))
    assert not (out / "run.json").exists() and not list(out.glob("scores/*.parquet"))
    n_parts = len(list((out / "parts").glob("part_*.npz")))
    cli.run(*with_out(argv, out))
    assert_same_outputs(chain / "scan", out, ignore=("tasks_run", "tasks_reused"))  # scores/*.parquet, run.json
    dist = json.loads((out / "run.json").read_text())["distributed"]
    assert dist["tasks_reused"] >= n_parts and dist["tasks_run"] + dist["tasks_reused"] == dist["n_parts"] == 4


def _defend(chain: Path, out: Path) -> list:
    """CleanCLIP for 2 epochs of 2 steps on the clean labelled split."""
    return ["defend", "cleanclip", chain / "model", "--data", chain / "world/test/manifest.parquet", "--out", out,
            "--epochs", "2", "--batch-size", str(N_TEST // 2), "--warmup-steps", "1", "--seed", "0",
            "--device", "cpu", "--no-report"]


def test_defend_resumes_at_the_epoch_boundary(cli, chain):
    whole, out = chain / "defend", chain / "defend_killed"
    cli.run(*_defend(chain, whole))
    cli.kill_when((out / "checkpoints" / "state.pt").is_file, *_defend(chain, out))
    for name in ("model.safetensors", "model.json", "run.json"):
        assert not (out / name).exists(), f"{name} written before the defence ended"
    state = _checkpoint(out)
    assert state["epoch"] == 1
    cli.run(*_defend(chain, out))
    assert_same_outputs(whole, out)  # model.safetensors byte for byte, model.json, state.pt tensors, run.json
    run = json.loads((out / "run.json").read_text())
    assert run["defence"]["history"][0] == state["history"][0]
