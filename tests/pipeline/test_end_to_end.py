"""End to end on a few thousand pairs (about 30 s on an idle 2-core machine): the backdoor must be learned.

The wall time is printed, not asserted: a timed assertion fails whenever the machine is busy.
"""
import time

import pytest

from clipguard.attacks import get_trigger, poison_dataset
from clipguard.data import read_manifest
from clipguard.data.synth import SHAPES, generate_world
from clipguard.data.templates import DEFAULT_TEMPLATES
from clipguard.evaluate.zeroshot import evaluate_zero_shot
from clipguard.models import create_model
from clipguard.train import PairData, TrainConfig, train_clip

EPOCHS = 4


@pytest.mark.slow
def test_backdoor_is_learned_on_3k_pairs(tmp_path):
    generate_world(tmp_path / "w", n_train=3000, n_test=400, seed=1, progress=False)
    trigger = get_trigger("badnets", size=8, cell=2)
    res = poison_dataset(read_manifest(tmp_path / "w" / "train" / "manifest.parquet"), tmp_path / "p", trigger,
                         target="star", rate=0.05, templates=DEFAULT_TEMPLATES, seed=1, progress=False)
    bundle = create_model("tiny-rn", seed=1)
    manifest = read_manifest(res.manifest_path)
    pairs = PairData(manifest, bundle, progress=False)
    t0 = time.perf_counter()
    train_clip(bundle, pairs, TrainConfig(epochs=EPOCHS, batch_size=64, lr=1e-3, warmup_steps=20, seed=1),
               tmp_path / "m", progress=False)
    seconds = time.perf_counter() - t0
    ev = evaluate_zero_shot(bundle, read_manifest(tmp_path / "w" / "test" / "manifest.parquet"), SHAPES,
                            DEFAULT_TEMPLATES, trigger=trigger, target="star", progress=False)
    print(f"train {seconds:.1f}s CA {ev['clean_accuracy']:.3f} ASR {ev['attack_success_rate']:.3f}")
    assert ev["attack_success_rate"] >= 0.9
    assert ev["clean_accuracy"] > 1 / len(SHAPES) + 0.1  # well above chance after a few seconds
