"""A fixed small scan and the fingerprint of its score columns.

The stored fingerprint (``data/score_fingerprint.json``) was computed before the ``detect/`` package
was split into sub-packages; ``test_score_fingerprint.py`` recomputes it, so a refactoring that
changes any score or rank fails. Regenerate only for an intended change of the numbers::

    python tests/detect/score_fingerprint.py --write
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from clipguard.detect import Scan, ScanConfig

STORE = Path(__file__).parent / "data" / "score_fingerprint.json"
MODES = {
    "global": dict(reference="global"),
    "batch": dict(reference="batch", batch_size=200),
    "reference": dict(reference="reference", reference_size=300, index="flat"),
    "multi_reference": dict(reference="multi_reference", reference_size=256, n_references=3,
                            index="flat"),
    "ivf": dict(reference="reference", reference_size=500, index="ivf", nlist=8, nprobe=2),
}


def fixed_data(n: int = 800, d: int = 24, n_poison: int = 24, seed: int = 0):
    """Clustered image/caption embeddings with a tight poisoned cluster and templated captions."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, d))
    cls = rng.integers(0, 8, n)
    image = centres[cls] + 0.6 * rng.normal(size=(n, d))
    text = centres[cls] + 0.4 * rng.normal(size=(n, d))
    poisoned = np.zeros(n, dtype=bool)
    poisoned[rng.choice(n, n_poison, replace=False)] = True
    trigger = rng.normal(size=d)
    image[poisoned] = 0.3 * image[poisoned] + 2.0 * trigger + 0.1 * rng.normal(size=(n_poison, d))
    text[poisoned] = centres[0] + 0.2 * rng.normal(size=(n_poison, d))
    words = ["circle", "square", "star", "ring", "cross", "heart", "moon", "arrow"]
    templates = ["a photo of a {}", "a drawing of a {}", "a {} on a background", "the {}"]
    captions = [templates[rng.integers(0, 4)].format(words[c]) + f" {rng.integers(0, 50)}"
                for c in cls]
    for i in np.flatnonzero(poisoned):
        captions[i] = "a photo of a circle"
    return image.astype(np.float32), text.astype(np.float32), captions, poisoned


def fingerprint() -> dict[str, dict[str, str]]:
    """``{mode: {column: sha256}}`` of every ``*_score`` (as float32 bytes) and ``*_rank`` column."""
    image, text, captions, poisoned = fixed_data()
    out: dict[str, dict[str, str]] = {}
    for mode, options in MODES.items():
        scan = Scan(image, text, captions=captions, ground_truth=poisoned)
        scan.find_suspects(config=ScanConfig(k=8, seed=3, device="cpu", **options))
        table = scan.scores
        cols = {}
        for c in sorted(table.columns):
            if c.endswith("_score"):
                data = table[c].to_numpy(np.float64).astype(np.float32).tobytes()
            elif c.endswith("_rank"):
                data = table[c].to_numpy(np.int64).tobytes()
            else:
                continue
            cols[c] = hashlib.sha256(data).hexdigest()
        out[mode] = cols
    return out


if __name__ == "__main__":
    fp = fingerprint()
    if "--write" in sys.argv:
        STORE.parent.mkdir(parents=True, exist_ok=True)
        STORE.write_text(json.dumps(fp, indent=1, sort_keys=True) + "\n")
        print(f"wrote {STORE}")
    else:
        print(json.dumps(fp, indent=1, sort_keys=True))
