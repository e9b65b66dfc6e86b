"""On a GPU the decoding workers send uint8 images and the GPU normalises: the same tensor as open_clip's."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from clipguard.embed.extract import shard_bounds, split_preprocess
from clipguard.data.manifest import Manifest
from clipguard.models import create_model


@pytest.mark.parametrize("arch", ["tiny-rn", "tiny-vit-p8"])
def test_split_preprocess_gives_the_same_tensor(arch):
    pre = create_model(arch).preprocess
    on_cpu, on_device = split_preprocess(pre)
    assert on_device is not None
    for seed, size in [(0, (70, 90)), (1, (33, 33)), (2, (200, 120))]:
        img = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))
        half = on_cpu(img)
        assert half.dtype == torch.uint8
        assert torch.equal(on_device(half.unsqueeze(0))[0], pre(img))


def test_split_preprocess_leaves_other_transforms_whole():
    def pre(img):
        return img

    assert split_preprocess(pre) == (pre, None)


def test_shard_bounds_follow_tars_or_shard_size():
    import pandas as pd

    df = pd.DataFrame({"id": list("abcdefg"), "image": ["x"] * 7, "caption": ["c"] * 7,
                       "source_shard": [0, 0, 0, 1, 1, 3, 3]})
    assert shard_bounds(Manifest(df, "."), 100) == [(0, 3), (3, 5), (5, 7)]
    assert shard_bounds(Manifest(df.drop(columns="source_shard"), "."), 3) == [(0, 3), (3, 6), (6, 7)]
