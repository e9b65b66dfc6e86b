"""Evaluation.

* :mod:`clipguard.evaluate.zeroshot` — zero-shot clean accuracy and attack success rate
  (``evaluate_zero_shot``, ``build_classifier``, ``ASR_CONVENTION``);
* :mod:`clipguard.evaluate.api` — ``evaluate_model`` (the ``clipguard eval`` command);
* :mod:`clipguard.evaluate.detection_metrics` — AUROC, AUPRC, TPR at 1% FPR (defined in
  :mod:`clipguard.detect.metrics`, which a scan uses; re-exported here).

"""
from clipguard.evaluate.api import evaluate_model, read_classes
from clipguard.evaluate.detection_metrics import detection_metrics
from clipguard.evaluate.zeroshot import evaluate_zero_shot

__all__ = ["evaluate_model", "read_classes", "detection_metrics", "evaluate_zero_shot"]
