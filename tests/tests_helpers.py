"""Helpers shared by several test modules (importable because tests/ is on sys.path via conftest)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from clipguard.data import write_manifest


#: tests of what happens WITHOUT a GPU (a missing device is a clear error; bf16 refused on a CPU).
#: They run, and assert, on every machine without one -- CI included.
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")


def make_bad_manifest(root, n_good: int = 1):
    """A CSV manifest with ``n_good`` good rows, then a missing image, a corrupt PNG and an empty caption."""
    (root / "img").mkdir(exist_ok=True)
    rows = []
    rng = np.random.default_rng(0)
    for i in range(n_good):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "img" / f"good{i}.png")
        rows.append((f"good{i}" if n_good > 1 else "good", f"img/good{i}.png", "a red circle"))
    (root / "img" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "img" / "empty.png")
    rows += [("missing", "img/missing.png", "a blue square"), ("corrupt", "img/corrupt.png", "a star"),
             ("empty", "img/empty.png", "  ")]
    return write_manifest(pd.DataFrame(rows, columns=["id", "image", "caption"]), root / "manifest.csv")
