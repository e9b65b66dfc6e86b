"""The CA / ASR before-and-after table of a model repair (``clipguard defend``, ``clipguard heads repair``).

Both commands write ``before`` and ``after`` evaluation records (``clean_accuracy``, and with an attack
``attack_success_rate``, ``n_test``, ``n_asr``, ``target``, ``asr_convention``) and
``ca_change`` (points) / ``asr_reduction`` (1 - ASR_after / ASR_before) into ``run.json``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clipguard.report.common import pct
from clipguard.report.model_figures import before_after_bars

__all__ = ["BeforeAfter", "before_after", "ASR_CONVENTION"]

ASR_CONVENTION = ("ASR = share of triggered test images whose true class is not the target that are classified "
                  "as the target")
"""The convention of every ASR clipguard reports (used when a record does not state its own)."""


@dataclass
class BeforeAfter:
    """One table: ``rows`` of ``{"metric", "meaning", "before", "after", "change"}`` (formatted text),
    the evaluation's sizes and target, the ASR convention, and the bar figure (a data URI)."""

    rows: list[dict[str, str]]
    figure: str
    n_test: Any = None
    n_asr: Any = None
    target: str | None = None
    convention: str = ASR_CONVENTION
    notes: list[str] = field(default_factory=list)


def _points(before: Any, after: Any) -> str:
    if not isinstance(before, (int, float)) or not isinstance(after, (int, float)):
        return "n/a"
    return f"{100 * (after - before):+.1f} points"


def before_after(run: dict[str, Any]) -> BeforeAfter | None:
    """The table of ``run`` (a ``run.json`` dict); None when it holds no ``before``/``after`` evaluation."""
    before, after = run.get("before"), run.get("after")
    if not isinstance(before, dict) or not isinstance(after, dict):
        return None
    rows = [{"metric": "clean accuracy (CA)",
             "meaning": "share of the clean test images classified correctly (zero-shot); higher is better",
             "before": pct(before.get("clean_accuracy")), "after": pct(after.get("clean_accuracy")),
             "change": _points(before.get("clean_accuracy"), after.get("clean_accuracy"))}]
    if before.get("attack_success_rate") is not None or after.get("attack_success_rate") is not None:
        b, a = before.get("attack_success_rate"), after.get("attack_success_rate")
        red = run.get("asr_reduction")
        rows.append({"metric": "attack success rate (ASR)",
                     "meaning": "share of the triggered test images (true class not the target) classified as the "
                                "target; lower is better",
                     "before": pct(b), "after": pct(a),
                     "change": _points(b, a) + (f" (relative reduction {pct(red)})"
                                                if isinstance(red, (int, float)) else "")})
    notes = []
    if isinstance(run.get("asr_reduction"), (int, float)):
        notes.append("relative reduction = 1 - ASR after / ASR before (the papers' figure; negative = the ASR rose)")
    return BeforeAfter(rows, before_after_bars(before, after), n_test=after.get("n_test"), n_asr=after.get("n_asr"),
                       target=after.get("target"), convention=str(after.get("asr_convention") or ASR_CONVENTION),
                       notes=notes)
