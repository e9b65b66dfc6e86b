import math

import torch

from clipguard.data import ImageCaptionDataset, read_manifest
from clipguard.models import create_model
from clipguard.train import TrainConfig, clip_loss, load_pairs, train_clip
from clipguard.train.loss import MAX_LOGIT_SCALE
from clipguard.train.trainer import lr_at


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
    ds = ImageCaptionDataset(read_manifest(world / "train" / "manifest.parquet"), b.preprocess, b.tokenizer)
    return load_pairs(ds, progress=False)


def test_resume_after_kill_gives_identical_weights(tiny_world, tmp_path):
    pairs = _pairs(tiny_world)
    cfg = TrainConfig(epochs=2, batch_size=100, warmup_steps=2, seed=0)
    full = create_model("tiny-rn", seed=0)
    res = train_clip(full, pairs, cfg, tmp_path / "full", progress=False)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    # "kill" after epoch 1: run a 2-epoch job but stop it after the first epoch's checkpoint
    part = create_model("tiny-rn", seed=0)

    class Kill(Exception):
        pass

    calls = {"n": 0}

    def stop_in_epoch_two(img_f, txt_f, rows):
        calls["n"] += 1
        if calls["n"] > 6:  # 6 steps per epoch at 600 pairs / 100
            raise Kill
        return img_f.sum() * 0

    try:
        train_clip(part, pairs, cfg, tmp_path / "part", progress=False, extra_loss=stop_in_epoch_two)
    except Kill:
        pass
    resumed = create_model("tiny-rn", seed=0)
    res2 = train_clip(resumed, pairs, cfg, tmp_path / "part", progress=False)
    assert res2.epochs_run == 1 and len(res2.history) == 2
    for (k, p), q in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), k
    assert full.model.logit_scale.item() <= MAX_LOGIT_SCALE


def test_precision_is_checked_before_training(tiny_world, tmp_path):
    import pytest

    from clipguard.errors import ConfigError

    pairs = _pairs(tiny_world)
    with pytest.raises(ConfigError, match="fp32 or bf16"):
        train_clip(create_model("tiny-rn"), pairs, TrainConfig(epochs=1, precision="fp16"), tmp_path / "a",
                   progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--device cuda"):
            train_clip(create_model("tiny-rn"), pairs, TrainConfig(epochs=1, precision="bf16"), tmp_path / "b",
                       progress=False)
    assert not (tmp_path / "a" / "checkpoints").exists()
