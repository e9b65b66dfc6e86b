"""The estimator contract of the base class: strict get_params / set_params (nested for fused),
the one fitted check, and the fixed registry order."""
import subprocess
import sys

import numpy as np
import pytest

from clipguard.detect import DETECTORS, ScanConfig
from clipguard.detect.detectors import Detector, check_is_fitted, make_detector, nest_params
from clipguard.errors import ConfigError
from detect_helpers import ALL


def test_registry_order_does_not_depend_on_import_order():
    assert DETECTORS.names() == ALL
    code = ("import clipguard.detect.detectors.fused, clipguard.detect.detectors.clipscore\n"
            "from clipguard.detect.detectors.registry import DETECTORS\n"
            "print(','.join(DETECTORS.names()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().split(",") == ALL


@pytest.mark.parametrize("name", ALL)
def test_get_params_lists_the_constructor_and_clones(name):
    det = DETECTORS.get(name)()
    params = det.get_params()
    assert list(params) == list(type(det).param_names())
    clone = type(det)(**det.get_params(deep=False))
    assert clone.get_params() == params
    assert isinstance(det, Detector)


def test_set_params_refuses_unknown_names_with_the_valid_ones():
    det = DETECTORS.get("dao")()
    assert det.set_params(k=8) is det and det.k == 8
    with pytest.raises(ConfigError, match=r"unknown parameter of detector 'dao' 'bogus'; valid: "
                                          r"backend, block_size, k$"):
        det.set_params(bogus=1)
    with pytest.raises(ConfigError, match="'k__x' is not a parameter; valid: backend, block_size, k"):
        det.set_params(k__x=1)
    with pytest.raises(ConfigError, match=r"'bogus'; valid: \(none\)"):
        DETECTORS.get("clipscore")().set_params(bogus=1)
    assert det.k == 8  # nothing was set by the refused calls


def test_fused_nested_component_params():
    fused = DETECTORS.get("fused")()
    fused.set_params(method="rank", caption_dup__threshold=0.9, dao__k=4)
    assert fused.method == "rank"
    assert fused.component_params == {"caption_dup": {"threshold": 0.9}, "dao": {"k": 4}}
    deep = fused.get_params(deep=True)
    assert deep["caption_dup__threshold"] == 0.9 and deep["dao__k"] == 4
    assert "dao__k" not in fused.get_params(deep=False)
    with pytest.raises(ConfigError, match="unknown parameter of detector 'dao' 'kk'; valid: backend"):
        fused.set_params(dao__kk=4)
    with pytest.raises(ConfigError, match="unknown detector 'nope'"):
        fused.set_params(nope__k=4)
    with pytest.raises(ConfigError, match="fused cannot contain itself"):
        fused.set_params(fused__method="rank")
    with pytest.raises(ConfigError, match="unknown parameter of detector 'caption_dup' 'treshold'"):
        DETECTORS.get("fused")(component_params={"caption_dup": {"treshold": 1}}).fit(np.eye(3))


def test_strict_detector_params_in_the_scan_config():
    with pytest.raises(ConfigError) as err:
        ScanConfig(detector_params={"fused": {"methd": "rank"}})
    msg = str(err.value)
    assert "'methd'" in msg and "valid:" in msg and "\n" not in msg
    for valid in ("image", "method", "signals", "two_sided", "component_params", "k", "seed"):
        assert valid in msg
    with pytest.raises(ConfigError, match="unknown parameter of detector 'caption_dup' 'treshold'"):
        ScanConfig(detector_params={"fused": {"caption_dup__treshold": 0.9}})
    with pytest.raises(ConfigError, match="unknown detector 'fusd'"):
        ScanConfig(detector_params={"fusd": {}})
    ok = ScanConfig(detector_params={"fused": {"method": "rank", "caption_dup__threshold": 0.9}})
    assert ok.detector_params["fused"]["caption_dup__threshold"] == 0.9


def test_flat_names_nest_into_detector_params():
    nested = nest_params({"fused.method": "rank", "fused.dao__k": 8, "caption_dup.threshold": 0.9})
    assert nested == {"fused": {"method": "rank", "dao__k": 8}, "caption_dup": {"threshold": 0.9}}
    assert ScanConfig(detector_params=nested).detector_params == nested
    with pytest.raises(ConfigError, match="DETECTOR.PARAMETER"):
        nest_params({"method": "rank"})
    with pytest.raises(ConfigError, match="unknown parameter of detector 'fused' 'methd'"):
        ScanConfig(detector_params=nest_params({"fused.methd": "rank"}))


def test_make_detector_passes_common_options_only_where_taken():
    common = {"k": 5, "seed": 3, "backend": "faiss", "block_size": 64}
    dao = make_detector("dao", common)
    assert (dao.k, dao.backend, dao.block_size) == (5, "faiss", 64) and not hasattr(dao, "seed")
    assert make_detector("iforest", common).seed == 3
    assert make_detector("clipscore", common).get_params() == {}
    assert make_detector("dao", common, {"k": 7}).k == 7  # the user's parameters win
    with pytest.raises(ConfigError, match="unknown parameter of detector 'iforest' 'trees'"):
        make_detector("iforest", common, {"trees": 3})


def test_one_fitted_check():
    x = np.random.default_rng(0).normal(size=(40, 4))
    for name in ("kdist", "iforest", "fused", "caption_dup"):
        det = DETECTORS.get(name)()
        with pytest.raises(ConfigError, match=f"{type(det).__name__} is not fitted; call fit"):
            det.score_samples(x, captions=["a"] * 40)
    det = DETECTORS.get("kdist")(k=3)
    with pytest.raises(ConfigError, match="not fitted"):
        check_is_fitted(det)
    check_is_fitted(det.fit(x))
    check_is_fitted(det, ["reference_", "kdist_"])
    with pytest.raises(ConfigError, match="call fit\\(text=... or captions=...\\) first"):
        check_is_fitted(DETECTORS.get("caption_dup")())
