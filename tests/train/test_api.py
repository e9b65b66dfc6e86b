import pytest

from clipguard.attacks import get_trigger, poison_dataset
from clipguard.data.manifest import read_manifest
from clipguard.errors import ConfigError
from clipguard.train import TrainConfig, train_from_manifest
from clipguard.utils.io import read_json

CFG = TrainConfig(epochs=1, batch_size=100, warmup_steps=2)


def test_adaptive_needs_ground_truth(tiny_world, tmp_path):
    with pytest.raises(ConfigError, match="'poisoned' column"):
        train_from_manifest(tiny_world / "train" / "manifest.parquet", tmp_path / "m", config=CFG,
                            adaptive_density=1.0, progress=False)


def test_adaptive_training_adds_the_density_term(tiny_world, tmp_path):
    res = poison_dataset(read_manifest(tiny_world / "train" / "manifest.parquet"), tmp_path / "p",
                         get_trigger("badnets", size=8, cell=2), target="star", rate=0.1, progress=False)
    _, plain = train_from_manifest(res.manifest_path, tmp_path / "plain", config=CFG, progress=False)
    _, adaptive = train_from_manifest(res.manifest_path, tmp_path / "adaptive", config=CFG, progress=False,
                                      adaptive_density=5.0)
    # same data, seed and schedule: the only difference is the added SLOF term (about 1 per poisoned sample)
    assert adaptive.history[0]["loss"] > plain.history[0]["loss"] + 1.0
    run = read_json(tmp_path / "adaptive" / "run.json")
    assert run["config"]["adaptive_density"] == 5.0 and run["n_pairs"] == 600
    assert (tmp_path / "adaptive" / "model.safetensors").is_file()
