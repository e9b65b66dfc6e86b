"""Evaluation.

* :mod:`clipguard.evaluate.zeroshot` — zero-shot clean accuracy and attack success rate
  (``evaluate_zero_shot``, ``build_classifier``, ``ASR_CONVENTION``);
* :mod:`clipguard.evaluate.api` — ``evaluate_model`` (the ``clipguard eval`` command);
* :mod:`clipguard.evaluate.detection_metrics` — AUROC, AUPRC, TPR at 1% FPR.

Submodules are imported on use so that ``import clipguard.evaluate`` stays light.
"""
from clipguard.evaluate.detection_metrics import detection_metrics

__all__ = ["detection_metrics"]
