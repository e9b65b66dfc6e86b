"""Detection metrics on hand-checked examples."""
import numpy as np
import pytest

from clipguard.errors import ConfigError
from clipguard.evaluate.detection_metrics import detection_metrics


def test_defined_in_detect_and_re_exported_here():
    import clipguard.detect.metrics
    import clipguard.evaluate

    assert detection_metrics is clipguard.detect.metrics.detection_metrics
    assert clipguard.evaluate.detection_metrics is detection_metrics


def test_small_hand_example():
    # negatives 0.1, 0.4; positives 0.35, 0.8. Of the 2 x 2 (positive, negative) pairs the
    # positive scores higher in 3 -> AUROC = 3/4. Ranking: 0.8 (+), 0.4 (-), 0.35 (+), 0.1 (-):
    # precision at the two positives 1/1 and 2/3 -> AP = (1 + 2/3) / 2 = 5/6.
    # FPR <= 1% allows 0 of the 2 negatives: only 0.8 is above the threshold -> TPR = 1/2.
    m = detection_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert m == pytest.approx({"auroc": 0.75, "auprc": 5 / 6, "tpr_at_1pct_fpr": 0.5})


def test_tpr_at_one_percent_fpr():
    # 200 negatives scored 0..199; 10 positives. 1% FPR allows 2 false positives (199, 198).
    # Thresholding at 197.5 admits positives 1000, 999, 198.5, 197.5 and negatives 199, 198:
    # TPR = 4/10. One step lower (197) a third negative enters: FPR = 1.5% > 1%.
    neg = np.arange(200, dtype=float)
    pos = np.array([1000, 999, 198.5, 197.5, 10, 11, 12, 13, 14, 15], dtype=float)
    y = np.r_[np.zeros(200), np.ones(10)]
    m = detection_metrics(y, np.r_[neg, pos])
    assert m["tpr_at_1pct_fpr"] == pytest.approx(0.4)


def test_perfect_and_inverted():
    y = np.array([True, False, False, True, False])
    s = np.array([0.9, 0.1, 0.2, 0.8, 0.3])
    assert detection_metrics(y, s) == pytest.approx({"auroc": 1, "auprc": 1, "tpr_at_1pct_fpr": 1})
    assert detection_metrics(y, -s)["auroc"] == 0


def test_nan_is_least_suspicious_and_inf_is_allowed():
    y = [0, 0, 1, 1, 0]
    s_nan = [0.2, 0.3, np.nan, 0.9, np.inf]
    s_ref = [0.2, 0.3, -1.0, 0.9, 5.0]
    assert detection_metrics(y, s_nan) == pytest.approx(detection_metrics(y, s_ref))


def test_errors():
    with pytest.raises(ConfigError, match="all 3 samples are clean"):
        detection_metrics([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ConfigError, match="all 2 samples are poisoned"):
        detection_metrics([True, True], [0.1, 0.2])
    with pytest.raises(ConfigError, match="3 labels but there are 2 scores"):
        detection_metrics([0, 1, 0], [0.1, 0.2])
    with pytest.raises(ConfigError, match="bool or 0/1"):
        detection_metrics([0, 2, 1], [0.1, 0.2, 0.3])
