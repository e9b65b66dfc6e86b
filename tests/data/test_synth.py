import numpy as np
import pandas as pd

from clipguard.data.synth import SHAPES, TEMPLATES, fix_articles, generate_world, render_sample
from clipguard.utils.io import read_json


def test_render_is_deterministic_and_seed_dependent():
    a, ca, _ = render_sample(0, "train", 5)
    b, cb, _ = render_sample(0, "train", 5)
    c, _, _ = render_sample(1, "train", 5)
    assert np.array_equal(np.asarray(a), np.asarray(b)) and ca == cb
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert np.asarray(a).shape == (32, 32, 3)


def test_world_layout(tiny_world):
    info = read_json(tiny_world / "classes.json")
    assert info["classes"] == list(SHAPES) and info["templates"] == list(TEMPLATES)
    train = pd.read_parquet(tiny_world / "train" / "manifest.parquet")
    test = pd.read_parquet(tiny_world / "test" / "manifest.parquet")
    assert len(train) == 600 and len(test) == 200
    assert set(train["n_objects"]) == {1, 2}
    assert (test["n_objects"] == 1).all()
    assert (test["label"] == [SHAPES.index(s) for s in test["class_name"]]).all()
    # every caption names its shape(s) plainly
    for cap, shapes in zip(train["caption"], train["shapes"]):
        assert all(s in cap for s in shapes.split(","))
    assert (tiny_world / "train" / train["image"].iat[0]).is_file()


def test_world_is_identical_for_the_same_seed(tmp_path):
    generate_world(tmp_path / "a", n_train=40, n_test=10, seed=3, progress=False, workers=1)
    generate_world(tmp_path / "b", n_train=40, n_test=10, seed=3, progress=False, workers=2)
    for split in ("train", "test"):
        da = pd.read_parquet(tmp_path / "a" / split / "manifest.parquet")
        db = pd.read_parquet(tmp_path / "b" / split / "manifest.parquet")
        pd.testing.assert_frame_equal(da, db)
        for rel in da["image"]:
            assert (tmp_path / "a" / split / rel).read_bytes() == (tmp_path / "b" / split / rel).read_bytes()


def test_articles():
    assert fix_articles("a amber ring and a red star") == "an amber ring and a red star"


def test_world_templates_are_the_one_source():
    from clipguard.data.templates import DEFAULT_TEMPLATES

    assert TEMPLATES is DEFAULT_TEMPLATES


def test_bad_sizes_and_shapes_are_config_errors(tmp_path):
    import pytest

    from clipguard.data.synth import draw_shape_mask
    from clipguard.errors import ConfigError

    with pytest.raises(ConfigError, match="n_train must be an integer >= 1, got 0"):
        generate_world(tmp_path / "w", n_train=0, n_test=10, progress=False)
    with pytest.raises(ConfigError, match="n_test must be an integer >= 1"):
        generate_world(tmp_path / "w", n_train=10, n_test="5", progress=False)
    with pytest.raises(ConfigError, match="unknown shape 'hexagon'; choose one of: circle"):
        draw_shape_mask("hexagon", 32, 16, 16, 8, 0.0)
    assert not (tmp_path / "w").exists()
