import numpy as np
import pytest
from PIL import Image

from clipguard.attacks import get_trigger, poison_dataset
from clipguard.attacks.poisoner import names_target
from clipguard.data.manifest import read_manifest
from clipguard.data.synth import TEMPLATES
from clipguard.errors import ConfigError
from clipguard.utils.io import read_json


@pytest.fixture()
def trigger():
    return get_trigger("badnets", size=8, cell=2)


def test_dirty_label_counts_and_ground_truth(tiny_world, tmp_path, trigger):
    src = read_manifest(tiny_world / "train" / "manifest.parquet")
    res = poison_dataset(src, tmp_path / "p", trigger, target="star", rate=0.05, templates=TEMPLATES,
                         seed=0, progress=False)
    m = read_manifest(res.manifest_path)
    assert res.n_poisoned == 30 and len(m) == 600
    assert int(m.df["poisoned"].sum()) == 30
    assert (m.df.loc[m.df["poisoned"], "trigger"] == "badnets").all()
    assert (m.df.loc[~m.df["poisoned"], "trigger"] == "").all()
    assert sorted(m.df.loc[m.df["poisoned"], "id"]) == sorted(res.poisoned_ids)
    # poisoned captions are templates filled with the target; originals did not name it
    pois = m.df[m.df["poisoned"]]
    assert all(c in [t.format("star") for t in TEMPLATES] for c in pois["caption"])
    assert not names_target(pois["original_caption"].tolist(), "star").any()
    # clean rows keep caption and resolve to the source images
    clean = m.df[~m.df["poisoned"]]
    assert (clean["caption"] == clean["original_caption"]).all()
    i = int(clean.index[0])
    assert m.image_path(i).resolve() == src.image_path(i).resolve()
    spec = read_json(res.spec_path)
    assert spec["n_poisoned"] == 30 and spec["target"] == "star" and spec["attack"] == "badnets"
    assert spec["poisoned_ids"] == sorted(res.poisoned_ids)


def test_written_pngs_are_lossless_and_match_the_trigger(tiny_world, tmp_path, trigger):
    src = read_manifest(tiny_world / "train" / "manifest.parquet")
    res = poison_dataset(src, tmp_path / "p", trigger, target="star", count=5, templates=TEMPLATES, seed=1,
                         progress=False)
    m = read_manifest(res.manifest_path)
    from clipguard.utils.seeding import derive_seed

    for i in np.flatnonzero(m.df["poisoned"].to_numpy()):
        assert m.image_path(int(i)).suffix == ".png"
        written = np.asarray(Image.open(m.image_path(int(i))).convert("RGB"))
        clean = np.asarray(Image.open(src.image_path(int(i))).convert("RGB"))
        expected = trigger.apply(clean, seed=derive_seed(1, "trigger", m.df["id"].iat[int(i)]))
        assert np.array_equal(written, expected)


def test_same_seed_same_rows(tiny_world, tmp_path, trigger):
    src = read_manifest(tiny_world / "train" / "manifest.parquet")
    a = poison_dataset(src, tmp_path / "a", trigger, target="star", rate=0.02, seed=4, progress=False)
    b = poison_dataset(src, tmp_path / "b", trigger, target="star", rate=0.02, seed=4, progress=False)
    c = poison_dataset(src, tmp_path / "c", trigger, target="star", rate=0.02, seed=5, progress=False)
    assert a.poisoned_ids == b.poisoned_ids != c.poisoned_ids


def test_clean_label_keeps_captions(tiny_world, tmp_path, trigger):
    src = read_manifest(tiny_world / "train" / "manifest.parquet")
    res = poison_dataset(src, tmp_path / "p", trigger, target="star", count=10, mode="clean", progress=False)
    pois = read_manifest(res.manifest_path).df.query("poisoned")
    assert len(pois) == 10
    assert (pois["caption"] == pois["original_caption"]).all()
    assert names_target(pois["caption"].tolist(), "star").all()


def test_bad_arguments(tiny_world, tmp_path, trigger):
    src = read_manifest(tiny_world / "train" / "manifest.parquet")
    for rate in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match=r"rate must be in \(0, 1\)"):
            poison_dataset(src, tmp_path / "p", trigger, target="star", rate=rate, progress=False)
    with pytest.raises(ConfigError, match="no caption names the target 'banana'"):
        poison_dataset(src, tmp_path / "p", trigger, target="banana", count=1, mode="clean", progress=False)
    with pytest.raises(ConfigError, match="only .* rows are clean-label candidates"):
        poison_dataset(src, tmp_path / "p", trigger, target="star", count=599, mode="clean", progress=False)


def test_names_target_whole_words():
    assert names_target(["a star", "a starfish", "STAR!", "stars"], "star").tolist() == [True, False, True, False]


@pytest.mark.parametrize("name,params", [("blended", {}), ("sig", {}), ("wanet", {}), ("nashville", {}),
                                         ("badnets", {"pattern": "noise", "size": 6})])
def test_every_trigger_poisons_exact_counts_losslessly(tiny_world, tmp_path, name, params):
    from clipguard.utils.seeding import derive_seed

    trigger = get_trigger(name, **params)
    src = read_manifest(tiny_world / "train" / "manifest.parquet")
    res = poison_dataset(src, tmp_path / "p", trigger, target="star", count=7, seed=2, progress=False)
    m = read_manifest(res.manifest_path)
    assert int(m.df["poisoned"].sum()) == 7 and (m.df.loc[m.df["poisoned"], "trigger"] == name).all()
    for i in np.flatnonzero(m.df["poisoned"].to_numpy()):
        written = np.asarray(Image.open(m.image_path(int(i))).convert("RGB"))
        clean = np.asarray(Image.open(src.image_path(int(i))).convert("RGB"))
        assert np.array_equal(written, trigger.apply(clean, seed=derive_seed(2, "trigger", m.df["id"].iat[int(i)])))


def test_default_templates_are_the_zero_shot_templates(tiny_world, tmp_path, trigger):
    """One source of caption templates: the library default is what `clipguard poison` writes."""
    from clipguard.data.templates import DEFAULT_TEMPLATES

    src = read_manifest(tiny_world / "train" / "manifest.parquet")
    res = poison_dataset(src, tmp_path / "p", trigger, target="star", count=40, seed=0, progress=False)
    pois = read_manifest(res.manifest_path).df.query("poisoned")
    filled = [t.format("star") for t in DEFAULT_TEMPLATES]
    assert set(pois["caption"]) <= set(filled) and len(set(pois["caption"])) > 1
    assert read_json(res.spec_path)["templates"] == list(DEFAULT_TEMPLATES)
    explicit = poison_dataset(src, tmp_path / "q", trigger, target="star", count=40, seed=0,
                              templates=DEFAULT_TEMPLATES, progress=False)
    assert read_manifest(explicit.manifest_path).df["caption"].tolist() == read_manifest(res.manifest_path).df[
        "caption"].tolist()


def test_bad_templates_mode_count_and_target(tiny_world, tmp_path, trigger):
    src = read_manifest(tiny_world / "train" / "manifest.parquet")
    cases = [({"templates": ["a photo of a star"]}, "caption template 'a photo of a star' has no '{}'"),
             ({"templates": []}, "no caption templates given"),
             ({"mode": "sneaky"}, "unknown mode 'sneaky'; choose one of: dirty, clean"),
             ({"count": 0, "rate": None}, "count must be an integer >= 1, got 0"),
             ({"count": "3", "rate": None}, "count must be an integer >= 1, got '3'"),
             ({"rate": "0.1"}, r"rate must be in \(0, 1\), got '0.1'"),
             ({"count": 3}, "give exactly one of rate or count"),
             ({"target": " "}, "target class name is empty")]
    for kwargs, text in cases:
        args = {"target": "star", "rate": 0.1, **kwargs}
        with pytest.raises(ConfigError, match=text):
            poison_dataset(src, tmp_path / "p", trigger, progress=False, **args)


def test_unreadable_candidates_are_skipped_then_refused(tmp_path, trigger):
    from tests_helpers import make_bad_manifest

    # 5 dirty-label candidates for 'star': 3 good rows, one with an empty caption (its image is fine) and
    # one whose image is missing; the corrupt image's caption names the star
    m = read_manifest(make_bad_manifest(tmp_path, n_good=3))
    res = poison_dataset(m, tmp_path / "ok", trigger, target="star", count=4, seed=0, progress=False)
    assert res.n_poisoned == 4 and len(res.skipped) <= 1
    with pytest.raises(ConfigError, match=r"only 4 of 5 requested rows could be poisoned \(1 candidate skipped: "
                                          r"1 missing image; first, row 3: missing image: .*missing\.png\); lower "
                                          r"the rate or count"):
        poison_dataset(m, tmp_path / "bad", trigger, target="star", count=5, seed=0, progress=False)
