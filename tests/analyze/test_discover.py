"""Clustering the top-scored samples (analyze/discover.py) on embeddings whose structure is known."""
import numpy as np
import pandas as pd
import pytest

from clipguard.analyze.discover import (DiscoverConfig, cluster_images, discover_clusters, merge_by_caption,
                                        normalise_caption, repeated_captions)
from clipguard.errors import ConfigError


def _world(seed=0):
    """640 samples: 30 copies of one motif under one caption, 20 copies of one picture under 20 captions,
    550 scattered ones, and 20 exact pairs (a precise caption on two near-identical images, as any dataset
    has); the planted ones score highest."""
    g = np.random.default_rng(seed)
    d = 32
    spread = g.normal(size=(550, d))
    motif = g.normal(size=d) + 0.03 * g.normal(size=(30, d))
    placeholder = np.repeat(g.normal(size=(1, d)), 20, 0)
    pairs = np.repeat(g.normal(size=(20, d)), 2, 0) + 0.01 * g.normal(size=(40, d))
    image = np.vstack([motif, placeholder, spread, pairs])
    captions = (["A birthday cake with candles."] * 30 + [f"a photo of thing {i}" for i in range(20)]
                + [f"caption {i % 275}" for i in range(550)] + [f"pair {i // 2}" for i in range(40)])
    text = np.vstack([np.repeat(g.normal(size=(1, d)), 30, 0), g.normal(size=(20, d)), g.normal(size=(550, d)),
                      np.repeat(g.normal(size=(20, d)), 2, 0)])
    scores = np.concatenate([3 + g.random(30), 2 + g.random(20), g.random(550), g.random(40)])
    ids = [f"id{i}" for i in range(640)]
    return image, text, captions, scores, ids


def test_the_motif_ranks_first_and_the_placeholder_is_noisy_pairs():
    image, text, captions, scores, ids = _world()
    table = discover_clusters(image, scores, captions, ids, text=text, config=DiscoverConfig(top=60))
    first = table.iloc[0]
    assert first["kind"] == "backdoor" and first["size"] == 30 and first["name"] == "A birthday cake with candles."
    assert set(first["member_ids"]) == {f"id{i}" for i in range(30)} and first["caption_agreement"] == 1.0
    assert first["share"] == pytest.approx(30 / 640) and first["image_tightness"] > 0.99
    noisy = table[table["kind"] == "noisy pairs"].iloc[0]
    assert noisy["size"] == 20 and noisy["n_captions"] == 20 and noisy["image_tightness"] == pytest.approx(1.0)
    assert table.attrs["n_top"] == 60 and list(table["rank"]) == list(range(1, len(table) + 1))
    assert list(table["kind"]) == sorted(table["kind"], key=["backdoor", "noisy pairs", "duplicates", "mixed"].index)


def test_clustering_is_deterministic_per_seed():
    image, text, captions, scores, ids = _world()
    cfg = DiscoverConfig(top=300, max_points=100, seed=3)  # subsampled: the seed matters
    a = discover_clusters(image, scores, captions, ids, text=text, config=cfg)
    b = discover_clusters(image, scores, captions, ids, text=text, config=cfg)
    pd.testing.assert_frame_equal(a, b)
    labels = [cluster_images(image[:300], threshold=0.9, max_points=100, seed=s) for s in (3, 3)]
    assert np.array_equal(*labels)


def test_a_motif_split_by_the_threshold_is_merged_by_its_caption():
    labels = np.array([0, 0, 1, 1, 2, 3, 3])
    caps = ["Cake!", "cake", "cake", "CAKE.", "dog", "x", "y"]
    assert normalise_caption("A  Cake!") == "a cake"
    # clusters 0 and 1 are both mostly "cake" -> merged; 3 has two captions -> stays alone
    assert list(merge_by_caption(labels, caps, 0.5)) == [0, 0, 0, 0, 1, 2, 2]


def test_bad_inputs():
    image, text, captions, scores, ids = _world()
    with pytest.raises(ConfigError, match="one row per sample"):
        discover_clusters(image, scores[:-1], captions, ids)
    with pytest.raises(ConfigError, match="at least one sample"):
        discover_clusters(image[:0], scores[:0], [], [])
    with pytest.raises(ConfigError, match="whole number"):
        DiscoverConfig(top=2.5)


def test_a_repeated_caption_is_found_whatever_its_scores():
    image, text, captions, scores, ids = _world()
    scores = scores.copy()
    scores[:30] = -1.0  # the motif now scores lowest: the top samples miss it
    cfg = DiscoverConfig(top=60)
    table = discover_clusters(image, scores, captions, ids, text=text, config=cfg)
    first = table.iloc[0]
    assert first["by"] == "caption" and first["size"] == 30 and first["kind"] == "backdoor"
    assert first["mean_score"] == -1.0
    off = discover_clusters(image, scores, captions, ids, text=text,
                            config=DiscoverConfig(top=60, repeated_captions=False))
    assert not any("birthday" in name for name in off["name"])
    # groups need near-identical images: a caption over scattered images is no group; the 20 exact pairs are
    groups = repeated_captions(image, captions, min_size=2, threshold=0.9)
    assert [len(g) for g, _ in groups] == [30] + [2] * 20
    # size index: log sizes [log 30, log 2 x 20] -> median log 2, MAD 0 -> the motif is infinitely far out
    assert groups[0][1] == np.inf and all(index == 0.0 for _, index in groups[1:])
    assert len(repeated_captions(image, captions, min_size=2, threshold=-1.0)) == 1 + 275 + 20
    assert len(repeated_captions(image, captions, min_size=5, threshold=0.9)) == 1
