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
