"""Image views: dtype and range contract, seeding through torch's global generator, PAR's light view."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from clipguard.data.augment import autoaugment_view, light_view
from clipguard.errors import ConfigError


def _image(h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (3, h, w), dtype=np.uint8))


def _seeded(view, image: torch.Tensor, seed: int, calls: int = 1) -> list[torch.Tensor]:
    """``calls`` views of ``image`` drawn after seeding torch's global generator with ``seed`` (restored after)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return [view(image) for _ in range(calls)]


@pytest.mark.parametrize("shape", [(32, 32), (24, 40)])
def test_autoaugment_view_uint8_in_float_unit_range_out(shape):
    x = _image(*shape)
    before = x.clone()
    for seed in range(5):
        (y,) = _seeded(autoaugment_view(), x, seed)
        assert y.dtype == torch.float32 and y.shape == x.shape
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert torch.equal(x, before)  # the input is not modified


def test_autoaugment_view_same_seed_same_view_and_redrawn_per_call():
    x, view = _image(), autoaugment_view()
    a, b = _seeded(view, x, 7)[0], _seeded(view, x, 7)[0]
    assert torch.equal(a, b)
    views = [_seeded(view, x, s)[0] for s in range(12)]
    assert any(not torch.equal(views[0], v) for v in views[1:])
    # successive calls continue the generator's stream: the view seeds nothing itself
    many = _seeded(view, x, 3, calls=12)
    assert any(not torch.equal(many[0], v) for v in many[1:])


def test_light_view_without_noise_or_erasing_is_image_over_255():
    x = _image()
    for seed in range(3):
        (y,) = _seeded(light_view(p_noise=0, p_erase=0), x, seed)
        assert y.dtype == torch.float32
        assert torch.equal(y, x.to(torch.float32) / 255)


def test_light_view_noise_changes_pixels_and_stays_in_range():
    x = _image()
    view = light_view(noise_sigma=0.2, p_noise=1, p_erase=0)
    y1, y2 = _seeded(view, x, 0, calls=2)
    base = x.to(torch.float32) / 255
    assert (y1 != base).float().mean() > 0.5
    assert float(y1.min()) >= 0 and float(y1.max()) <= 1
    assert not torch.equal(y1, y2)  # fresh noise per call
    assert torch.equal(y1, _seeded(view, x, 0)[0])  # same seed, same view


def test_light_view_erasing_sets_a_rectangle_to_zero():
    x = torch.full((3, 32, 32), 200, dtype=torch.uint8)
    (y,) = _seeded(light_view(p_noise=0, p_erase=1), x, 0)
    erased = (y == 0).all(dim=0)
    assert erased.any() and not erased.all()
    rows, cols = torch.nonzero(erased, as_tuple=True)
    box = erased[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert box.all()  # one rectangle
    assert torch.equal(y[:, ~erased], x[:, ~erased].to(torch.float32) / 255)


def test_views_are_picklable_and_keep_their_draws():
    x = _image()
    for view in (autoaugment_view(), light_view()):
        clone = pickle.loads(pickle.dumps(view))
        assert torch.equal(_seeded(view, x, 5)[0], _seeded(clone, x, 5)[0])
        assert repr(clone) == repr(view)


@pytest.mark.parametrize("kwargs", [{"noise_sigma": -0.1}, {"p_noise": 1.5}, {"p_erase": -1}, {"p_noise": "0.5"},
                                    {"noise_sigma": float("nan")}])
def test_light_view_rejects_bad_arguments(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        light_view(**kwargs)


@pytest.mark.parametrize("bad", [torch.zeros(3, 8, 8), torch.zeros(1, 8, 8, dtype=torch.uint8),
                                 torch.zeros(2, 3, 8, 8, dtype=torch.uint8), np.zeros((3, 8, 8), np.uint8)])
def test_views_refuse_anything_but_a_uint8_chw_tensor(bad):
    for view in (autoaugment_view(), light_view()):
        with pytest.raises(ConfigError, match="uint8 \\(3, H, W\\)"):
            view(bad)
