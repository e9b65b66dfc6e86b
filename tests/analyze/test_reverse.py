"""Trigger reverse-engineering (analyze/reverse.py) on a model whose backdoor is known by construction."""
import numpy as np
import pytest
import torch

from clipguard.analyze.reverse import ReverseConfig, reverse_trigger
from clipguard.errors import ConfigError


class PlantedPatchModel(torch.nn.Module):
    """encode_image: a bright 8 x 8 bottom-right corner sends the image to class 1, else class 0."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(2.0))

    def encode_image(self, x):  # x: CLIP-normalised (N, 3, 32, 32); the angle grows with the corner's brightness
        corner = x[:, :, 24:, 24:].mean((1, 2, 3))
        angle = torch.sigmoid(self.scale * (corner - 0.5)) * torch.pi / 2
        return torch.stack([torch.cos(angle), torch.sin(angle)], 1)


CLASSES = torch.eye(2)


def _images(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.3 * torch.rand(n, 3, 32, 32, generator=g)  # dark images: class 0


def test_the_search_finds_the_planted_corner_and_lowers_its_loss():
    model = PlantedPatchModel()
    imgs = _images()
    res = reverse_trigger(model, imgs, CLASSES, 1, config=ReverseConfig(steps=250, seed=0), progress=False)
    first, last = res.history[0], res.history[-1]
    assert first["success"] < 0.5 and res.success >= 0.9
    assert last["ce"] < first["ce"]
    inside = res.mask[24:, 24:].sum() / res.mask.sum()
    assert inside > 0.7, inside  # the mask sits on the planted corner
    assert res.mask_l1 < 64 / 1024 * 1.5  # about the corner's size, not the whole image
    stamped = res.apply(imgs)
    assert stamped.shape == imgs.shape and float(stamped.min()) >= 0 and float(stamped.max()) <= 1
    assert model.scale.requires_grad  # the model's own settings are restored


def test_the_same_seed_gives_the_same_trigger():
    a = reverse_trigger(PlantedPatchModel(), _images(), CLASSES, 1, config=ReverseConfig(steps=20), progress=False)
    b = reverse_trigger(PlantedPatchModel(), _images(), CLASSES, 1, config=ReverseConfig(steps=20), progress=False)
    assert np.array_equal(a.mask, b.mask) and np.array_equal(a.pattern, b.pattern)


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"in \[0, 1\]"):
        reverse_trigger(PlantedPatchModel(), _images() * 5, CLASSES, 1, progress=False)
    with pytest.raises(ConfigError, match="not one of the 2 classes"):
        reverse_trigger(PlantedPatchModel(), _images(), CLASSES, 2, progress=False)
    with pytest.raises(ConfigError, match="needs"):
        reverse_trigger(PlantedPatchModel(), torch.zeros(0, 3, 32, 32), CLASSES, 1, progress=False)
    with pytest.raises(ConfigError, match="cost_step"):
        ReverseConfig(cost_step=1.0)


def test_a_mask_budget_holds_the_mask_and_keeps_the_most_successful_trigger():
    model = PlantedPatchModel()
    free = reverse_trigger(model, _images(), CLASSES, 1, config=ReverseConfig(steps=250, seed=0), progress=False)
    tiny = reverse_trigger(model, _images(), CLASSES, 1, progress=False,
                           config=ReverseConfig(steps=250, seed=0, max_mask=free.mask_l1 / 8))
    assert tiny.mask_l1 <= 1.05 * free.mask_l1 / 8  # the budget is kept
    assert tiny.success < free.success  # an eighth of the corner does not send the images there
    roomy = reverse_trigger(model, _images(), CLASSES, 1, progress=False,
                            config=ReverseConfig(steps=250, seed=0, max_mask=2 * free.mask_l1))
    assert roomy.success >= 0.9 and roomy.mask_l1 <= 1.05 * 2 * free.mask_l1
    with pytest.raises(ConfigError, match="max_mask"):
        ReverseConfig(max_mask=0.0)
