"""Properties every trigger must have: deterministic per seed, shape/dtype/range kept, the right
region changed, and a lossless round trip through PNG."""
import numpy as np
import pytest
from PIL import Image

from clipguard.attacks import get_trigger
from clipguard.data.synth import render_sample

#: name -> (params, "patch" | "global")
TRIGGERS = {
    "badnets": ({"size": 8, "cell": 2, "location": "bottom_right"}, "patch"),
    "badnets-noise": ({"pattern": "noise", "size": 8, "location": "top_left"}, "patch"),
    "blended": ({"alpha": 0.2}, "global"),
    "sig": ({}, "global"),
    "wanet": ({"k": 4, "strength": 1.0}, "global"),
    "nashville": ({}, "global"),
}


def build(key):
    params, _ = TRIGGERS[key]
    return get_trigger(key.split("-")[0], **params)


def world_image(i=0):
    return np.asarray(render_sample(0, "trigger-test", i)[0])


@pytest.mark.parametrize("key", TRIGGERS)
def test_deterministic_and_shape_preserved(key):
    t, x = build(key), world_image()
    a, b = t.apply(x, seed=3), t.apply(x, seed=3)
    assert np.array_equal(a, b)
    assert a.shape == x.shape and a.dtype == np.uint8
    assert not np.array_equal(a, x)
    assert np.array_equal(x, world_image())  # input untouched


@pytest.mark.parametrize("key", TRIGGERS)
def test_changes_only_what_it_should(key):
    t, kind = build(key), TRIGGERS[key][1]
    # a textured image, so that a warp visibly moves every region
    x = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    changed = (t.apply(x, seed=0) != x).any(2)
    if kind == "patch":
        rows, cols = np.nonzero(changed)
        assert rows.max() - rows.min() < 8 and cols.max() - cols.min() < 8
    else:
        assert changed.mean() > 0.5, f"{key} changed only {changed.mean():.0%} of the pixels"


@pytest.mark.parametrize("key", TRIGGERS)
def test_png_round_trip_is_lossless(key, tmp_path):
    y = build(key).apply(world_image(2), seed=1)
    Image.fromarray(y).save(tmp_path / "t.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "t.png").convert("RGB")), y)


def test_fixed_triggers_are_the_same_for_every_image_seed():
    for key in ("blended", "sig", "wanet", "nashville"):
        t = build(key)
        x = world_image(3)
        assert np.array_equal(t.apply(x, seed=0), t.apply(x, seed=99)), key


def test_blended_formula():
    t = get_trigger("blended", alpha=0.2, pattern_seed=5)
    x = np.full((8, 8, 3), 100, np.uint8)
    noise = t.pattern_array(8, 8)
    assert noise.shape == (8, 8, 3) and 0 <= noise.min() and noise.max() < 1
    assert np.array_equal(noise, get_trigger("blended", pattern_seed=5).pattern_array(8, 8))  # fixed per seed
    expected = np.clip(np.round((0.8 * 100 / 255 + 0.2 * noise) * 255), 0, 255)
    assert np.array_equal(t.apply(x), expected.astype(np.uint8))


def test_sig_is_a_horizontal_sinusoid():
    t = get_trigger("sig", amplitude=0.1, frequency=2)
    x = np.full((4, 16, 3), 128, np.uint8)
    y = t.apply(x).astype(int) - 128
    assert (y == y[0]).all()  # the same in every row: horizontal signal
    assert y[0, 0, 0] == 0 and y[0, 2, 0] > 0 and y[0, 6, 0] < 0  # sin over 2 periods of 16 columns


def test_wanet_is_a_small_warp():
    t = get_trigger("wanet", k=4, strength=1.0)
    x = world_image(4)
    diff = np.abs(t.apply(x).astype(int) - x.astype(int))
    assert diff.mean() < 20  # imperceptible-ish: a resampling, not a new pattern
    gx = np.zeros((32, 32, 3), np.uint8)
    gx[:, :, 0] = np.arange(32, dtype=np.uint8)[None] * 8  # a horizontal ramp is displaced, not replaced
    assert np.abs(t.apply(gx)[..., 0].astype(int) - gx[..., 0]).max() <= 8 * 2


def test_bad_parameters():
    from clipguard.errors import ConfigError

    for name, params in (("blended", {"alpha": 0}), ("sig", {"amplitude": -1}), ("wanet", {"k": 1}),
                         ("nashville", {"strength": 2}), ("multi", {"triggers": [{"attack": "sig"}]})):
        with pytest.raises(ConfigError):
            get_trigger(name, **params)


@pytest.mark.parametrize("name,params,text", [
    ("badnets", {"size": "abc"}, "badnets size must be an integer >= 1 or None, got 'abc'"),
    ("badnets", {"cell": 1.5}, "badnets cell must be an integer >= 1"),
    ("badnets", {"location": "middle"}, "unknown badnets location 'middle'; choose one of: random, center"),
    ("badnets", {"test_location": 3}, "unknown badnets test_location 3"),
    ("blended", {"alpha": "high"}, r"blended alpha must be a number in \(0, 1\]"),
    ("blended", {"pattern_seed": 0.5}, "blended pattern_seed must be an integer"),
    ("sig", {"frequency": [6]}, r"sig frequency must be a number in \(0, inf\)"),
    ("sig", {"alpha": 2}, r"sig alpha must be a number in \(0, 1\]"),
    ("wanet", {"strength": True}, "wanet strength must be a number"),
    ("nashville", {"strength": "full"}, "nashville strength"),
    ("multi", {"triggers": "sig"}, "multi: triggers must be a list of trigger specs"),
    ("multi", {"triggers": [{"attack": "sig"}, {"attack": "sig", "params": {"amp": 1}}]},
     "unknown parameter of attack 'sig': 'amp'; valid: alpha, amplitude, frequency"),
    ("multi", {"targets": "star"}, "multi: targets must be a list of class names"),
    ("tdpa", {"source_id": [1]}, "tdpa source_id must be a row id"),
    ("badclip", {"patch": "/nonexistent/trigger.png"}, "cannot read patch image"),
])
def test_parameter_values_are_checked_with_one_line_errors(name, params, text):
    from clipguard.errors import ConfigError

    with pytest.raises(ConfigError, match=text) as e:
        get_trigger(name, **params)
    assert "\n" not in str(e.value)


def test_unknown_parameter_names_the_valid_ones():
    from clipguard.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown parameter of attack 'wanet': 'sterngth'; valid: field_seed, k, "
                                          "strength"):
        get_trigger("wanet", sterngth=2)


@pytest.mark.parametrize("shape,dtype", [((32, 32), np.uint8), ((32, 32, 4), np.uint8), ((32, 32, 1), np.uint8),
                                         ((32, 32, 3), np.float32)])
def test_wrong_image_shape_or_dtype_is_a_config_error(shape, dtype):
    from clipguard.errors import ConfigError

    for key in TRIGGERS:
        with pytest.raises(ConfigError, match=r"expected an \(H, W, 3\) uint8 RGB image.*convert\('RGB'\)"):
            build(key).apply(np.zeros(shape, dtype))


def test_tdpa_source_id_number_is_read_as_text():
    assert get_trigger("tdpa", source_id=17).source_id == "17"
    assert get_trigger("tdpa").source_id is None


def test_spec_that_is_not_a_trigger_spec():
    from clipguard.attacks import trigger_from_spec
    from clipguard.errors import ConfigError

    for spec in ({"params": {}}, {"attack": "sig", "params": [1]}, ["sig"], {"trigger": "sig"}):
        with pytest.raises(ConfigError, match="'attack' \\(a name\\) and optional 'params'"):
            trigger_from_spec(spec)
    assert trigger_from_spec({"trigger": {"attack": "sig", "params": None}}).params()["alpha"] is None
