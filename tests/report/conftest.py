"""A small scanned dataset with real images, ground truth and an untrusted caption, for the report tests."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

PAYLOAD = "<script>document.documentElement.setAttribute('data-pwned', '1')</script> a photo of a star"


@pytest.fixture(scope="session")
def scanned(tmp_path_factory):
    """``(scan_dir, emb_dir)``: 400 pairs with images; 20 poisoned (a tight cluster, one caption carrying a
    ``<script>``); scanned with the default detectors."""
    from clipguard.detect import run_scan
    from clipguard.io.writer import write_embedding_shard

    root = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    n, d = 400, 16
    centres = rng.normal(size=(8, d))
    lab = rng.integers(0, 8, n)
    x = (centres[lab] + 0.5 * rng.normal(size=(n, d))).astype(np.float32)
    x[:20] = (4.0 + 0.05 * rng.normal(size=(20, d))).astype(np.float32)
    t = (centres[lab] @ rng.normal(size=(d, d)) + 0.3 * rng.normal(size=(n, d))).astype(np.float32)
    captions = [f"a photo of thing {c}" for c in lab]
    captions[:20] = ["a photo of a star"] * 20
    captions[0] = PAYLOAD
    (root / "img").mkdir()
    paths = []
    for i in range(n):
        colour = (255, 0, 0) if i < 20 else tuple(int(v) for v in rng.integers(0, 255, 3))
        Image.new("RGB", (32, 32), colour).save(root / "img" / f"{i}.png")
        paths.append(str(root / "img" / f"{i}.png"))
    meta = pd.DataFrame({"id": [f"s{i}" for i in range(n)], "image": paths, "caption": captions,
                         "poisoned": np.arange(n) < 20})
    write_embedding_shard(root / "emb", 0, x, meta, t)
    run_scan(root / "emb", root / "scan", k=8)
    return root / "scan", root / "emb"
