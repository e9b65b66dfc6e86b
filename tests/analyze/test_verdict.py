"""The audit verdict: Neural Cleanse's anomaly index and the conformal calibration, on numbers worked by hand."""
import math

import numpy as np
import pytest

from clipguard.analyze.verdict import MAD_CONSISTENCY, anomaly_indices, calibrate_threshold, calibrate_with_reference
from clipguard.errors import ConfigError


def test_anomaly_index_on_toy_numbers():
    # median 4, absolute deviations 3,1,0,1,2 -> their median 1 -> MAD = 1.4826
    idx = anomaly_indices([1.0, 3.0, 4.0, 5.0, 6.0])
    assert np.allclose(idx, np.array([3.0, 1.0, 0.0, -1.0, -2.0]) / MAD_CONSISTENCY)
    assert int(np.argmax(idx)) == 0  # the smallest mask is the most anomalous


def test_anomaly_index_edge_cases_and_errors():
    assert np.array_equal(anomaly_indices([0.1, 0.5, 0.5, 0.5]), [np.inf, 0.0, 0.0, 0.0])  # MAD 0
    with pytest.raises(ConfigError, match="at least 3 candidate"):
        anomaly_indices([0.1, 0.2])
    with pytest.raises(ConfigError, match="not finite"):
        anomaly_indices([0.1, float("nan"), 0.3])


def test_calibration_is_the_conformal_quantile():
    # n = 3, alpha = 0.05: k = ceil(4 * 0.95) = 4 > 3 -> the largest, guaranteeing 1 - 3/4 = 0.25
    cal = calibrate_threshold([1.2, 0.4, 2.5], alpha=0.05, floor=0.0)
    assert (cal.threshold, cal.k, cal.n_clean) == (2.5, 3, 3) and cal.false_alarm_bound == pytest.approx(0.25)
    # n = 39: k = ceil(40 * 0.95) = 38 -> the 38th smallest, bound 1 - 38/40 = 0.05
    stats = list(range(39, 0, -1))
    cal = calibrate_threshold(stats, alpha=0.05, floor=0.0)
    assert (cal.threshold, cal.k) == (38.0, 38) and cal.false_alarm_bound == pytest.approx(0.05)
    # n = 9, alpha = 0.2: k = ceil(10 * 0.8) = 8
    cal = calibrate_threshold([float(v) for v in range(1, 10)], alpha=0.2, floor=0.0)
    assert (cal.threshold, cal.k) == (8.0, 8) and cal.false_alarm_bound == pytest.approx(1 - 8 / 10)
    assert cal.as_dict()["clean_statistics"] == [float(v) for v in range(1, 10)]
    assert math.isclose(calibrate_threshold([0.7], floor=0.0).threshold, 0.7)
    # the floor (Neural Cleanse's 2 by default) holds the threshold up; the quantile is kept beside it
    low = calibrate_threshold([0.7, 1.1, 0.9])
    assert (low.threshold, low.conformal_threshold, low.floor) == (2.0, 1.1, 2.0)
    assert calibrate_threshold([0.7, 3.5, 0.9]).threshold == 3.5


def test_calibration_errors():
    with pytest.raises(ConfigError, match="at least one clean model"):
        calibrate_threshold([])
    with pytest.raises(ConfigError, match="NaN"):
        calibrate_threshold([1.0, float("nan")])
    with pytest.raises(ConfigError, match="alpha"):
        calibrate_threshold([1.0], alpha=1.0)


def test_the_per_target_reference_on_toy_numbers():
    # two clean models: "ring" is easy in both (mask 0.01 vs 0.04 for the rest)
    a = {"circle": 0.04, "star": 0.04, "ring": 0.01, "cross": 0.04}
    b = {"circle": 0.04, "star": 0.04, "ring": 0.01, "cross": 0.02}
    cal = calibrate_with_reference([a, b], floor=0.0)
    assert cal.reference["ring"] == pytest.approx(math.log(0.01))
    assert cal.reference["cross"] == pytest.approx((math.log(0.04) + math.log(0.02)) / 2)
    # leave-one-out: model a against b's logs -> deviations 0, 0, 0, log 2 -> median 0, MAD 0 -> cross is at
    # +log 2 (larger), the others at 0: no candidate below the median -> statistic 0; same for b (cross at -log 2
    # below the median 0 with MAD 0 -> inf)
    assert cal.clean_statistics == (0.0, math.inf)
    assert cal.threshold == math.inf and cal.k == 2
    # a new model judged against the reference: its "ring" is as easy as in the clean models, "star" is not
    masks = [0.04, 0.005, 0.01, 0.03]
    idx = anomaly_indices(masks, cal.reference_for(["circle", "star", "ring", "cross"]))
    rel = np.log(masks) - np.array([math.log(0.04), math.log(0.04), math.log(0.01), (math.log(0.04) + math.log(0.02)) / 2])
    med = np.median(rel)
    assert np.allclose(idx, (med - rel) / (MAD_CONSISTENCY * np.median(np.abs(rel - med))))
    assert int(np.argmax(idx)) == 1  # star, not the intrinsically easy ring
    # an unknown target takes the median reference of the known ones
    idx2 = anomaly_indices([0.04, 0.04, 0.01, 0.005], cal.reference_for(["circle", "star", "ring", "a cake"]))
    assert int(np.argmax(idx2)) == 3
    with pytest.raises(ConfigError, match="at least 2 clean models"):
        calibrate_with_reference([a])
