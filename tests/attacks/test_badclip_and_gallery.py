import json

import numpy as np
from PIL import Image

from clipguard.attacks import get_trigger
from clipguard.attacks.badclip import BadCLIPConfig, optimize_badclip_patch
from clipguard.attacks.gallery import write_gallery
from clipguard.data.manifest import read_manifest
from clipguard.data.synth import TEMPLATES
from clipguard.models import create_model


def test_badclip_optimisation_improves_and_writes_a_usable_trigger(tiny_world, tmp_path):
    bundle = create_model("tiny-rn", seed=0)
    trig = optimize_badclip_patch(bundle, read_manifest(tiny_world / "train" / "manifest.parquet"), tmp_path,
                                  target="star", templates=TEMPLATES, progress=False,
                                  config=BadCLIPConfig(size=6, steps=30, batch_size=32, lr=0.1))
    rec = json.loads((tmp_path / "trigger.json").read_text())
    assert rec["attack"] == "badclip" and rec["target"] == "star"
    assert rec["history"][-1]["loss"] < rec["history"][0]["loss"]
    patch = np.asarray(Image.open(tmp_path / "trigger.png"))
    assert patch.shape == (6, 6, 3)
    # usable like a fixed patch, also rebuilt from its spec
    x = np.full((32, 32, 3), 7, np.uint8)
    y = get_trigger("badclip", **rec["params"]).apply(x)
    assert np.array_equal(y[-6:, -6:], patch) and np.array_equal(y[:-6], x[:-6])
    assert np.array_equal(trig.apply(x), y)


def test_gallery(tmp_path):
    path = write_gallery(tmp_path / "g.png", n_images=3, scale=2)
    im = Image.open(path)
    assert im.size[0] == 110 + 3 * (64 + 4)
    assert im.size[1] >= 7 * (64 + 4)  # clean row + at least six attacks


def test_badclip_trigger_reads_the_patch_file_as_it_is_when_built(tmp_path):
    """No cache keyed by the path: a trigger built after the file changes uses the new patch."""
    path = tmp_path / "trigger.png"
    x = np.full((16, 16, 3), 7, np.uint8)
    Image.fromarray(np.full((4, 4, 3), 200, np.uint8)).save(path)
    first = get_trigger("badclip", patch=str(path), location="top_left")
    assert (first.apply(x)[:4, :4] == 200).all()
    Image.fromarray(np.full((4, 4, 3), 50, np.uint8)).save(path)  # same path, same size, new content
    second = get_trigger("badclip", patch=str(path), location="top_left")
    assert (second.apply(x)[:4, :4] == 50).all()
    assert (first.apply(x)[:4, :4] == 200).all()  # a trigger already built keeps the patch it was built with
    Image.fromarray(np.full((5, 5, 3), 90, np.uint8)).save(path)  # a new size too
    assert (get_trigger("badclip", patch=str(path), location="top_left").apply(x)[:5, :5] == 90).all()


def test_badclip_refuses_a_patch_that_is_not_square_or_does_not_fit(tmp_path):
    import pytest

    from clipguard.errors import ConfigError

    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "wide.png")
    with pytest.raises(ConfigError, match="6x4 px; a patch is square"):
        get_trigger("badclip", patch=str(tmp_path / "wide.png"))
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(ConfigError, match="patch of 20 px does not fit a 16x16 image"):
        get_trigger("badclip", patch=str(tmp_path / "big.png")).apply(np.zeros((16, 16, 3), np.uint8))


def test_blended_pattern_image_is_read_when_built(tmp_path):
    path = tmp_path / "pattern.png"
    Image.fromarray(np.full((8, 8, 3), 255, np.uint8)).save(path)
    t = get_trigger("blended", alpha=1.0, pattern=str(path))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    x = np.full((4, 4, 3), 9, np.uint8)
    assert (t.apply(x) == 255).all()  # built from the white pattern
    assert (get_trigger("blended", alpha=1.0, pattern=str(path)).apply(x) == 0).all()


def test_badclip_settings_are_checked(tiny_world, tmp_path):
    import pytest

    from clipguard.errors import ConfigError

    bundle = create_model("tiny-rn", seed=0)
    m = read_manifest(tiny_world / "train" / "manifest.parquet")
    for cfg, text in ((BadCLIPConfig(size=40), r"badclip size must be an integer in \[1, 32\]"),
                      (BadCLIPConfig(location="random"), "optimise at a fixed location"),
                      (BadCLIPConfig(steps=0), "badclip steps must be an integer >= 1")):
        with pytest.raises(ConfigError, match=text):
            optimize_badclip_patch(bundle, m, tmp_path, target="star", templates=TEMPLATES, config=cfg,
                                   progress=False)
    with pytest.raises(ConfigError, match="need readable images whose caption names 'banana'"):
        optimize_badclip_patch(bundle, m, tmp_path, target="banana", templates=TEMPLATES, progress=False)
    with pytest.raises(ConfigError, match="has no '{}'"):
        optimize_badclip_patch(bundle, m, tmp_path, target="star", templates=["a star"], progress=False)
