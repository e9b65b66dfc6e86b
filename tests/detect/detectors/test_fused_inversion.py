"""``fused`` stays right when ``caption_disagreement`` is inverted: a dense poisoned cluster
whose captions are a few zero-shot templates of the target class (high-rate BadNets).

The poisoned images are each other's image-neighbours and carry the same few captions, so
their caption disagreement is the LOWEST of the set (one-sided AUROC ~0); the fused score folds
that component two-sided (``fold_two_sided``). Seen when written (k = 16, global reference):

================================================  =====
score                                             AUROC
================================================  =====
caption_disagreement (one-sided)                  0.000
fold_two_sided(caption_disagreement)              1.000
fused rank, caption_disagreement one-sided        0.877
fused rank, caption_disagreement two-sided        0.997
fused fisher (default), one-sided                 0.988
fused fisher (default), two-sided                 0.999
================================================  =====
"""
import numpy as np
import pytest

from clipguard.detect.detectors.fused import fold_two_sided
from clipguard.detect.metrics import detection_metrics
from detect_helpers import engine_scores

COMPONENTS = ["dao", "density_anomaly", "clipscore", "caption_dup", "caption_disagreement"]


@pytest.fixture(scope="module")
def templated_dense_poison():
    """3,000 pairs in 6 classes (32-D), 150 (5%) poisoned: images in one tight cluster, captions
    three templates of the target class "star" (with their caption embeddings)."""
    rng = np.random.default_rng(7)
    n, n_poison, d, n_cls = 3000, 150, 32, 6
    c = rng.normal(size=(n_cls + 1, d))  # class directions, shared by images and captions
    tmpl = 0.3 * rng.normal(size=(3, d))  # what a template adds to a caption embedding
    lab = rng.integers(0, n_cls, n)
    j = rng.integers(0, 3, n)
    x = c[lab] + 0.7 * rng.normal(size=(n, d))
    t = c[lab] + tmpl[j] + 0.6 * rng.normal(size=(n, d))  # clean captions vary in wording
    caps = np.array([f"caption {i} of class {lab[i]}" for i in range(n)], dtype=object)
    y = np.zeros(n, bool)
    y[rng.choice(n, n_poison, replace=False)] = True
    star = c[n_cls]  # the target class
    # the trigger sends the images to one tight spot, partly towards the target (learned backdoor)
    x[y] = 0.5 * star + rng.normal(size=d) + 0.05 * rng.normal(size=(n_poison, d))
    t[y] = star + tmpl[j[y]] + 0.01 * rng.normal(size=(n_poison, d))
    caps[y] = np.array(["a photo of a star.", "a picture of a star.", "a star."], dtype=object)[j[y]]
    return x.astype(np.float32), t.astype(np.float32), caps, y


def test_fused_is_robust_to_the_inverted_caption_disagreement(templated_dense_poison):
    x, t, caps, y = templated_dense_poison
    s = engine_scores(x, COMPONENTS + ["fused"], k=16, text=t, captions=caps)
    a = {name: detection_metrics(y, v)["auroc"] for name, v in s.items()}
    for method in ("rank", "fisher"):
        for label, prm in (("one_sided", {"two_sided": ()}), ("two_sided", {})):
            v = engine_scores(x, ["fused"], k=16, text=t, captions=caps,
                          detector_params={"fused": {"method": method, **prm}})["fused"]
            a[f"{method}_{label}"] = detection_metrics(y, v)["auroc"]
    a["cd_two_sided"] = detection_metrics(y, fold_two_sided(s["caption_disagreement"]))["auroc"]
    print(a)  # seen: dao 0.49, density_anomaly 1.0, clipscore 0.991, caption_dup 1.0
    assert a["caption_disagreement"] < 0.01  # the one-sided signal is inverted here ...
    assert a["cd_two_sided"] > 0.99  # ... and the folded one is not
    # the inverted component drags an AND-like mean rank down (seen 0.877) ...
    assert 0.85 < a["rank_one_sided"] < 0.9 and a["rank_two_sided"] > 0.99  # seen 0.997
    # ... and even the OR-like Fisher combination (the default) loses with it (seen 0.988 vs 0.999)
    assert a["fisher_one_sided"] < a["fisher_two_sided"] and a["fisher_two_sided"] > 0.99
    assert a["fused"] == a["fisher_two_sided"]  # the default
