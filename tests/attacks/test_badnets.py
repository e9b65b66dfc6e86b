import numpy as np
import pytest

from clipguard.attacks import ATTACKS, get_trigger, trigger_from_spec
from clipguard.errors import ConfigError


def image(seed=0, h=32, w=32):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def changed_box(a, b):
    rows, cols = np.nonzero((a != b).any(2))
    return rows.min(), rows.max(), cols.min(), cols.max()


def test_registered():
    assert "badnets" in ATTACKS.names()


@pytest.mark.parametrize("pattern", ["checker", "noise"])
def test_deterministic_per_seed_shape_and_dtype(pattern):
    t = get_trigger("badnets", pattern=pattern, size=8, cell=2)
    x = image()
    a, b, c = t.apply(x, seed=1), t.apply(x, seed=1), t.apply(x, seed=2)
    assert a.shape == x.shape and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)  # random location (and noise) depend on the seed
    assert not np.array_equal(a, x)


def test_only_the_patch_changes_and_checker_values():
    t = get_trigger("badnets", size=8, cell=2, location="bottom_right")
    x = np.full((32, 32, 3), 128, np.uint8)
    y = t.apply(x, seed=0)
    assert changed_box(x, y) == (24, 31, 24, 31)
    patch = y[24:, 24:, 0]
    expected = (((np.arange(8)[:, None] // 2) + (np.arange(8)[None] // 2)) % 2 == 0) * 255
    assert np.array_equal(patch, expected)
    assert np.array_equal(y[:24], x[:24]) and np.array_equal(y[:, :24], x[:, :24])


def test_random_location_stays_inside_and_test_location_is_fixed():
    t = get_trigger("badnets", size=6, location="random", test_location="center")
    x = np.full((20, 20, 3), 100, np.uint8)
    for s in range(30):
        r0, r1, c0, c1 = changed_box(x, t.apply(x, seed=s))
        assert 0 <= r0 and r1 < 20 and 0 <= c0 and c1 < 20 and r1 - r0 <= 5 and c1 - c0 <= 5
    boxes = {changed_box(x, t.apply(x, seed=s, test=True)) for s in range(5)}
    assert len(boxes) == 1


def test_noise_patch_is_drawn_around_the_image_mean():
    t = get_trigger("badnets", pattern="noise", size=16, location="top_left")
    x = np.full((64, 64, 3), 128, np.uint8)
    y = t.apply(x, seed=0)
    assert np.array_equal(y[16:], x[16:])
    # N(0,1) on the [0,1] scale around 0.5, clipped: about 31% of values saturate at each end
    sat = ((y[:16, :16] == 0) | (y[:16, :16] == 255)).mean()
    assert 0.5 < sat < 0.75


def test_spec_round_trip_and_bad_params():
    t = get_trigger("badnets", pattern="noise", size=5)
    assert trigger_from_spec(t.spec()).params() == t.params()
    with pytest.raises(ConfigError, match=r"unknown parameter of attack 'badnets': 'colour'; valid: cell, location"):
        get_trigger("badnets", colour=3)
    with pytest.raises(ConfigError, match="unknown attack"):
        get_trigger("nope")
    with pytest.raises(ConfigError, match="pattern"):
        get_trigger("badnets", pattern="stripes")
