import numpy as np
import pytest

from clipguard.attacks import get_trigger, poison_dataset
from clipguard.attacks.poisoner import names_target
from clipguard.data.manifest import read_manifest
from clipguard.data.synth import TEMPLATES
from clipguard.errors import ConfigError
from clipguard.utils.io import read_json

TRIGGERS = [{"attack": "badnets", "params": {"size": 8, "cell": 2}}, {"attack": "sig"}]


def test_multi_one_target_per_trigger(tiny_world, tmp_path):
    src = read_manifest(tiny_world / "train" / "manifest.parquet")
    trig = get_trigger("multi", triggers=TRIGGERS, targets=["star", "ring"])
    res = poison_dataset(src, tmp_path / "p", trig, target="star", count=20, templates=TEMPLATES, progress=False)
    df = read_manifest(res.manifest_path).df
    pois = df[df["poisoned"]]
    assert len(pois) == 20
    assert sorted(pois["trigger"].value_counts().tolist()) == [10, 10]  # equal shares
    for name, target in (("multi:0:badnets", "star"), ("multi:1:sig", "ring")):
        caps = pois.loc[pois["trigger"] == name, "caption"]
        assert all(c in [t.format(target) for t in TEMPLATES] for c in caps)
    # no original caption named either target
    assert not names_target(pois["original_caption"].tolist(), "star").any()
    assert not names_target(pois["original_caption"].tolist(), "ring").any()
    assert read_json(res.spec_path)["params"]["targets"] == ["star", "ring"]


def test_multi_needs_matching_targets():
    with pytest.raises(ConfigError, match="one per trigger"):
        get_trigger("multi", triggers=TRIGGERS, targets=["star"])


def test_tdpa_duplicates_one_image_with_target_captions(tiny_world, tmp_path):
    src = read_manifest(tiny_world / "train" / "manifest.parquet")
    res = poison_dataset(src, tmp_path / "p", get_trigger("tdpa"), target="star", count=25, progress=False)
    m = read_manifest(res.manifest_path)
    assert len(m) == 625 and res.n_poisoned == 25
    pois = m.df[m.df["poisoned"]]
    assert (pois["image"] == "images/tdpa_source.png").all() and (pois["trigger"] == "tdpa").all()
    assert names_target(pois["caption"].tolist(), "star").all()
    real_star_captions = set(src.df["caption"][names_target(src.df["caption"].tolist(), "star")])
    assert set(pois["caption"]) <= real_star_captions  # real captions, not templates
    spec = read_json(res.spec_path)
    source = src.df.set_index("id").loc[spec["source_id"]]
    assert not names_target([source["caption"]], "star").any()
    a = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(tmp_path / "p" / "images" / "tdpa_source.png"))
    b = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(tiny_world / "train" / source["image"]).convert("RGB"))
    assert np.array_equal(a, b)


def test_tdpa_unknown_source(tiny_world, tmp_path):
    src = read_manifest(tiny_world / "train" / "manifest.parquet")
    with pytest.raises(ConfigError, match="not an id"):
        poison_dataset(src, tmp_path / "p", get_trigger("tdpa", source_id="nope"), target="star", count=3,
                       progress=False)
