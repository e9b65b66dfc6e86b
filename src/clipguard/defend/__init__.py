"""Defences: remove what a scan found from the data (``filter_manifest``), or repair a model.

Model defences are registered by name in :data:`DEFENCES` (``clipguard defend METHOD``):

* finetuning on a clean set -- ``cleanclip``, ``mmcl``, ``ssl``, ``par``, ``supervised``
  (:mod:`clipguard.defend.finetune`);
* retraining from scratch on the training set -- ``filter-retrain``, ``abl``
  (:mod:`clipguard.defend.retrain`).

:func:`run_defence` applies one and saves the new model; :func:`clipguard.pipeline.defend_model`
adds the evaluation before and after and the ``run.json``.
"""
from clipguard.defend.filter import FilterResult, filter_manifest
from clipguard.defend.base import DEFENCES, Defence, DefenceJob, DefenceOutcome, make_defence
from clipguard.defend import finetune as _finetune, retrain as _retrain  # noqa: F401  (register the defences)
from clipguard.defend.api import DefenceResult, run_defence

__all__ = ["DEFENCES", "Defence", "DefenceJob", "DefenceOutcome", "DefenceResult", "FilterResult",
           "filter_manifest", "make_defence", "run_defence"]
