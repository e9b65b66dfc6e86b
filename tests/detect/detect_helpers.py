"""Helpers of the detect tests (importable as ``detect_helpers``: conftest puts tests/detect on the path)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from clipguard.detect import score_embeddings

DENSITY_NAMES = ("kdist", "lid", "slof", "dao")
ALL = ["kdist", "lid", "slof", "dao", "density_anomaly", "iforest", "clipscore", "caption_dup",
       "caption_disagreement", "spectral", "activation_cluster", "learning_speed", "perturbation", "fused"]
"""Every registered detector, in registration order."""

DEFAULT = [name for name in ALL if name not in ("spectral", "activation_cluster", "learning_speed", "perturbation")]
"""The detectors of a default scan without a per-row record (the concept detectors are opt-in;
learning_speed and perturbation run only with their record)."""


def engine_scores(x, detectors=DENSITY_NAMES, **options):
    """``{name: (N,) scores}`` of :func:`score_embeddings` (the tests' shorthand; default reference:
    auto, which is global at these sizes)."""
    return score_embeddings(x, detectors, **options)[0]


def image_folder(root, sizes=(150, 120, 0), d=16, n_poison=6, ground_truth=True, seed=0):
    """Clean Gaussian clusters plus a tight poisoned cluster, split into shards of ``sizes``."""
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    centers = rng.normal(size=(4, d))
    x = centers[rng.integers(0, 4, n)] + 0.6 * rng.normal(size=(n, d))
    poisoned = np.zeros(n, bool)
    poisoned[rng.choice(n, n_poison, replace=False)] = True
    x[poisoned] = rng.normal(size=d) + 0.05 * rng.normal(size=(n_poison, d))
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    start = 0
    for i, m in enumerate(sizes):
        np.save(root / "img_emb" / f"img_emb_{i}.npy", x[start:start + m].astype(np.float16))
        meta = {"id": [f"s{i}_{r}" for r in range(m)], "caption": ["c"] * m}
        if ground_truth:
            meta["poisoned"] = poisoned[start:start + m]
        pd.DataFrame(meta).to_parquet(root / "metadata" / f"metadata_{i}.parquet", index=False)
        start += m
    return poisoned


def pair_folder(root, sizes=(120, 100, 0), d=16, text=True, seed=0):
    """Clusters + 8 poisoned samples: a tight image cluster whose captions all say 'a star'
    and whose caption embeddings point away from the images (mismatched pairs)."""
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    centers = rng.normal(size=(4, d))
    lab = rng.integers(0, 4, n)
    x = centers[lab] + 0.6 * rng.normal(size=(n, d))
    t = x + 0.3 * rng.normal(size=(n, d))  # captions agree with their images
    poisoned = np.zeros(n, bool)
    poisoned[rng.choice(n, 8, replace=False)] = True
    x[poisoned] = rng.normal(size=d) + 0.05 * rng.normal(size=(8, d))
    t[poisoned] = rng.normal(size=d) + 0.05 * rng.normal(size=(8, d))
    caps = np.array([f"thing {i} of kind {lab[i]}" for i in range(n)], dtype=object)
    caps[poisoned] = "a star"
    for sub in ("img_emb", "text_emb", "metadata"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    start = 0
    for i, m in enumerate(sizes):
        np.save(root / "img_emb" / f"img_emb_{i}.npy", x[start:start + m].astype(np.float16))
        if text:
            np.save(root / "text_emb" / f"text_emb_{i}.npy", t[start:start + m].astype(np.float16))
        pd.DataFrame({"id": [f"s{i}_{r}" for r in range(m)], "caption": caps[start:start + m],
                      "poisoned": poisoned[start:start + m]}).to_parquet(
            root / "metadata" / f"metadata_{i}.parquet", index=False)
        start += m
    return poisoned
