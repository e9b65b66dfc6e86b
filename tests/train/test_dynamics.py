"""The training-dynamics record (``TrainConfig.record_epochs``) and its score ``learning_speed``."""
import pandas as pd
import pytest
import torch

from clipguard.data import read_manifest
from clipguard.errors import ConfigError
from clipguard.models import create_model
from clipguard.train import PairData, TrainConfig, learning_speed, read_dynamics, train_clip, train_from_manifest
from tests_helpers import Killed, kill_after_steps


def _pairs(world):
    b = create_model("tiny-rn", seed=0)
    return PairData(read_manifest(world / "train" / "manifest.parquet"), b, progress=False)


def test_record_is_written_and_read_back(tiny_world, tmp_path):
    manifest = tiny_world / "train" / "manifest.parquet"
    cfg = TrainConfig(epochs=2, batch_size=100, warmup_steps=2, record_epochs=1)
    train_from_manifest(manifest, tmp_path / "m", config=cfg, progress=False, device="cpu")
    df = read_dynamics(tmp_path / "m")
    assert list(df.columns) == ["id", "row", "epoch", "cosine"]
    assert len(df) == 600 and set(df["epoch"]) == {1}  # one row per pair per recorded epoch (1 of 2)
    assert df["cosine"].between(-1, 1).all() and df["cosine"].std() > 0
    ids = read_manifest(manifest).df["id"].astype(str)
    assert sorted(df["id"]) == sorted(ids) and (ids.to_numpy()[df["row"].to_numpy()] == df["id"].to_numpy()).all()
    assert read_dynamics(tmp_path / "m" / "dynamics.parquet").equals(df)


def test_recording_leaves_the_weights_identical_and_resume_keeps_recorded_epochs(tiny_world, tmp_path):
    pairs = _pairs(tiny_world)
    plain_cfg = TrainConfig(epochs=2, batch_size=100, warmup_steps=2, seed=0)
    cfg = TrainConfig(epochs=2, batch_size=100, warmup_steps=2, seed=0, record_epochs=2)
    plain, recorded = create_model("tiny-rn", seed=0), create_model("tiny-rn", seed=0)
    res_plain = train_clip(plain, pairs, plain_cfg, tmp_path / "plain", progress=False)
    res_rec = train_clip(recorded, pairs, cfg, tmp_path / "rec", progress=False)
    assert not (tmp_path / "plain" / "dynamics.parquet").exists()
    assert [h["loss"] for h in res_plain.history] == [h["loss"] for h in res_rec.history]
    for (k, p), q in zip(plain.model.state_dict().items(), recorded.model.state_dict().values()):
        assert torch.equal(p, q), k
    full = read_dynamics(tmp_path / "rec")
    assert sorted(set(full["epoch"])) == [1, 2] and len(full) == 2 * 600

    # "kill" in epoch 2 (after epoch 1's record and checkpoint), then rerun: epoch 1 is kept, epoch 2 added
    stop_in_epoch_two = kill_after_steps(6)  # 6 steps per epoch at 600 pairs / 100

    with pytest.raises(Killed):
        train_clip(create_model("tiny-rn", seed=0), pairs, cfg, tmp_path / "part", progress=False,
                   extra_loss=stop_in_epoch_two)
    assert set(read_dynamics(tmp_path / "part")["epoch"]) == {1}
    resumed = create_model("tiny-rn", seed=0)
    assert train_clip(resumed, pairs, cfg, tmp_path / "part", progress=False).epochs_run == 1
    pd.testing.assert_frame_equal(read_dynamics(tmp_path / "part"), full)
    for (k, p), q in zip(plain.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), k


def test_learning_speed_is_the_mean_within_epoch_percentile_rank():
    df = pd.DataFrame({"id": ["a", "b", "c", "d"] * 2, "epoch": [1] * 4 + [2] * 4,
                       "cosine": [0.1, 0.4, 0.2, 0.4, 0.9, 0.3, 0.5, 0.7]})
    # epoch 1 ranks (ties averaged) / 4: a 1/4, c 2/4, b and d 3.5/4; epoch 2: b 1/4, c 2/4, d 3/4, a 4/4
    expected = pd.Series({"a": (0.25 + 1.0) / 2, "b": (0.875 + 0.25) / 2, "c": (0.5 + 0.5) / 2,
                          "d": (0.875 + 0.75) / 2}, name="learning_speed")
    expected.index.name = "id"
    pd.testing.assert_series_equal(learning_speed(df), expected)
    # ranks: a monotone change of one epoch's cosines leaves the score as it was
    shifted = df.assign(cosine=df["cosine"].where(df["epoch"] == 1, df["cosine"] * 0.5 + 0.3))
    pd.testing.assert_series_equal(learning_speed(shifted), expected)


def test_user_errors_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no training-dynamics record; train with .*--record-epochs"):
        read_dynamics(tmp_path)
    with pytest.raises(ConfigError, match="lacks column\\(s\\) cosine"):
        learning_speed(pd.DataFrame({"id": ["a"], "epoch": [1]}))
    with pytest.raises(ConfigError, match="is empty"):
        learning_speed(pd.DataFrame(columns=["id", "epoch", "cosine"]))
    with pytest.raises(ConfigError, match="record_epochs must be an integer >= 0, got -1"):
        TrainConfig(record_epochs=-1).check()
