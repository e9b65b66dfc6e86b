"""The long-tailed world: determinism, Zipf frequencies, caption pools, poison captions, the CLI.

Generation time of the default 100,000-pair world: stated in clipguard.data.longtail's docstring.
"""
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from clipguard.data.longtail import (CAPTION_TEMPLATES, MAX_CONCEPTS, caption_pool, generate_longtail_world,
                                     poison_templates, render_concept, world_concepts, zipf_counts)
from clipguard.data.templates import DEFAULT_TEMPLATES
from clipguard.errors import ConfigError
from clipguard.utils.io import read_json
from tests_helpers import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def lt_world(tmp_path_factory):
    """A 400-pair long-tailed world with 40 concepts (path to its folder)."""
    out = tmp_path_factory.mktemp("longtail")
    generate_longtail_world(out, n_train=400, n_test=80, n_concepts=40, seed=2, progress=False, workers=1)
    return out


def test_world_is_identical_for_the_same_seed(lt_world, tmp_path):
    generate_longtail_world(tmp_path / "b", n_train=400, n_test=80, n_concepts=40, seed=2, progress=False, workers=2)
    for name in ("classes.json", "concepts.json"):
        assert (lt_world / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    for split in ("train", "test"):
        da = pd.read_parquet(lt_world / split / "manifest.parquet")
        db = pd.read_parquet(tmp_path / "b" / split / "manifest.parquet")
        pd.testing.assert_frame_equal(da, db)
        for rel in da["image"]:
            assert (lt_world / split / rel).read_bytes() == (tmp_path / "b" / split / rel).read_bytes()
    a, ca = render_concept(0, "train", 3, "striped red star")
    c, _ = render_concept(1, "train", 3, "striped red star")
    assert np.asarray(a).shape == (32, 32, 3) and not np.array_equal(np.asarray(a), np.asarray(c))
    assert ca in caption_pool("striped red star")


def test_layout_ranks_and_labels(lt_world):
    info = read_json(lt_world / "classes.json")
    concepts = read_json(lt_world / "concepts.json")["concepts"]
    train = pd.read_parquet(lt_world / "train" / "manifest.parquet")
    test = pd.read_parquet(lt_world / "test" / "manifest.parquet")
    assert len(train) == 400 and len(test) == 80 and len(info["classes"]) == 40
    assert info["classes"] == [c["name"] for c in concepts] == [c.name for c in world_concepts(40, 2)]
    assert [c["rank"] for c in concepts] == list(range(1, 41))
    assert set(DEFAULT_TEMPLATES) <= set(info["templates"]) and info["templates"] == list(CAPTION_TEMPLATES)
    counts = train["concept"].value_counts()
    assert all(counts.get(c["name"], 0) == c["n_train"] for c in concepts)
    assert (train["rank"] == train["concept"].map({c["name"]: c["rank"] for c in concepts})).all()
    assert (test["label"] == test["rank"] - 1).all() and (test["class_name"] == test["concept"]).all()
    assert test["concept"].value_counts().max() == 2 and test["concept"].nunique() == 40  # even test split
    assert (lt_world / "train" / train["image"].iat[0]).is_file()


def test_frequencies_follow_zipf():
    """Rank-frequency slope of 5,000 rows over 64 concepts: within 0.05 of -zipf (fit on counts >= 5)."""
    for zipf in (0.8, 1.1, 1.5):
        counts = zipf_counts(5000, 64, zipf)
        assert counts.sum() == 5000 and (np.diff(counts) <= 0).all()
        keep = counts >= 5
        slope = np.polyfit(np.log(np.arange(1, 65)[keep]), np.log(counts[keep]), 1)[0]
        assert abs(slope + zipf) < 0.05, (zipf, slope)
    assert (zipf_counts(640, 64, 0.0) == 10).all()


def test_captions_come_from_the_concept_pool_and_none_dominates(lt_world):
    train = pd.read_parquet(lt_world / "train" / "manifest.parquet")
    for concept, caption in zip(train["concept"], train["caption"]):
        assert caption in caption_pool(concept) and concept in caption
    top = train[train["rank"] == 1]["caption"]
    assert top.value_counts().iloc[0] / len(top) < 0.1  # 64 equally likely strings: ~1.6 % each
    assert len(set(caption_pool("small red star"))) == len(CAPTION_TEMPLATES) == 64


def test_poison_captions_have_the_clean_caption_distribution():
    """Captions drawn as poison_dataset draws them (uniform over the templates, filled with the target)
    match the target's clean captions: same strings, chi-square on 64 cells within its 99.9 % bound."""
    target = "dotted blue ring"
    clean = Counter(render_concept(0, "train", i, target)[1] for i in range(1500))
    rng = np.random.default_rng(0)
    templates = poison_templates(target)
    poison = Counter(templates[int(rng.integers(len(templates)))].format(target) for _ in range(1500))
    pool = caption_pool(target)
    assert set(clean) == set(poison) == set(pool)
    table = np.array([[clean[s] for s in pool], [poison[s] for s in pool]], dtype=float)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    chi2 = float(((table - expected) ** 2 / expected).sum())
    assert chi2 < 103.4  # chi-square 99.9 % quantile, 63 degrees of freedom


def test_bad_options_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=f"n_concepts must be an integer in \\[1, {MAX_CONCEPTS}\\]"):
        generate_longtail_world(tmp_path / "w", n_train=10, n_test=5, n_concepts=MAX_CONCEPTS + 1, progress=False)
    with pytest.raises(ConfigError, match="zipf"):
        generate_longtail_world(tmp_path / "w", n_train=10, n_test=5, zipf=-1.0, progress=False)
    with pytest.raises(ConfigError, match="not a concept of the long-tailed world"):
        poison_templates("star")
    assert not (tmp_path / "w").exists()


def test_cli_longtail_world(tmp_path):
    out = tmp_path / "lt"
    r = run_cli("synth", "--world", "longtail", "--n-train", 500, "--n-test", 100, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "wrote 500 train and 100 test pairs" in r.stdout and "256 concepts" in r.stdout
    assert len(pd.read_parquet(out / "train" / "manifest.parquet")) == 500
    assert read_json(out / "concepts.json")["zipf"] == 1.1
    bad = run_cli("synth", "--n-train", 10, "--n-test", 5, "--zipf", 1.0, "--out", tmp_path / "s")
    assert_one_line_error(bad, "--world longtail")
