"""The figures of the model-level reports (defend, heads repair, audit), as PNG data URIs.

Every figure labels its axes and writes its numbers on the bars. Names drawn in a figure (class names,
cluster captions) are untrusted text: :func:`plain` keeps matplotlib from reading them as mathtext.
"""
from __future__ import annotations

from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from clipguard.report.figures import png_uri  # noqa: E402

__all__ = ["before_after_bars", "loss_curves", "candidate_bars", "plain"]


def plain(text: Any, width: int = 28) -> str:
    """``text`` as literal figure text: ``$`` escaped (no mathtext), cut to ``width`` characters."""
    s = " ".join(str(text).split())
    s = s if len(s) <= width else s[: width - 1] + "…"
    return s.replace("$", r"\$")


def _bar_labels(ax: Any, bars: Any, values: Sequence[float | None]) -> None:
    for bar, v in zip(bars, values):
        if v is not None:
            ax.annotate(f"{100 * v:.1f}%", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")


def before_after_bars(before: dict[str, Any], after: dict[str, Any]) -> str:
    """Grouped bars of clean accuracy (CA) and attack success rate (ASR), in percent, before and after.

    Args:
        before, after: evaluation records with ``clean_accuracy`` and (when an attack was given)
            ``attack_success_rate``, both shares in [0, 1]. ASR: lower = the backdoor works less.
    """
    metrics = [("clean accuracy (CA)", "clean_accuracy"), ("attack success rate (ASR)", "attack_success_rate")]
    metrics = [(label, key) for label, key in metrics if before.get(key) is not None or after.get(key) is not None]
    x = np.arange(len(metrics))
    fig, ax = plt.subplots(figsize=(4.8, 3.2))
    fig.subplots_adjust(bottom=0.15, left=0.14)
    for offset, (name, rec, colour) in zip((-0.2, 0.2), (("before", before, "tab:grey"),
                                                         ("after", after, "tab:blue"))):
        values = [rec.get(key) for _, key in metrics]
        bars = ax.bar(x + offset, [100 * (v or 0.0) for v in values], width=0.38, color=colour, label=name)
        _bar_labels(ax, bars, values)
    ax.set_xticks(x, [label for label, _ in metrics], fontsize=8)
    ax.set_ylabel("% of the test images")
    ax.set_ylim(0, 120)
    ax.set_title("before and after (CA: higher is better; ASR: lower is better)", fontsize=8)
    ax.legend(fontsize=7, loc="upper center", ncol=2)
    return png_uri(fig)


def loss_curves(history: Sequence[dict[str, Any]]) -> str | None:
    """The mean training loss per epoch: the total (``loss``) and every term (``loss_<term>``); None
    without a history."""
    rows = [h for h in history if isinstance(h, dict) and "epoch" in h and "loss" in h]
    if not rows:
        return None
    epochs = [int(h["epoch"]) for h in rows]
    fig, ax = plt.subplots(figsize=(4.8, 3.2))
    fig.subplots_adjust(bottom=0.15, left=0.14)
    ax.plot(epochs, [h["loss"] for h in rows], marker="o", lw=1.5, color="black", label="total")
    for key in [k for k in rows[0] if k.startswith("loss_")]:
        ax.plot(epochs, [h.get(key, np.nan) for h in rows], marker=".", lw=1, label=plain(key[len("loss_"):]))
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean training loss over the epoch")
    ax.set_xticks(epochs)
    ax.set_title("training loss of the defence", fontsize=9)
    ax.legend(fontsize=7)
    return png_uri(fig)


def candidate_bars(targets: Sequence[str], mask_l1: Sequence[float], anomaly: Sequence[float],
                   threshold: float | None, closest: int) -> str:
    """Two panels over the audit's candidate targets: the reversed mask size (L1, share of the image;
    smaller = easier to reach = more suspicious) and the anomaly index (higher = more suspicious) with
    the verdict's threshold (when given); ``closest`` (an index) in red."""
    names = [plain(t, 24) for t in targets]
    y = np.arange(len(names))
    colours = ["tab:red" if i == closest else "tab:blue" for i in range(len(names))]
    height = 1.3 + 0.28 * len(names)  # inches: 0.85 for the two-line axis labels, 0.15 above
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.4, height), sharey=True)
    fig.subplots_adjust(left=0.22, right=0.98, wspace=0.08, bottom=0.85 / height, top=1 - 0.15 / height)
    a.barh(y, mask_l1, color=colours)
    a.set_yticks(y, names, fontsize=7)
    a.invert_yaxis()
    a.set_xlabel("mask L1 (share of the image; smaller = more suspicious)", fontsize=7)
    b.barh(y, anomaly, color=colours)
    label = "anomaly index (higher = more suspicious)"
    if threshold is not None:
        b.axvline(threshold, ls="--", c="black", lw=1)
        label += f"\ndashed: the verdict's threshold {threshold:.3g}"
    b.set_xlabel(label, fontsize=7)
    for ax in (a, b):
        ax.tick_params(labelsize=7)
    return png_uri(fig)
