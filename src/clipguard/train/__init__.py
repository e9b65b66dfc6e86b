"""Training: the one streaming CLIP training loop shared by pretraining and every finetuning defence.

``train_clip`` trains a model on a :class:`PairData` (a manifest's pairs, cached in memory or
streamed through DataLoader workers, with optional per-sample :class:`Views`) to minimise an
:class:`Objective` -- a weighted sum of pluggable loss terms (default: the CLIP loss,
:class:`ClipTerm`; more in :mod:`clipguard.train.losses`). ``train_from_manifest`` is the
``clipguard train`` command. ``TrainConfig.record_epochs`` records every pair's image-caption cosine
at early epochs (``dynamics.parquet``); ``read_dynamics`` reads it and ``learning_speed`` scores it
(higher = learned faster = more suspicious).
"""
from clipguard.train.objective import Objective, StepInputs
from clipguard.train.losses.clip import ClipTerm, clip_loss
from clipguard.train.data import PairData, Views, epoch_loader
from clipguard.train.dynamics import learning_speed, read_dynamics
from clipguard.train.trainer import TrainConfig, TrainResult, train_clip
from clipguard.train.api import train_from_manifest

__all__ = ["ClipTerm", "Objective", "PairData", "StepInputs", "TrainConfig", "TrainResult", "Views", "clip_loss",
           "epoch_loader", "learning_speed", "read_dynamics", "train_clip", "train_from_manifest"]
