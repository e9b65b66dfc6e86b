"""Attacks: triggers registered by name, and the poisoner that builds poisoned datasets.

``ATTACKS.names()`` lists every trigger; ``get_trigger(name, **params)`` builds one;
``poison_dataset`` writes a poisoned copy of a manifest with a JSON attack spec.
"""
from clipguard.attacks.base import ATTACKS, Trigger, get_trigger, trigger_from_spec
from clipguard.attacks import badnets  # noqa: F401  (registers "badnets")
from clipguard.attacks.poisoner import PoisonResult, poison_dataset

__all__ = ["ATTACKS", "Trigger", "get_trigger", "trigger_from_spec", "PoisonResult", "poison_dataset"]
