"""The finetuning defences: start from the (poisoned) model, finetune on a clean set.

==============  ===========================================================================================
``cleanclip``   CleanCLIP (ICCV 2023): ``lambda1 * CLIP + lambda2 * in-modal`` loss; the in-modal loss
                contrasts each image with an AutoAugment view of itself and each caption with an EDA
                caption, under the model's one learned temperature (REFERENCE.md section 6)
``mmcl``        control: the CLIP loss alone on the clean set (the paper: leaves the backdoor)
``ssl``         control: the in-modal loss alone (the paper: removes the backdoor, costs clean accuracy)
``par``         Perturb and Recover (arXiv 2412.00727): ``CLIP - weight * (d_img + d_txt)``, d the
                batch-mean squared distance to the frozen poisoned model's embeddings, each half cut
                off above ``tau``; light image augmentation (Gaussian noise, random erasing)
``supervised``  control: the image encoder with a linear head, cross-entropy on the clean set's
                ``label`` column (the paper: drives ASR to about 0); zero-shot CA/ASR are measured
                afterwards with the (unchanged) text encoder
==============  ===========================================================================================

Training settings: AdamW without weight decay on norms, biases and the logit scale, linear warm-up
then cosine to 0 (the trainer's). The defaults (``TRAIN_DEFAULTS``) are those that worked for the
tiny models of the embedded world in ``benchmarks/defences.py`` (its notes give the sweep); the papers'
own (CleanCLIP: batch 64, lr 1e-5, 10 epochs; PAR: lr 3e-6, weight decay 1e-4, 2 epochs) are for
pretrained RN50/ViT models.
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np

from clipguard.data.augment import autoaugment_view, eda_view, light_view
from clipguard.defend.base import DEFENCES, Defence, DefenceJob
from clipguard.errors import ConfigError
from clipguard.train.data import PairData, Views
from clipguard.train.losses.clip import ClipTerm
from clipguard.train.losses.inmodal import InModalTerm
from clipguard.train.losses.par import ParTerm
from clipguard.train.losses.supervised import SupervisedTerm
from clipguard.train.objective import Objective
from clipguard.utils.validate import check_int, check_real

__all__ = ["CleanCLIP", "MMCLOnly", "PAR", "SSLOnly", "Supervised"]

FINETUNE_DEFAULTS: dict[str, Any] = {"epochs": 10, "batch_size": 64, "lr": 2e-3, "weight_decay": 0.1,
                                     "warmup_steps": 50}
"""Training settings of the finetuning defences unless overridden (tiny models; module docstring)."""


class _Finetune(Defence):
    """A finetuning defence with the shared training defaults (and, unless it says otherwise, no parameters)."""

    kind = "finetune"
    TRAIN_DEFAULTS = FINETUNE_DEFAULTS

    def __init__(self) -> None:
        pass


def _clean_views() -> Views:
    """CleanCLIP's views: an AutoAugment image view and an EDA caption view per sample."""
    return Views(image_aug=autoaugment_view(), text_aug=eda_view())


@DEFENCES.register("cleanclip")
class CleanCLIP(_Finetune):
    """CleanCLIP: ``lambda1 * CLIP loss + lambda2 * in-modal loss`` on clean pairs (larger
    ``lambda2`` lowers ASR further, at some clean accuracy).

    Args:
        lambda1: weight of the multimodal CLIP loss (>= 0).
        lambda2: weight of the in-modal loss, each image against its AutoAugment view and each
            caption against its EDA view (>= 0; not both 0).
    """

    summary = "CleanCLIP: lambda1 * CLIP loss + lambda2 * in-modal (AutoAugment / EDA views) loss on clean pairs"

    def __init__(self, lambda1: float = 1.0, lambda2: float = 1.0) -> None:
        self.lambda1 = check_real("cleanclip lambda1", lambda1, low=0)
        self.lambda2 = check_real("cleanclip lambda2", lambda2, low=0)
        if self.lambda1 == self.lambda2 == 0:
            raise ConfigError("cleanclip: lambda1 and lambda2 cannot both be 0")

    def views(self, job: DefenceJob) -> Views:
        return _clean_views()

    def objective(self, job: DefenceJob, data: PairData) -> Objective:
        return Objective([(self.lambda1, ClipTerm()), (self.lambda2, InModalTerm())])


@DEFENCES.register("mmcl")
class MMCLOnly(_Finetune):
    """Control: finetune with the CLIP (multimodal contrastive) loss alone on clean pairs."""

    summary = "control: the CLIP loss alone on clean pairs (CleanCLIP's 'MMCL only')"

    def objective(self, job: DefenceJob, data: PairData) -> Objective:
        return Objective([(1.0, ClipTerm())])


@DEFENCES.register("ssl")
class SSLOnly(_Finetune):
    """Control: finetune with CleanCLIP's in-modal (self-supervised) loss alone."""

    summary = "control: the in-modal self-supervised loss alone (CleanCLIP's 'SSL only')"

    def views(self, job: DefenceJob) -> Views:
        return _clean_views()

    def objective(self, job: DefenceJob, data: PairData) -> Objective:
        return Objective([(1.0, InModalTerm())])


@DEFENCES.register("par")
class PAR(_Finetune):
    """Perturb and Recover: the CLIP loss minus ``weight * (d_img + d_txt)``, the distances to the
    frozen poisoned model's embeddings, each switched off above ``tau``; light augmentation.

    Args:
        tau: cut-off (> 0): a distance term stops pushing once the batch-mean squared distance to
            the frozen model's embeddings exceeds it (2.15 in the paper).
        weight: weight of the distance terms ``d_img + d_txt`` (>= 0; 0.5 in the paper).
        noise_sigma: standard deviation of the Gaussian noise added to images (pixel scale [0, 1]).
        p_noise: probability that an image gets the Gaussian noise, in [0, 1].
        p_erase: probability of random erasing on an image, in [0, 1].
    """

    summary = "PAR: CLIP loss - weight * (d_img + d_txt) to the frozen poisoned model, cut off above tau"

    def __init__(self, tau: float = 2.15, weight: float = 0.5, noise_sigma: float = 0.2, p_noise: float = 0.5,
                 p_erase: float = 0.5) -> None:
        self.tau = check_real("par tau", tau, low=0, low_open=True)
        self.weight = check_real("par weight", weight, low=0)
        self.noise_sigma = check_real("par noise_sigma", noise_sigma, low=0)
        self.p_noise = check_real("par p_noise", p_noise, low=0, high=1)
        self.p_erase = check_real("par p_erase", p_erase, low=0, high=1)

    def views(self, job: DefenceJob) -> Views:
        return Views(image_light=light_view(self.noise_sigma, self.p_noise, self.p_erase))

    def objective(self, job: DefenceJob, data: PairData) -> Objective:
        reference = copy.deepcopy(job.bundle.model).eval()  # the frozen poisoned model
        return Objective([(1.0, ClipTerm()), (self.weight, ParTerm(reference, tau=self.tau))])


@DEFENCES.register("supervised")
class Supervised(_Finetune):
    """Control: finetune the image encoder with a linear head on the clean set's class labels
    (manifest column ``label``, int class index); ``n_classes`` defaults to ``max(label) + 1``.

    Args:
        n_classes: outputs of the linear head (>= 2); ``None``: ``max(label) + 1``.
    """

    summary = "control: supervised finetuning of the image encoder with a linear head (needs a 'label' column)"

    def __init__(self, n_classes: int | None = None) -> None:
        self.n_classes = None if n_classes is None else check_int("supervised n_classes", n_classes, minimum=2)

    def views(self, job: DefenceJob) -> Views:
        return Views(labels=True)

    def objective(self, job: DefenceJob, data: PairData) -> Objective:
        labels = data.manifest.df["label"].to_numpy()[np.asarray(data.rows, dtype=np.int64)]  # checked by PairData
        n = self.n_classes or int(labels.max()) + 1
        if labels.max() >= n:
            raise ConfigError(f"{job.data}: label {int(labels.max())} is out of range for n_classes={n}")
        dim = int(job.bundle.config["embed_dim"])
        return Objective([(1.0, SupervisedTerm(dim, n, seed=job.config.seed))])
