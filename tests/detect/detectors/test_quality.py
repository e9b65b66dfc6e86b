"""Quality floors on seeded synthetic poison where the published per-batch / global density
reference breaks: a LARGE, DENSE poisoned cluster (5% of 4,000 points).

Seen when written (k = 16, AUROC):

=====================  =====  =====  ===============  ===========  =====
reference              kdist  dao    density_anomaly  caption_dup  fused
=====================  =====  =====  ===============  ===========  =====
global                 0.00   0.35   1.00             0.99         0.95
batch (B = 512)        0.07   0.42   1.00             0.99         0.96
reference (M = 256)    1.00   1.00   1.00             0.99         1.00
multi_reference 4x256  1.00   1.00   1.00             0.99         1.00
=====================  =====  =====  ===============  ===========  =====
"""
import numpy as np
import pytest

from clipguard.detect.metrics import detection_metrics
from detect_helpers import engine_scores

NAMES = ["kdist", "dao", "density_anomaly", "caption_dup", "fused"]


@pytest.fixture(scope="module")
def dense_poison():
    """4,000 points in 8 Gaussian clusters (32-D); 200 (5%) replaced by a tight cluster in a
    random direction whose captions are three near-identical templates."""
    rng = np.random.default_rng(0)
    n, n_poison, d = 4000, 200, 32
    centers = rng.normal(size=(8, d))
    lab = rng.integers(0, 8, n)
    x = centers[lab] + 0.6 * rng.normal(size=(n, d))
    y = np.zeros(n, bool)
    y[rng.choice(n, n_poison, replace=False)] = True
    x[y] = rng.normal(size=d) + 0.05 * rng.normal(size=(n_poison, d))
    caps = np.array([f"a photo of thing {i} in group {lab[i]}" for i in range(n)], dtype=object)
    caps[y] = [["a photo of a star.", "A photo of a star", "a picture of a star."][i % 3]
               for i in range(n_poison)]
    caps[:100] = "a photo"  # clean captions can be duplicated too
    return x.astype(np.float32), y, caps


def _auroc(y, scores):
    return {name: detection_metrics(y, s)["auroc"] for name, s in scores.items()}


def test_global_reference_breaks_on_a_dense_poison_cluster(dense_poison):
    x, y, caps = dense_poison
    a = _auroc(y, engine_scores(x, NAMES, k=16, captions=caps))
    print("global:", a)
    assert a["kdist"] < 0.1 and a["dao"] < 0.6  # the poisoned points are each other's neighbours
    assert a["density_anomaly"] >= 0.95  # ... and abnormally dense, which the two-sided score sees
    assert a["caption_dup"] >= 0.95
    assert a["fused"] >= 0.9


@pytest.mark.parametrize("kwargs", [
    dict(reference="reference", reference_size=256),
    dict(reference="multi_reference", reference_size=256, n_references=4),
])
def test_small_random_references_recover_the_sparse_view(dense_poison, kwargs):
    """With M = 256 a reference holds ~13 poisoned points (< k), so the poison is sparse again."""
    x, y, caps = dense_poison
    a = _auroc(y, engine_scores(x, NAMES, k=16, captions=caps, **kwargs))
    print(kwargs, a)
    for name in NAMES:
        assert a[name] >= 0.95, (name, a)
    # without captions the fused image score alone holds too
    img = engine_scores(x, ["fused"], k=16, **kwargs)["fused"]
    assert detection_metrics(y, img)["auroc"] >= 0.95
