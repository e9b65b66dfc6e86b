import math

import pytest
import torch

from clipguard.data import read_manifest
from clipguard.models import create_model
from clipguard.train import PairData, TrainConfig, clip_loss, train_clip
from clipguard.train.losses import MAX_LOGIT_SCALE
from clipguard.errors import ConfigError
from clipguard.train.trainer import lr_at
from tests_helpers import Killed, kill_after_steps, no_gpu


def test_clip_loss_value():
    # two perfectly separated pairs at scale 1: loss = log(1 + e^{-1}) - ... computed by hand
    f = torch.eye(2)
    loss = clip_loss(f, f, torch.tensor(0.0))
    expected = -math.log(math.e / (math.e + 1))
    assert abs(loss.item() - expected) < 1e-6


def test_lr_schedule():
    cfg = TrainConfig(lr=1.0, warmup_steps=10)
    assert lr_at(0, 100, cfg) == 0.1 and lr_at(9, 100, cfg) == 1.0
    assert abs(lr_at(55, 100, cfg) - 0.5) < 1e-9 and lr_at(100, 100, cfg) == 0.0


def _pairs(world):
    b = create_model("tiny-rn", seed=0)
    return PairData(read_manifest(world / "train" / "manifest.parquet"), b, progress=False)


def test_resume_after_kill_gives_identical_weights(tiny_world, tmp_path):
    pairs = _pairs(tiny_world)
    cfg = TrainConfig(epochs=2, batch_size=100, warmup_steps=2, seed=0)
    full = create_model("tiny-rn", seed=0)
    res = train_clip(full, pairs, cfg, tmp_path / "full", progress=False)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    # "kill" after epoch 1: run a 2-epoch job but stop it after the first epoch's checkpoint
    part = create_model("tiny-rn", seed=0)

    stop_in_epoch_two = kill_after_steps(6)  # 6 steps per epoch at 600 pairs / 100

    try:
        train_clip(part, pairs, cfg, tmp_path / "part", progress=False, extra_loss=stop_in_epoch_two)
    except Killed:
        pass
    resumed = create_model("tiny-rn", seed=0)
    res2 = train_clip(resumed, pairs, cfg, tmp_path / "part", progress=False)
    assert res2.epochs_run == 1 and len(res2.history) == 2
    for (k, p), q in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), k
    assert full.model.logit_scale.item() <= MAX_LOGIT_SCALE


def test_precision_is_checked_before_training(tiny_world, tmp_path):
    pairs = _pairs(tiny_world)
    with pytest.raises(ConfigError, match="unknown precision 'fp16'; choose one of: fp32, bf16"):
        train_clip(create_model("tiny-rn"), pairs, TrainConfig(epochs=1, precision="fp16"), tmp_path / "a",
                   progress=False)
    assert not (tmp_path / "a" / "checkpoints").exists()


@no_gpu
def test_bf16_without_a_gpu_is_refused_before_training(tiny_world, tmp_path):
    with pytest.raises(ConfigError, match="--device cuda"):
        train_clip(create_model("tiny-rn"), _pairs(tiny_world), TrainConfig(epochs=1, precision="bf16"),
                   tmp_path / "b", progress=False)
    assert not (tmp_path / "b" / "checkpoints").exists()


def test_training_neither_reads_nor_moves_the_global_generator(tiny_world, tmp_path):
    """Seeded by config.seed alone: the caller's global torch state neither changes the weights nor is changed."""
    pairs = _pairs(tiny_world)
    cfg = TrainConfig(epochs=1, batch_size=200, warmup_steps=1, seed=3)
    weights = []
    for i, global_seed in enumerate((0, 99)):
        torch.manual_seed(global_seed)
        expected = torch.rand(2)
        torch.manual_seed(global_seed)
        b = create_model("tiny-rn", seed=0)
        train_clip(b, pairs, cfg, tmp_path / str(i), progress=False)
        assert torch.equal(torch.rand(2), expected)
        weights.append(b.model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_settings_out_of_range_are_refused_before_training(tiny_world, tmp_path):
    import pytest

    from clipguard.errors import ConfigError

    pairs = _pairs(tiny_world)
    for cfg, text in ((TrainConfig(batch_size=0), "batch_size must be an integer >= 1, got 0"),
                      (TrainConfig(epochs=0), "epochs must be an integer >= 1"),
                      (TrainConfig(lr=-1.0), r"lr must be a number in \(0, inf\)"),
                      (TrainConfig(grad_clip=-1.0), r"grad_clip must be a number in \[0, inf\)"),
                      (TrainConfig(warmup_steps=1.5), "warmup_steps must be an integer >= 0")):
        with pytest.raises(ConfigError, match=text):
            train_clip(create_model("tiny-rn"), pairs, cfg, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_no_usable_pair_is_a_manifest_error(tmp_path):
    import pytest

    from clipguard.errors import ManifestError
    from tests_helpers import make_bad_manifest

    b = create_model("tiny-rn")
    m = read_manifest(make_bad_manifest(tmp_path, n_good=0))
    with pytest.raises(ManifestError, match=r"no usable image-caption pair, all 3 rows skipped \(1 missing image, "
                                            r"1 empty caption, 1 unreadable image\)"):
        PairData(m, b, progress=False)
