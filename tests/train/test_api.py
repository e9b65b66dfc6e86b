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


def test_all_rows_skipped_is_one_error_and_the_skip_log_is_written(tmp_path):
    from clipguard.errors import ManifestError
    from tests_helpers import make_bad_manifest

    manifest = make_bad_manifest(tmp_path, n_good=0)
    with pytest.raises(ManifestError, match="no usable image-caption pair, all 3 rows skipped"):
        train_from_manifest(manifest, tmp_path / "m", config=CFG, progress=False)
    assert len((tmp_path / "m" / "skipped.csv").read_text().splitlines()) == 4  # header + 3 rows


def test_adaptive_settings_are_checked(tiny_world, tmp_path):
    m = tiny_world / "train" / "manifest.parquet"
    for kwargs, text in (({"adaptive_density": -1.0}, "adaptive_density must be a number in"),
                         ({"adaptive_density": 1.0, "adaptive_k": 0}, "adaptive_k must be an integer >= 1"),
                         ({"config": TrainConfig(batch_size=0)}, "batch_size must be an integer >= 1")):
        with pytest.raises(ConfigError, match=text):
            train_from_manifest(m, tmp_path / "x", progress=False, **{"config": CFG, **kwargs})
    assert not (tmp_path / "x").exists()  # refused before any output is written


def test_default_device_is_the_one_default():
    import inspect

    from clipguard.utils.device import DEFAULT_DEVICE

    assert inspect.signature(train_from_manifest).parameters["device"].default == DEFAULT_DEVICE
