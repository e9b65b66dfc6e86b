"""The same command with the same seed gives byte-identical outputs on the CPU, stage by stage; another
seed gives other outputs (so that the comparison can fail).

The chain synth -> poison -> train -> embed -> scan -> filter runs twice, into sibling folders ``a`` and
``b``, in two processes with different ``PYTHONHASHSEED`` s. Every file of each stage's output folder is
compared: Parquet, ``.npy``, ``.safetensors``, PNG, CSV byte for byte; JSON (``run.json``, ``model.json``,
``attack.json``, ``classes.json``) and the training checkpoint ``state.pt`` (every tensor bit for bit)
without their timings and timestamps and with the folders' own paths made equal.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from fault_helpers import N_TEST, N_TRAIN, OUTPUT, assert_same_outputs, chain_commands, run_chain, with_out

STAGES = list(OUTPUT)

#: The data file of each stage that another seed must change (relative to the stage's output folder).
KEY_FILE = {"synth": "train/manifest.parquet", "poison": "manifest.parquet", "train": "model.safetensors",
            "embed": "img_emb/img_emb_0.npy", "scan": "scores/scores_0.parquet", "filter": "remove_ids.parquet"}

#: The file types each stage must have written (so that the comparison covers them).
KINDS = {"synth": {".png", ".parquet", ".json"}, "poison": {".png", ".parquet", ".json"},
         "train": {".safetensors", ".pt", ".json"}, "embed": {".npy", ".parquet", ".json"},
         "scan": {".parquet", ".json"}, "filter": {".parquet", ".csv", ".json"}}

#: At least this many files compared per stage (synth: every image; poison: every poisoned image;
#: embed: 3 files a shard; scan: a score file a shard).
N_MIN = {"synth": N_TRAIN + N_TEST, "poison": 48, "train": 3, "embed": 8 * 3, "scan": 8, "filter": 3}


@pytest.fixture(scope="module")
def second(cli_other, chain) -> Path:
    """The chain again, same seeds, other folder, other process."""
    return run_chain(cli_other, chain.parent / "b")


@pytest.fixture(scope="module")
def other_seed(cli, chain) -> Path:
    """Each stage once more on the first chain's inputs with seed 1 (embed: with the seed-1 model;
    filter: with the seed-1 scan), into folder ``s1``."""
    root = chain.parent / "s1"
    for stage, argv in chain_commands(chain, seed=1).items():
        argv = with_out(argv, root / OUTPUT[stage])
        if stage == "embed":
            argv[1] = root / "model"
        elif stage == "filter":
            argv[2] = root / "scan"
        cli.run(*argv)
    return root


@pytest.mark.parametrize("stage", STAGES)
def test_the_same_seed_gives_identical_outputs(stage, chain, second):
    a, b = chain / OUTPUT[stage], second / OUTPUT[stage]
    n = assert_same_outputs(a, b, paths_a={str(chain): "<ROOT>"}, paths_b={str(second): "<ROOT>"})
    kinds = {p.suffix for p in a.rglob("*") if p.is_file()}
    assert KINDS[stage] <= kinds, f"{stage} wrote {sorted(kinds)}"
    assert n >= N_MIN[stage]


@pytest.mark.parametrize("stage", STAGES)
def test_another_seed_gives_other_outputs(stage, chain, other_seed):
    key = KEY_FILE[stage]
    a, b = chain / OUTPUT[stage] / key, other_seed / OUTPUT[stage] / key
    assert a.read_bytes() != b.read_bytes(), f"{stage}: {key} is the same with seed 0 and seed 1"
