"""How well a suspicion score separates poisoned from clean samples: AUROC, AUPRC, TPR at 1% FPR.

Scores are "higher = more suspicious"; ``y_true`` marks the poisoned samples (1/True). A scan
computes these for every detector when the data has ground truth (the ``poisoned`` column);
:mod:`clipguard.evaluate.detection_metrics` re-exports them.
"""
from __future__ import annotations

import numpy as np

from clipguard.errors import ConfigError

__all__ = ["FPR_BUDGET", "detection_metrics", "detection_metrics_many"]

FPR_BUDGET = 0.01
"""The false-positive rate at which ``tpr_at_1pct_fpr`` is read."""


def _ordinal(scores: np.ndarray) -> np.ndarray:
    """Dense ranks preserving order and ties, with NaN ranked lowest (least suspicious).

    Every metric here depends only on the order of the scores, and ranks are finite even when
    scores hold +-inf (which scikit-learn refuses).
    """
    s = np.where(np.isnan(scores), -np.inf, scores)
    _, inv = np.unique(s, return_inverse=True)
    return inv.astype(np.float64)


def detection_metrics(y_true, scores) -> dict[str, float]:
    """AUROC, AUPRC and TPR at 1% FPR of a suspicion score.

    Args:
        y_true: (n,) ground truth, bool or {0, 1}; 1 = poisoned.
        scores: (n,) float scores, higher = more suspicious; NaN counts as least suspicious.

    Returns:
        ``{"auroc", "auprc", "tpr_at_1pct_fpr"}`` as floats. AUPRC is scikit-learn's average
        precision; TPR at 1% FPR is the largest TPR on the ROC curve among points with
        FPR <= 0.01.

    Raises:
        ConfigError: lengths differ, labels are not binary, or only one class is present.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    y = np.asarray(y_true).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if len(y) != len(s):
        raise ConfigError(
            f"ground truth has {len(y)} labels but there are {len(s)} scores; "
            "they must be row-aligned"
        )
    if y.dtype != bool:
        try:
            yf = y.astype(np.float64)
        except (TypeError, ValueError):
            raise ConfigError(
                f"ground-truth labels must be bool or 0/1, got dtype {y.dtype}"
            ) from None
        if not np.isin(yf, (0.0, 1.0)).all():
            bad = yf[~np.isin(yf, (0.0, 1.0))][0]
            raise ConfigError(
                f"ground-truth labels must be bool or 0/1 (1 = poisoned), found {bad!r}"
            )
        y = yf.astype(bool)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        which = "poisoned" if n_pos else "clean"
        raise ConfigError(
            f"all {len(y)} samples are {which}; detection metrics need both poisoned and "
            "clean samples in the ground truth"
        )
    r = _ordinal(s)
    fpr, tpr, _ = roc_curve(y, r, drop_intermediate=False)
    return {
        "auroc": float(roc_auc_score(y, r)),
        "auprc": float(average_precision_score(y, r)),
        "tpr_at_1pct_fpr": float(tpr[fpr <= FPR_BUDGET].max()),
    }


def detection_metrics_many(y_true, scores: dict) -> dict[str, dict[str, float]]:
    """:func:`detection_metrics` of several scores against the same ground truth.

    Args:
        y_true: (n,) ground truth, 1 = poisoned.
        scores: ``{name: (n,) scores}``, higher = more suspicious.

    Returns:
        ``{name: {"auroc", "auprc", "tpr_at_1pct_fpr"}}`` in the order of ``scores``.
    """
    return {name: detection_metrics(y_true, s) for name, s in scores.items()}
