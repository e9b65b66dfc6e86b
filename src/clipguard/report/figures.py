"""The figures of a report, drawn with matplotlib (Agg) and returned as ``data:image/png;base64`` URIs,
so that the page is one self-contained file.

Every figure has axis labels and a title that say what is plotted; score direction is always
"higher = more suspicious".
"""
from __future__ import annotations

import base64
import io
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from clipguard.errors import ConfigError  # noqa: E402

__all__ = ["png_uri", "score_histograms", "roc_pr_curves", "embedding_map", "share_tradeoff", "thumbnail_uri",
           "MAP_POINTS", "PROJECTIONS", "UMAP_HINT"]

MAP_POINTS = 100_000
"""Above this many rows the embedding map is a density raster (with the suspects as points)."""

PROJECTIONS = ("pca", "umap")
"""How the embedding map is drawn: PCA (default, no extra dependency) or UMAP (``clipguard[umap]``)."""

UMAP_HINT = "the UMAP map needs umap-learn; install it with: pip install 'clipguard[umap]' (or use the PCA map)"

FIT_ROWS = {"pca": 20_000, "umap": 10_000}
"""Rows of the seeded sample each projection is fitted on (every row is then projected)."""


def png_uri(fig: Any) -> str:
    """The figure as a PNG data URI (the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _histogram(ax: Any, scores: np.ndarray, poisoned: np.ndarray | None, detector: str) -> None:
    """One panel: the detector's scores (log10 when they span orders of magnitude), poisoned and
    clean apart when ground truth is known."""
    s = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(s)
    with np.errstate(over="ignore"):  # capped scores (DAO's largest float64) over a tiny minimum: inf, still > 1e3
        logged = bool(finite.any() and (s[finite] > 0).all() and s[finite].max() / max(s[finite].min(), 1e-300) > 1e3)
    v = np.log10(s) if logged else s
    ok = np.isfinite(v)
    bins = np.histogram_bin_edges(v[ok], bins=50) if ok.any() else np.linspace(0, 1, 11)
    # one filled step artist per group (a bar per bin would be 50 artists to draw)
    if poisoned is not None and poisoned.any() and not poisoned.all():
        for mask, colour, label in ((~poisoned, "tab:blue", f"clean ({int((~poisoned).sum())})"),
                                    (poisoned, "tab:red", f"poisoned ({int(poisoned.sum())})")):
            h, _ = np.histogram(v[mask & ok], bins=bins, density=True)
            ax.stairs(h, bins, fill=True, alpha=0.5, color=colour, label=label)
        ax.legend(fontsize=6)
        ax.set_ylabel("density (each group sums to 1)", fontsize=7)
    else:
        h, _ = np.histogram(v[ok], bins=bins)
        ax.stairs(h, bins, fill=True, color="tab:blue")
        ax.set_ylabel("samples", fontsize=7)
    ax.set_xlabel(f"{'log10 ' if logged else ''}score (higher = more suspicious)", fontsize=7)
    ax.set_title(detector, fontsize=9)
    ax.tick_params(labelsize=6)


def score_histograms(scores: dict[str, np.ndarray], poisoned: np.ndarray | None) -> str:
    """One figure, a panel per detector: how its scores spread (poisoned vs clean with ground truth)."""
    names = list(scores)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 2.6 * rows), squeeze=False)
    fig.subplots_adjust(hspace=0.75, wspace=0.35, left=0.06, right=0.98, top=0.95, bottom=0.08)
    for ax, name in zip(axes.flat, names):
        _histogram(ax, scores[name], poisoned, name)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    return png_uri(fig)


def _curve(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, precision)`` along the ranking by descending score."""
    order = np.argsort(-scores, kind="stable")
    hits = y[order].astype(np.float64)
    tp = np.cumsum(hits)
    fp = np.cumsum(1.0 - hits)
    tpr = tp / max(tp[-1], 1.0)
    fpr = fp / max(fp[-1], 1.0)
    precision = tp / np.arange(1, len(hits) + 1)
    return fpr, tpr, precision


def roc_pr_curves(table: Any, detectors: list[str], metrics: dict | None) -> str:
    """ROC and precision-recall curves of every detector against the ground truth (``poisoned``)."""
    y = table["poisoned"].to_numpy().astype(bool)
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.4, 3.4))
    fig.subplots_adjust(wspace=0.3, bottom=0.16)
    for det in detectors:
        fpr, tpr, precision = _curve(np.nan_to_num(table[f"{det}_score"].to_numpy(np.float64), nan=-np.inf), y)
        m = (metrics or {}).get(det, {})
        a.plot(fpr, tpr, label=f"{det} (AUROC {m.get('auroc', float('nan')):.3f})", lw=1)
        b.plot(tpr, precision, label=f"{det} (AUPRC {m.get('auprc', float('nan')):.3f})", lw=1)
    a.plot([0, 1], [0, 1], ls=":", c="grey", lw=0.8)
    a.set_xlabel("false positive rate (clean samples flagged)")
    a.set_ylabel("true positive rate (poison flagged)")
    a.set_title("ROC", fontsize=9)
    b.set_xlabel("recall (share of the poison found)")
    b.set_ylabel("precision (share of flagged that is poison)")
    b.set_title("precision-recall", fontsize=9)
    for ax in (a, b):
        ax.legend(fontsize=6)
    return png_uri(fig)


def share_tradeoff(curve: Any, estimate: dict[str, Any]) -> str:
    """How much to drop: precision (and, with ground truth, recall) against the share of the top-ranked rows
    removed (log x axis, both in percent), a vertical line at the estimated poisoned share and its interval
    shaded.

    Args:
        curve: the trade-off curve of a scan (``tradeoff.csv``: ``share_removed``, ``expected_precision``, and
            with ground truth ``precision``, ``recall``; shares in [0, 1]), rows by increasing share.
        estimate: the scan's ``share_estimate`` (``share``, ``low``, ``high``, ``level``, ``n_estimated``,
            ``detector``).
    """
    x = 100 * np.asarray(curve["share_removed"], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    fig.subplots_adjust(left=0.11, bottom=0.36, right=0.97, top=0.93)
    ax.plot(x, 100 * np.asarray(curve["expected_precision"], dtype=np.float64), marker="o", ms=3, lw=1.5,
            color="tab:blue", label="expected precision: share of the removed that is poison (estimated)")
    if "precision" in curve.columns:
        ax.plot(x, 100 * np.asarray(curve["precision"], dtype=np.float64), marker="s", ms=3, lw=1, ls="--",
                color="tab:red", label="measured precision (ground truth)")
    if "recall" in curve.columns:
        ax.plot(x, 100 * np.asarray(curve["recall"], dtype=np.float64), marker="^", ms=3, lw=1, ls=":",
                color="tab:green", label="measured recall: share of the poison removed (ground truth)")
    share, low, high = (100 * float(estimate.get(k, 0.0)) for k in ("share", "low", "high"))
    left, right = (float(x.min()) / 1.5, float(x.max()) * 1.5) if len(x) else (0.05, 50.0)
    ax.set_xscale("log")
    if high > 0:
        ax.axvspan(max(low, left), high, color="tab:orange", alpha=0.15,
                   label=f"{float(estimate.get('level', 0.95)):.0%} interval of the share [{low:.2f}%, {high:.2f}%]")
    if share > 0:
        ax.axvline(share, color="tab:orange", lw=1.5,
                   label=f"estimated poisoned share {share:.2f}% ({int(estimate.get('n_estimated', 0))} rows)")
    ax.set_xlim(left, right)
    ticks = [t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100) if left <= t <= right]
    ax.xaxis.set_major_locator(ticker.FixedLocator(ticks))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_ylim(-3, 105)
    ax.set_xlabel("share of the data removed, top-ranked first (log scale)")
    ax.set_ylabel("precision / recall (%)")
    who = str(estimate.get("detector") or "the scores").replace("$", r"\$")
    ax.set_title(f"how much to drop: ranking by {who}" + ("" if share > 0 else " (estimated share 0%)"), fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=1, frameon=False)
    return png_uri(fig)


def _pca(x: np.ndarray, fit_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, components)`` (2, d) of a PCA fitted on ``x[fit_rows]``."""
    xs = x[fit_rows].astype(np.float64)
    mean = xs.mean(axis=0)
    _, _, vt = np.linalg.svd(xs - mean, full_matrices=False)
    return mean, vt[:2]


def _projector(method: str, sample: np.ndarray, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """A function ``(m, d) unit rows -> (m, 2)`` fitted on ``sample`` (PCA, or UMAP with cosine distance)."""
    if method == "pca":
        mean, comp = _pca(sample, np.arange(len(sample)))
        return lambda x: (x - mean) @ comp.T
    if method != "umap":
        raise ConfigError(f"unknown map projection {method!r}; choose from: {', '.join(PROJECTIONS)}")
    try:
        import umap  # noqa: PLC0415 - an optional third-party dependency, imported only when asked for
    except ImportError:
        raise ConfigError(UMAP_HINT) from None
    reducer = umap.UMAP(n_components=2, metric="cosine", random_state=seed)
    reducer.fit(sample)
    return lambda x: np.asarray(reducer.transform(x), dtype=np.float64)


def embedding_map(read_rows: Any, n: int, suspects: np.ndarray, poisoned: np.ndarray | None, *,
                  seed: int = 0, max_points: int = MAP_POINTS, chunk: int = 65536, projection: str = "pca") -> str:
    """2-D map of the image embeddings, PCA (fitted on a seeded sample of 20,000 rows) or UMAP (10,000
    rows; ``clipguard[umap]``), every row projected in chunks: a scatter up to ``max_points`` rows, a
    density raster beyond; the suspects (and, with ground truth, the poisoned rows) drawn on top.

    Args:
        read_rows: ``rows -> (len(rows), d)`` embeddings (normalised here).
        n: rows; ``suspects``, ``poisoned``: (n,) bool masks.
        projection: ``"pca"`` or ``"umap"`` (:data:`PROJECTIONS`).

    Raises:
        ConfigError: an unknown projection, or UMAP asked for without umap-learn installed.
    """
    rng = np.random.default_rng(seed)
    fit = np.sort(rng.choice(n, min(n, FIT_ROWS.get(projection, 20_000)), replace=False))
    project = _projector(projection, _unit(read_rows(fit)), seed)
    xy = np.empty((n, 2))
    for s in range(0, n, chunk):
        rows = np.arange(s, min(s + chunk, n))
        xy[rows] = project(_unit(read_rows(rows)))
    fig, ax = plt.subplots(figsize=(6.2, 4.6))
    fig.subplots_adjust(left=0.12, bottom=0.12)
    if n > max_points:
        h = ax.hexbin(xy[:, 0], xy[:, 1], gridsize=120, bins="log", cmap="Greys", mincnt=1)
        fig.colorbar(h, ax=ax, label="samples per cell (log)")
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=3, c="lightgrey", label="all samples", rasterized=True)
    if poisoned is not None and poisoned.any():
        ax.scatter(xy[poisoned, 0], xy[poisoned, 1], s=8, facecolors="none", edgecolors="tab:red", lw=0.6,
                   label=f"poisoned (ground truth, {int(poisoned.sum())})")
    ax.scatter(xy[suspects, 0], xy[suspects, 1], s=6, c="tab:blue", label=f"suspects ({int(suspects.sum())})")
    if projection == "pca":
        ax.set_xlabel("principal component 1 of the image embeddings")
        ax.set_ylabel("principal component 2")
    else:
        ax.set_xlabel("UMAP 1 of the image embeddings (cosine)")
        ax.set_ylabel("UMAP 2")
    ax.set_title(f"embedding map, {projection.upper()} ({n:,} samples{', density' if n > max_points else ''})",
                 fontsize=9)
    ax.legend(fontsize=7, markerscale=2)
    return png_uri(fig)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def thumbnail_uri(image: Image.Image, size: int = 112) -> str:
    """A PNG data URI of ``image`` shrunk to fit ``size`` x ``size``."""
    im = image.convert("RGB")
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
