"""Training losses: the pluggable terms of an :class:`~clipguard.train.objective.Objective`.

A term (:class:`~clipguard.train.objective.LossTerm`) names the encoded inputs it ``needs``; the
trainer encodes exactly those each step and the objective sums ``weight * term(inputs)``.
:func:`clipguard.train.train_clip` also takes a bare :data:`ExtraLoss`
``f(image_features, text_features, rows) -> scalar`` (``extra_loss=``), added as a term named "extra".

=================  ===========================================================================
clip               :class:`ClipTerm` / :func:`clip_loss`, the symmetric image-text cross-entropy (MMCL)
inmodal            :class:`InModalTerm` / :func:`inmodal_loss`, CleanCLIP's in-modal SSL term
par                :class:`ParTerm` / :func:`par_distances`, PAR's bounded distance to the poisoned model
unlearn            :class:`UnlearnTerm` / :func:`abl_suspects`, ABL's unlearning of suspect pairs
supervised         :class:`SupervisedTerm`, a linear head on the image encoder (labelled images)
density_evasion    :func:`density_evasion_loss`, the adaptive attacker's batch-SLOF term (an ExtraLoss)
=================  ===========================================================================
"""
from clipguard.train.losses.clip import MAX_LOGIT_SCALE, ClipTerm, ExtraLoss, clip_loss
from clipguard.train.losses.density_evasion import batch_slof, density_evasion_loss
from clipguard.train.losses.inmodal import InModalTerm, inmodal_loss
from clipguard.train.losses.par import ParTerm, par_distances
from clipguard.train.losses.supervised import SupervisedTerm
from clipguard.train.losses.unlearn import UnlearnTerm, abl_suspects

__all__ = ["ClipTerm", "ExtraLoss", "InModalTerm", "MAX_LOGIT_SCALE", "ParTerm", "SupervisedTerm", "UnlearnTerm",
           "abl_suspects", "batch_slof", "clip_loss", "density_evasion_loss", "inmodal_loss", "par_distances"]
