"""How well a suspicion score separates poisoned from clean samples (AUROC, AUPRC, TPR at 1% FPR).

The metrics live in :mod:`clipguard.detect.metrics` (a scan computes them, and ``detect`` sits below
``evaluate``); this module re-exports them where evaluation code looks for them.
"""
from clipguard.detect.metrics import FPR_BUDGET, detection_metrics, detection_metrics_many

__all__ = ["FPR_BUDGET", "detection_metrics", "detection_metrics_many"]
