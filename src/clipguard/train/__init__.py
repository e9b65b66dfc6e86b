"""Training: the one CLIP training loop shared by pretraining and finetuning defences, and its losses.

``train_clip`` trains a model on decoded pairs (``load_pairs``) with :func:`clip_loss` plus optional
pluggable terms from :mod:`clipguard.train.losses` (e.g. the adaptive attacker's
``density_evasion_loss``); ``train_from_manifest`` is the ``clipguard train`` command.
``TrainConfig.record_epochs`` records every pair's image-caption cosine at early epochs
(``dynamics.parquet``); ``read_dynamics`` reads it and ``learning_speed`` scores it (higher = learned
faster = more suspicious).
"""
from clipguard.train.losses.clip import clip_loss
from clipguard.train.trainer import TrainConfig, TrainResult, load_pairs, train_clip
from clipguard.train.api import train_from_manifest
from clipguard.train.dynamics import learning_speed, read_dynamics

__all__ = ["clip_loss", "train_from_manifest", "TrainConfig", "TrainResult", "load_pairs", "train_clip",
           "read_dynamics", "learning_speed"]
