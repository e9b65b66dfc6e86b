"""Fixtures of the report tests: a small scanned dataset with real images, ground truth and an untrusted caption;
small real runs of defend, audit and heads with an untrusted target name; the checks every page must pass."""
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


#: A class name that is markup and invalid mathtext: the target of the model runs below. Class names and
#: targets are untrusted text (web captions); every page must escape it and every figure must draw it literally.
TARGET = "<script>document.documentElement.setAttribute('data-pwned', '1')</script> $\\nomacro$ star"


def _check_page(html: str) -> None:
    """The page is self-contained and inert: every image an inlined PNG that decodes, no script, no remote URL."""
    import base64
    import io
    import re

    srcs = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert srcs, "no image on the page"
    for src in srcs:
        assert src.startswith("data:image/png;base64,"), src[:60]
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            assert im.format == "PNG" and im.size[0] > 0
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "<script" not in html  # no script at all, the payload included


@pytest.fixture
def check_page():
    """``check_page(html)``: asserts the page is self-contained and inert (see :func:`_check_page`)."""
    return _check_page


@pytest.fixture(scope="session")
def model_runs(tmp_path_factory):
    """Small real runs on an untrained tiny ViT (a 160-pair world, the ``star`` class renamed ``TARGET``, BadNets
    towards it): ``{"world", "defend", "audit", "heads analyze", "heads repair", "heads filter"}`` folders and
    ``"target"``: ``TARGET``.

    defend and heads analyze run through the CLI (report written by default), audit and heads filter through
    the CLI with --no-report, heads repair through the library. About 10 s on 2 cores.
    """
    import json

    from clipguard.attacks import get_trigger, poison_dataset
    from clipguard.data import read_manifest
    from clipguard.data.synth import generate_world
    from clipguard.models import create_model, save_model
    from clipguard.pipeline.heads import heads_repair
    from tests_helpers import run_cli

    root = tmp_path_factory.mktemp("model_runs")
    w = root / "w"
    generate_world(w, n_train=160, n_test=48, seed=0, progress=False, workers=1)
    classes = json.loads((w / "classes.json").read_text())
    classes["classes"] = [TARGET if c == "star" else c for c in classes["classes"]]
    (w / "classes.json").write_text(json.dumps(classes))
    spec = poison_dataset(read_manifest(w / "train" / "manifest.parquet"), root / "p",
                          get_trigger("badnets", size=8, cell=2), target=TARGET, rate=0.1, seed=1,
                          progress=False).spec_path
    save_model(create_model("tiny-vit-p8", seed=0), root / "m")
    train, test, cls = w / "train" / "manifest.parquet", w / "test" / "manifest.parquet", w / "classes.json"
    runs = {"world": w, "target": TARGET, "defend": root / "d", "audit": root / "a", "heads analyze": root / "h",
            "heads repair": root / "hr", "heads filter": root / "hf"}
    for args in (["defend", "mmcl", root / "m", "--data", train, "--out", runs["defend"], "--test", test,
                  "--classes", cls, "--attack", spec, "--epochs", 2, "--batch-size", 64],
                 ["audit", root / "m", "--images", test, "--classes", cls, "--out", runs["audit"], "--n-images", 40,
                  "--steps", 4, "--no-report"],
                 ["heads", "analyze", root / "m", "--clean", train, "--out", runs["heads analyze"], "--test", test,
                  "--attack", spec, "--classes", cls, "--fpr", 0.05],
                 ["heads", "filter", root / "m", "--input", root / "p" / "manifest.parquet", "--profile",
                  runs["heads analyze"], "--out", runs["heads filter"], "--no-report"]):
        res = run_cli(*args, "--device", "cpu")
        assert res.returncode == 0, res.stderr
    heads_repair(root / "m", train, runs["heads repair"], classes=cls, test=test, attack_spec=spec, device="cpu",
                 progress=False)
    return runs
