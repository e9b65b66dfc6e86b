"""Attacks: triggers registered by name, and the poisoner that builds poisoned datasets.

``ATTACKS.names()`` lists every attack; ``get_trigger(name, **params)`` builds one;
``poison_dataset`` writes a poisoned copy of a manifest with a JSON attack spec.

=============  ==========================================================================
badnets        patch: fixed checkerboard (DAO) or per-image noise (CleanCLIP)
blended        global blend with a fixed noise or pattern image
sig            horizontal sinusoid
wanet          fixed smooth warp field (grid_sample)
nashville      Instagram-style colour filter
multi          several triggers, one shared target or one target per trigger
tdpa           targeted data poisoning: one image duplicated with captions naming the target
badclip        a patch optimised against a clean CLIP (see :mod:`clipguard.attacks.badclip`)
=============  ==========================================================================

Any trigger is label-consistent with ``poison_dataset(..., mode="clean")``. Trigger parameters are
strict: an unknown name or a value of the wrong type is a one-line ConfigError. The adaptive
(density-evading) attacker acts at training time, so its loss lives in :mod:`clipguard.train.losses`.
"""
from clipguard.attacks.base import ATTACKS, Trigger, get_trigger, trigger_from_spec
from clipguard.attacks import badnets, blended, sig, wanet, nashville, multi, tdpa, badclip  # noqa: F401,E501 (registration)
from clipguard.attacks.poisoner import PoisonResult, poison_dataset

__all__ = ["ATTACKS", "Trigger", "get_trigger", "trigger_from_spec", "PoisonResult", "poison_dataset"]
