"""Pair/text detectors (clipscore, caption_dup, caption_disagreement), density_anomaly,
Isolation Forest and the fused score: exact values on tiny hand-made data."""
from math import log

import numpy as np
import pytest

from clipguard.detect import DETECTORS
from clipguard.detect.detectors.caption_disagreement import caption_disagreement
from clipguard.detect.detectors.caption_dup import caption_dup_share, caption_keys, text_dup_share
from clipguard.detect.detectors.clipscore import clipscore
from clipguard.detect.detectors.fused import (
    fold_two_sided,
    fuse_scores,
    percentile_rank,
    robust_z,
    upper_tail_log_p,
)
from clipguard.errors import ConfigError
from detect_helpers import engine_scores

# The six 5-D points of test_density.py (exact in float32); k = 2 neighbours, self excluded:
# P0: P2, P5   P1: P0, P2   P2: P0, P5   P3: P4, P2   P4: P5, P0   P5: P0, P2
HAND = np.array([
    [-1, -1, -1, -2, -3], [-1, -2, +1, -3, -1], [-1, -2, -1, -1, -3],
    [-1, +2, -1, +3, +1], [+1, -1, -3, -2, -1], [+1, -1, -1, -2, -3],
], dtype=np.float64) / 4
KDIST = np.array([2, 6, 3, 24, 6, 3]) / 16
# captions: P3 and P5 say "ring", the others "star" (2-D one-hot caption embeddings)
TEXT = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [1, 0], [0, 1]], dtype=np.float64)
# 1 - mean cos over the two image-neighbours:
#   P0: P2 (1), P5 (0) -> 0.5   P1: P0, P2 -> 0   P2: P0 (1), P5 (0) -> 0.5
#   P3: P4 (0), P2 (0) -> 1     P4: P5 (0), P0 (1) -> 0.5   P5: P0 (0), P2 (0) -> 1
DISAGREE = np.array([0.5, 0, 0.5, 1, 0.5, 1])


# --- clipscore -----------------------------------------------------------------------------

def test_clipscore_hand_values():
    image = np.array([[1, 0], [0, 1], [3, 4]], dtype=np.float64)
    text = np.array([[1, 0], [1, 0], [0, 2]], dtype=np.float64)
    want = [-1.0, 0.0, -0.8]  # -cos: 1, 0, <(0.6, 0.8), (0, 1)> = 0.8
    np.testing.assert_allclose(clipscore(image, text), want, atol=1e-7)
    det = DETECTORS.get("clipscore")()
    np.testing.assert_allclose(det.fit_score(image, text=text), want, atol=1e-7)
    np.testing.assert_allclose(engine_scores(image, ["clipscore"], k=1, text=text)["clipscore"], want,
                               atol=1e-7)


def test_clipscore_errors():
    det = DETECTORS.get("clipscore")()
    with pytest.raises(ConfigError, match="needs caption embeddings"):
        det.fit_score(np.eye(3))
    with pytest.raises(ConfigError, match="same CLIP model"):
        clipscore(np.eye(3), np.eye(3)[:, :2] + 1)
    with pytest.raises(ConfigError, match=r"needs caption embeddings \(text_emb/"):
        engine_scores(np.eye(3), ["clipscore"], k=1)


# --- caption_dup -----------------------------------------------------------------------------

CAPTIONS = ["A star.", "a star", "a  STAR!", "a ring", "a ring", "moon", None, "?!"]


def test_caption_keys_normalise():
    assert caption_keys(CAPTIONS).tolist() == [
        "a star", "a star", "a star", "a ring", "a ring", "moon", None, None]


def test_caption_dup_hand_values():
    # 8 samples; each is compared with the 7 others. None / empty match nothing.
    want = np.array([2, 2, 2, 1, 1, 0, 0, 0]) / 7
    det = DETECTORS.get("caption_dup")()
    np.testing.assert_allclose(det.fit_score(None, captions=CAPTIONS), want, rtol=1e-12)
    x = np.random.default_rng(0).normal(size=(8, 4))
    for ref in ("global", "batch", "multi_reference"):  # strings: exact over the whole set
        got = engine_scores(x, ["caption_dup"], k=2, reference=ref, batch_size=4, reference_size=3,
                        captions=CAPTIONS)
        np.testing.assert_allclose(got["caption_dup"], want, rtol=1e-12)
    # new queries against a fitted reference: no self-exclusion
    det = DETECTORS.get("caption_dup")().fit(None, captions=["a star", "a ring"])
    np.testing.assert_allclose(det.score_samples(captions=["A STAR", "x"]), [0.5, 0.0])
    np.testing.assert_allclose(caption_dup_share(caption_keys(["a"]), caption_keys(["a", "b"]),
                                                 np.array([0])), [0.0])


def test_caption_dup_from_embeddings():
    text = np.array([[1, 0], [1, 0.01], [0, 1], [-1, 0]], dtype=np.float64)
    # cos(t0, t1) = 0.99995 >= 0.98; no other pair is close
    det = DETECTORS.get("caption_dup")()
    np.testing.assert_allclose(det.fit_score(None, text=text), [1 / 3, 1 / 3, 0, 0])
    assert det.source_ == "text"
    strict = DETECTORS.get("caption_dup")(threshold=0.99999)
    np.testing.assert_allclose(strict.fit_score(None, text=text), [0, 0, 0, 0])
    # exact duplicates count; self never does (blocked tiles, self removed by index)
    t = np.repeat(np.eye(3, dtype=np.float32), [4, 1, 2], axis=0)
    got = text_dup_share(t, t, 0.99, np.arange(7), block_size=2)
    np.testing.assert_allclose(got, np.array([3, 3, 3, 3, 0, 1, 1]) / 6)
    s = engine_scores(np.random.default_rng(1).normal(size=(7, 3)), ["caption_dup"], k=2, text=t)
    np.testing.assert_allclose(s["caption_dup"], got)


def test_caption_dup_needs_some_caption_input():
    with pytest.raises(ConfigError, match="caption strings .* or caption embeddings"):
        engine_scores(np.eye(4), ["caption_dup"], k=1)
    with pytest.raises(ConfigError, match="source"):
        DETECTORS.get("caption_dup")(source="words").fit_score(None, captions=["a"])


# --- caption_disagreement ------------------------------------------------------------------------

def test_caption_disagreement_hand_values():
    det = DETECTORS.get("caption_disagreement")(k=2)
    np.testing.assert_allclose(det.fit_score(HAND, text=TEXT), DISAGREE, atol=1e-12)
    got = engine_scores(HAND, ["caption_disagreement"], k=2, text=TEXT)["caption_disagreement"]
    np.testing.assert_allclose(got, DISAGREE, atol=1e-12)
    # a query image equal to P3 with a "star" caption: its neighbours are P3 itself (ring),
    # then P4 (star) -> 1 - (0 + 1) / 2
    q = det.score_samples(HAND[[3]], text=np.array([[1.0, 0.0]]))
    np.testing.assert_allclose(q, [0.5])
    np.testing.assert_allclose(caption_disagreement(TEXT, np.array([[1, 2]]) * np.ones((6, 1), int)),
                               [0, 0, 0, 1, 0, 1])


def test_caption_disagreement_errors():
    det = DETECTORS.get("caption_disagreement")(k=2)
    with pytest.raises(ConfigError, match="needs caption embeddings"):
        det.fit(HAND)
    with pytest.raises(ConfigError, match="row-aligned"):
        det.fit(HAND, text=TEXT[:5])


# --- density_anomaly -----------------------------------------------------------------------------

def test_density_anomaly_hand_values():
    # median of ln kdist over the 6 points = (ln 3 + ln 6)/2 - ln 16; the absolute deviations
    # are ln(sqrt(18)/2), four times ln(sqrt 2), ln(24/sqrt(18)), so the MAD is ln(sqrt 2)
    med = (log(3) + log(6)) / 2 - log(16)
    want = np.abs(np.log(KDIST) - med) / (1.4826 * 0.5 * log(2))
    got = DETECTORS.get("density_anomaly")(k=2).fit_score(HAND)
    np.testing.assert_allclose(got, want, rtol=1e-9)
    assert int(np.argmax(got)) == 3


def test_density_anomaly_flags_a_dense_cluster():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8))
    x[:30] = rng.normal(size=8) + 1e-3 * rng.normal(size=(30, 8))  # 10%, nearly identical
    s = engine_scores(x, ["kdist", "density_anomaly"], k=5)
    assert set(np.argsort(-s["density_anomaly"])[:30]) == set(range(30))
    assert set(np.argsort(s["kdist"])[:30]) == set(range(30))  # kdist ranks them LEAST suspicious


# --- Isolation Forest ---------------------------------------------------------------------------

def test_iforest_equals_sklearn_negated():
    from sklearn.ensemble import IsolationForest

    x = np.random.default_rng(0).normal(size=(300, 8))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    ref = -IsolationForest(random_state=3).fit(xn.astype(np.float32)).score_samples(xn.astype(np.float32))
    det = DETECTORS.get("iforest")(seed=3)
    np.testing.assert_allclose(det.fit_score(x), ref, rtol=1e-12)
    np.testing.assert_allclose(engine_scores(x, ["iforest"], seed=3)["iforest"], ref, rtol=1e-12)
    np.testing.assert_array_equal(det.score_samples(x[:5]), ref[:5])
    assert not np.array_equal(DETECTORS.get("iforest")(seed=4).fit_score(x), ref)
    with pytest.raises(ConfigError, match="not fitted"):
        DETECTORS.get("iforest")().score_samples(x)


# --- fused --------------------------------------------------------------------------------

def test_fuse_scores_hand_values():
    np.testing.assert_allclose(percentile_rank(np.array([1, 1, 2, 3.0])), [1.5 / 4, 1.5 / 4, 3 / 4, 1])
    np.testing.assert_allclose(percentile_rank(np.array([np.nan, 5.0])), [0.5, 1.0])
    a, b = np.array([1, 2, 3, 4.0]), np.array([4, 3, 2, 1.0])
    np.testing.assert_allclose(fuse_scores({"a": a, "b": b}, "rank"), [0.625] * 4)
    np.testing.assert_allclose(robust_z(np.array([1, 2, 3, 4, 100.0])),
                               np.array([-2, -1, 0, 1, 97]) / 1.4826)
    np.testing.assert_allclose(robust_z(np.array([1, 1, 1, 1, 3.0])), (np.array([1, 1, 1, 1, 3.0]) - 1) / 0.8)
    np.testing.assert_array_equal(robust_z(np.ones(4)), np.zeros(4))
    np.testing.assert_allclose(fuse_scores({"a": a, "b": 2 * a}, "zsum"), robust_z(a))
    # fisher: p = (n - r + 1) / n = 1, 3/4, 1/2, 1/4 for a; reversed for b
    p = np.array([1, 0.75, 0.5, 0.25])
    np.testing.assert_allclose(fuse_scores({"a": a, "b": b}, "fisher"),
                               -(np.log(p) + np.log(p[::-1])) / 2)
    np.testing.assert_allclose(fuse_scores({"a": a, "b": b}), fuse_scores({"a": a, "b": b}, "fisher"))  # default
    with pytest.raises(ConfigError, match="fuse method"):
        fuse_scores({"a": a}, "max")


def test_fused_is_the_fisher_combination_of_its_available_components():
    x = np.random.default_rng(0).normal(size=(200, 8))
    text = np.random.default_rng(1).normal(size=(200, 8))
    caps = [f"c{i % 7}" for i in range(200)]
    s = engine_scores(x, ["dao", "density_anomaly", "clipscore", "caption_dup",
                      "caption_disagreement", "fused"], k=5, text=text, captions=caps)
    parts = ["dao", "density_anomaly", "clipscore", "caption_dup", "caption_disagreement"]
    # caption_disagreement enters two-sided (folded), the others as they are
    folded = {p: fold_two_sided(s[p]) if p == "caption_disagreement" else s[p] for p in parts}
    np.testing.assert_allclose(s["fused"], np.mean([upper_tail_log_p(v) for v in folded.values()], axis=0))
    one_sided = engine_scores(x, ["fused"], k=5, text=text, captions=caps,
                          detector_params={"fused": {"two_sided": (), "method": "rank"}})["fused"]
    np.testing.assert_allclose(one_sided, np.mean([percentile_rank(s[p]) for p in parts], axis=0))
    # images only: dao and density_anomaly
    img = engine_scores(x, ["fused"], k=5)["fused"]
    np.testing.assert_allclose(img, (upper_tail_log_p(s["dao"]) + upper_tail_log_p(s["density_anomaly"])) / 2)
    # the estimator API gives the same numbers
    det = DETECTORS.get("fused")(k=5)
    np.testing.assert_allclose(det.fit_score(x, text=text, captions=caps), s["fused"])
    assert det.components_ == parts and det.two_sided_ == ["caption_disagreement"]
    one = DETECTORS.get("fused")(k=5, image="kdist", signals=(), method="zsum").fit(x)
    np.testing.assert_allclose(one.score_samples(x[:50]),
                               robust_z(DETECTORS.get("kdist")(k=5).fit(x).score_samples(x[:50])))
    with pytest.raises(ConfigError, match="image kNN detectors"):
        DETECTORS.get("fused")(image="clipscore").fit_score(x, text=text)
