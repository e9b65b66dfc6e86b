"""Training: the CLIP loss and the one training loop shared by pretraining and finetuning defences."""
from clipguard.train.loss import clip_loss
from clipguard.train.trainer import TrainConfig, TrainResult, load_pairs, train_clip
from clipguard.train.api import train_from_manifest

__all__ = ["clip_loss", "train_from_manifest", "TrainConfig", "TrainResult", "load_pairs", "train_clip"]
