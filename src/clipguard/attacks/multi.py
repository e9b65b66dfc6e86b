"""Multi-trigger attack: each poisoned sample gets one of several triggers.

With ``targets=None`` all triggers share the poisoner's target; with a list, trigger ``j`` maps
to ``targets[j]`` (one target per trigger). The poisoner assigns triggers to poisoned rows in
equal shares (a seeded shuffle); at test time :meth:`MultiTrigger.apply` needs ``which``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from clipguard.attacks.base import ATTACKS, Trigger, trigger_from_spec
from clipguard.errors import ConfigError

__all__ = ["MultiTrigger"]

_DEFAULT_MEMBERS = [{"attack": "badnets", "params": {"size": 8, "cell": 2}},
                    {"attack": "blended", "params": {"alpha": 0.2}}]


@ATTACKS.register("multi")
class MultiTrigger(Trigger):
    """Several triggers in one attack.

    Args:
        triggers: trigger specs, e.g. ``[{"attack": "badnets", "params": {"size": 8}}, {"attack": "sig"}]``.
        targets: ``None`` (one shared target) or one target class name per trigger.
    """

    def __init__(self, triggers: list[dict[str, Any]] | None = None, targets: list[str] | None = None) -> None:
        triggers = triggers or [dict(t) for t in _DEFAULT_MEMBERS]
        if not isinstance(triggers, list) or not all(isinstance(t, dict) for t in triggers):
            raise ConfigError('multi: triggers must be a list of trigger specs, e.g. '
                              '[{"attack": "badnets", "params": {"size": 8}}, {"attack": "sig"}]')
        if len(triggers) < 2:
            raise ConfigError("multi: give at least two triggers")
        if any(t.get("attack") == "multi" for t in triggers):
            raise ConfigError("multi: triggers cannot be nested")
        if targets is not None:
            if not isinstance(targets, list) or not all(isinstance(t, str) and t.strip() for t in targets):
                raise ConfigError(f'multi: targets must be a list of class names, e.g. ["star", "ring"], not {targets!r}')
            if len(targets) != len(triggers):
                raise ConfigError(f"multi: {len(targets)} targets for {len(triggers)} triggers; give one per trigger "
                                  "or none")
        self.triggers, self.targets = triggers, targets
        self.members = [trigger_from_spec(t) for t in triggers]

    def target_of(self, j: int, default: str) -> str:
        """The target of member ``j`` (``default``: the poisoner's target when targets are shared)."""
        return self.targets[j] if self.targets is not None else default

    def apply(self, image: np.ndarray, *, seed: int = 0, test: bool = False, which: int = 0) -> np.ndarray:
        """Apply member trigger ``which``."""
        return self.members[which].apply(image, seed=seed, test=test)

    def member_name(self, j: int) -> str:
        """``multi:<j>:<member name>``, the ``trigger`` ground-truth value of member ``j``'s rows."""
        return f"multi:{j}:{self.members[j].name}"
