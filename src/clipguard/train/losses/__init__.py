"""Training losses: CLIP's contrastive loss, and the pluggable terms a run may add to it.

A term added to the loss is an :data:`ExtraLoss`: ``f(image_features, text_features, rows) -> scalar``
with (B, D) L2-normalised features of one batch and ``rows`` (B,) the batch's manifest row numbers.
:func:`clipguard.train.train_clip` adds it to :func:`clip_loss` (``extra_loss=``); model defences
(e.g. CleanCLIP's in-modality term) plug in the same way.

=================  ===========================================================================
clip               :func:`clip_loss`, the symmetric image-text cross-entropy (MMCL)
density_evasion    :func:`density_evasion_loss`, the adaptive attacker's batch-SLOF term
=================  ===========================================================================
"""
from clipguard.train.losses.clip import MAX_LOGIT_SCALE, ExtraLoss, clip_loss
from clipguard.train.losses.density_evasion import batch_slof, density_evasion_loss

__all__ = ["ExtraLoss", "MAX_LOGIT_SCALE", "batch_slof", "clip_loss", "density_evasion_loss"]
