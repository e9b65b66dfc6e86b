"""Option validation written once: every public function and config class checks its numbers here.

Each check returns the value as a plain Python number (so it is JSON-ready for ``run.json``) or
raises :class:`~clipguard.errors.ConfigError` with a one-line message that names the option, the
allowed range and the value received.

Example:
    >>> from clipguard.utils.validate import check_int, check_choice
    >>> check_int("k", 16, minimum=1)
    16
    >>> check_choice("reference", "batch", ("global", "batch"))
    'batch'
    >>> check_int("k", 0, minimum=1)
    Traceback (most recent call last):
    ...
    clipguard.errors.ConfigError: k must be an integer >= 1, got 0
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from clipguard.errors import ConfigError

__all__ = ["is_int", "is_real", "check_int", "check_optional_int", "check_real", "check_choice",
           "check_known_keys"]


def is_int(v: Any) -> bool:
    """True for Python/NumPy integers (not bools)."""
    return not isinstance(v, bool) and isinstance(v, (int, np.integer))


def is_real(v: Any) -> bool:
    """True for Python/NumPy integers and floats (not bools)."""
    return not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating))


def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None,
              hint: str = "") -> int:
    """``value`` as an int within ``[minimum, maximum]``; ConfigError otherwise.

    ``hint`` is appended to the message (e.g. why the bound exists).
    """
    ok = is_int(value) and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        if minimum is not None and maximum is not None:
            rng = f" in [{minimum}, {maximum}]"
        elif minimum is not None:
            rng = f" >= {minimum}"
        elif maximum is not None:
            rng = f" <= {maximum}"
        else:
            rng = ""
        raise ConfigError(f"{name} must be an integer{rng}{hint}, got {value!r}")
    return int(value)


def check_optional_int(name: str, value: Any, *, minimum: int | None = None,
                       maximum: int | None = None) -> int | None:
    """Like :func:`check_int`, but None passes through (meaning "the default")."""
    if value is None:
        return None
    ok = is_int(value) and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ConfigError(f"{name} must be an integer{bound} or None, got {value!r}")
    return int(value)


def check_real(name: str, value: Any, *, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float within the interval; open ends with ``low_open`` / ``high_open``.

    ``check_real("rate", r, low=0, high=1, low_open=True, high_open=True)`` accepts (0, 1).
    """
    ok = is_real(value) and np.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        raise ConfigError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``; ConfigError naming them otherwise."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")
    return value


def check_known_keys(what: str, given: Mapping[str, Any] | Iterable[str], valid: Iterable[str]) -> None:
    """ConfigError when ``given`` has a key not in ``valid``; the message lists the valid ones.

    ``check_known_keys("parameter of detector 'fused'", {"methd": 1}, ["method", "image"])``
    -> ``unknown parameter of detector 'fused' 'methd'; valid: image, method``.
    """
    valid = tuple(valid)
    unknown = [k for k in given if k not in valid]
    if unknown:
        names = ", ".join(repr(u) for u in unknown)
        raise ConfigError(f"unknown {what} {names}; valid: {', '.join(sorted(valid)) or '(none)'}")
