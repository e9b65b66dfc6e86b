"""The scoring engine: component parameters of fused, the detector factory of ScoreInputs."""
import numpy as np
import pytest

from clipguard.detect import DETECTORS, score_embeddings
from clipguard.detect.detectors import ScoreInputs
from clipguard.detect.detectors.fused import fuse_scores
from clipguard.detect.engine import select_detectors
from clipguard.detect.reference import build_graph, plan_reference
from clipguard.errors import ConfigError


def _pairs(n=200, d=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    t = x + 0.5 * rng.normal(size=(n, d))
    t[:20] = t[0] + 0.05 * rng.normal(size=(20, d))  # near-duplicate captions
    return x, t


def test_component_params_are_honoured_when_the_component_runs_only_inside_fused():
    x, t = _pairs()
    loose = {"source": "text", "threshold": 0.5}
    default = score_embeddings(x, ["fused"], k=5, text=t)[0]["fused"]
    scan_level = score_embeddings(x, ["fused"], k=5, text=t, detector_params={"caption_dup": loose})[0]
    assert not np.allclose(scan_level["fused"], default)  # caption_dup was not asked for on its own
    # the same numbers as running the component on its own with those parameters
    both = score_embeddings(x, ["dao", "density_anomaly", "clipscore", "caption_dup", "caption_disagreement",
                                "fused"], k=5, text=t, detector_params={"caption_dup": loose})[0]
    np.testing.assert_array_equal(both["fused"], scan_level["fused"])
    # ... and as giving them to fused as "<component>__<param>"
    nested = score_embeddings(x, ["fused"], k=5, text=t,
                              detector_params={"fused": {"caption_dup__source": "text",
                                                         "caption_dup__threshold": 0.5}})[0]
    np.testing.assert_array_equal(nested["fused"], scan_level["fused"])
    # the estimator API honours them too
    det = DETECTORS.get("fused")(k=5, component_params={"caption_dup": loose})
    np.testing.assert_allclose(det.fit_score(x, text=t), scan_level["fused"])


def test_dao_params_inside_fused_are_not_ignored():
    x, t = _pairs()
    # in a scan every kNN detector reads the scan's graph: a k of its own is refused, not dropped
    for params in ({"dao": {"k": 3}}, {"fused": {"dao__k": 3}}):
        with pytest.raises(ConfigError, match=r"detector 'dao' was given k=3.*scan's neighbour graph \(k=5\)"):
            score_embeddings(x, ["fused"], k=5, detector_params=params)
    # the estimator API fits every component itself, so there dao's k changes dao, and fused
    x_img = x[:, :4]
    default = DETECTORS.get("fused")(k=5).fit_score(x_img)
    small = DETECTORS.get("fused")(k=5, component_params={"dao": {"k": 3}}).fit_score(x_img)
    want = fuse_scores({"dao": DETECTORS.get("dao")(k=3).fit_score(x_img),
                        "density_anomaly": DETECTORS.get("density_anomaly")(k=5).fit_score(x_img)})
    np.testing.assert_allclose(small, want)
    assert not np.allclose(small, default)


def test_score_inputs_build_components_with_their_factory():
    x, _ = _pairs()
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    graph = build_graph(xn.astype(np.float32), 5, plan_reference(len(x), "global", k=5))
    made = []

    def make(name, params):
        made.append((name, dict(params)))
        return DETECTORS.get(name)(k=5, **params)

    inputs = ScoreInputs(xn.astype(np.float32), graph, 5, make=make)
    a = inputs.score("kdist")
    assert inputs.score("kdist") is a and made == [("kdist", {})]  # computed once
    inputs.score("kdist", {"backend": "faiss"})
    assert made[-1] == ("kdist", {"backend": "faiss"})
    with pytest.raises(ConfigError, match="not part of this scan"):
        ScoreInputs(xn, graph, 5).score("kdist")


def test_select_detectors():
    assert select_detectors(None, {"image"})[0] is None
    requested, names, skipped = select_detectors(None, {"image"})
    assert "clipscore" in skipped and "clipscore" not in names and names[-1] == "fused"
    assert select_detectors(["dao", "dao", "kdist"], {"image"}) == (["dao", "kdist"], ["dao", "kdist"], {})
    with pytest.raises(ConfigError, match="no detectors requested"):
        select_detectors([], {"image"})
    with pytest.raises(ConfigError, match="detector 'clipscore' needs caption embeddings"):
        select_detectors(["clipscore"], {"image"})
