"""Caption templates: the one source of the prompt wording used across the package.

``DEFAULT_TEMPLATES`` are the embedded world's zero-shot prompts. The same tuple makes dirty-label
poison captions (:func:`clipguard.attacks.poison_dataset`, ``clipguard poison``), is written into
the world's ``classes.json`` and is the fallback of a ``classes.json`` without ``templates``, so a
poisoned caption and the zero-shot classifier that measures the attack speak the same way.

Example:
    >>> from clipguard.data.templates import DEFAULT_TEMPLATES, fill_templates
    >>> fill_templates(DEFAULT_TEMPLATES[:2], "star")
    ['a photo of a star.', 'a picture of a star.']
"""
from __future__ import annotations

from typing import Sequence

from clipguard.errors import ConfigError

__all__ = ["DEFAULT_TEMPLATES", "check_templates", "fill_templates"]

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a drawing of a {}.",
    "a {} shape.",
)
"""Zero-shot prompt templates, one ``{}`` each where the class name goes."""


def check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    """Return ``templates`` as a tuple; ConfigError when it is empty or a template lacks ``{}``."""
    out = tuple(str(t) for t in templates)
    if not out:
        raise ConfigError("no caption templates given; pass at least one, e.g. 'a photo of a {}.'")
    bad = [t for t in out if "{}" not in t]
    if bad:
        raise ConfigError(f"caption template {bad[0]!r} has no '{{}}' where the class name goes")
    return out


def fill_templates(templates: Sequence[str], name: str) -> list[str]:
    """Every template with ``name`` put in its ``{}``."""
    return [t.format(name) for t in check_templates(templates)]
