"""``clipguard report``: one self-contained HTML page of a scan, to look at rather than read logs.

The page (no CDN, no script; images inlined as base64 PNG; every text from the data -- captions
are untrusted web text -- escaped by Jinja2's autoescape) shows: what ran (configuration, package
versions, seconds per stage, the reference plan and why), the detection metrics when ground truth
exists, the top suspects as a thumbnail grid with caption, score, rank and the detectors that flag
each, score histograms per detector (poisoned vs clean with ground truth), ROC and
precision-recall curves, a 2-D PCA map of the image embeddings with the suspects highlighted
(a density raster beyond 100,000 points), the clusters of ``clipguard discover`` when it ran, and
"How much to drop": the poisoned share estimated from the scores (``run.json``'s ``share_estimate``,
:mod:`clipguard.detect.share`) with its interval, the trade-off curve (``tradeoff.csv``) as a table and
a figure, or one sentence why there is none (a scan written before the estimate existed, or a set too
small to estimate).

Thumbnails obey the roots of the embedded manifest (:mod:`clipguard.data.roots`: its folder, the
sources of a derived manifest, the folders a user allows): an image outside them is never inlined
(the tile shows "no image", a warning names it), whatever the embedding was allowed to read.

Example::

    from clipguard.report import build_scan_report

    build_scan_report("scan", "scan/report.html")      # then open it in any browser, offline
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from clipguard.data.dataset import load_rgb
from clipguard.data.roots import OutsideRootError, confine, dataset_roots, user_roots
from clipguard.detect.store import TRADEOFF_FILE, default_detector, read_scan
from clipguard.errors import ConfigError
from clipguard.io.rows import EmbeddingRows
from clipguard.report.common import render, write_page
from clipguard.report.figures import (MAP_POINTS, PROJECTIONS, UMAP_HINT, embedding_map, roc_pr_curves,
                                      score_histograms, share_tradeoff, thumbnail_uri)
from clipguard.utils.fs import is_url

__all__ = ["build_scan_report", "Suspect"]

log = logging.getLogger("clipguard")


@dataclass
class Suspect:
    """One tile of the suspect grid."""

    rank: int
    id: str
    caption: str
    score: float
    image: str | None
    flagged_by: list[str] = field(default_factory=list)
    poisoned: bool | None = None


def _find(path: str | None, near: Path) -> Path | None:
    """``path`` as written in a run.json (maybe relative to where that command ran): as it is, or
    relative to ``near`` and its parents."""
    if not path:
        return None
    p = Path(path)
    for cand in [p, *[base / p for base in [near, *near.parents][:4]]]:
        if cand.exists():
            return cand
    return None


def _image_root(emb: Path | None) -> tuple[Path | None, tuple[Path, ...]]:
    """The folder the embedding metadata's image paths are relative to (the embedded manifest's), and the
    folders its images may lie in: the roots the manifest has when it is read
    (:func:`clipguard.data.roots.dataset_roots`; the user's roots alone when the manifest is not found)."""
    try:
        manifest = json.loads((emb / "run.json").read_text())["config"].get("manifest") if emb else None
    except (OSError, ValueError, KeyError):
        manifest = None
    found = _find(manifest, emb) if manifest else None
    if found is None:
        return None, user_roots()
    return found.parent, dataset_roots(found.parent, found)


def _thumbnail(image: Any, root: tuple[Path | None, tuple[Path, ...]]) -> str | None:
    """The thumbnail of a metadata ``image`` entry (``root``: :func:`_image_root`); None for no image, one
    that cannot be read, or one outside the dataset's roots (never inlined)."""
    if not isinstance(image, str) or not image:
        return None
    folder, roots = root
    path: Any = image if is_url(image) or Path(image).is_absolute() or folder is None else folder / image
    try:
        path = confine(path, roots)
    except OutsideRootError as exc:
        log.warning("report: not inlined, %s", exc)
        return None
    try:
        return thumbnail_uri(load_rgb(path))
    except Exception:  # noqa: BLE001 - a missing/unreadable image is shown as "no image"
        return None


def _suspects(table: pd.DataFrame, meta: pd.DataFrame | None, detectors: list[str], det: str, top: int,
              root: tuple[Path | None, tuple[Path, ...]]) -> list[Suspect]:
    rows = table.nsmallest(top, f"{det}_rank").index
    out = []
    for i in rows:
        cap = meta["caption"].iat[i] if meta is not None and "caption" in meta.columns else ""
        img = meta["image"].iat[i] if meta is not None and "image" in meta.columns else None
        out.append(Suspect(int(table[f"{det}_rank"].iat[i]), str(table["id"].iat[i]), str(cap),
                           float(table[f"{det}_score"].iat[i]), _thumbnail(img, root),
                           [d for d in detectors if bool(table[f"is_{d}_suspect"].iat[i])],
                           bool(table["poisoned"].iat[i]) if "poisoned" in table.columns else None))
    return out


def _rows_of(run: dict[str, Any], scan_dir: Path, n: int) -> EmbeddingRows | None:
    emb = _find(run["config"].get("emb_dir"), scan_dir)
    if emb is None:
        log.warning("the embedding folder of %s was not found; the report has no map and no thumbnails", scan_dir)
        return None
    rows = EmbeddingRows(emb)
    if len(rows) != n:
        log.warning("the embedding folder %s has %d rows but the scan %s scored %d (it changed since); the report "
                    "has no map and no thumbnails", emb, len(rows), scan_dir, n)
        return None
    return rows


def _figures(table: pd.DataFrame, run: dict, detectors: list[str], det: str, rows: EmbeddingRows | None,
             max_map_points: int, seed: int, projection: str) -> dict[str, Any]:
    poisoned = table["poisoned"].to_numpy().astype(bool) if "poisoned" in table.columns else None
    figs: dict[str, Any] = {"histograms": score_histograms({d: table[f"{d}_score"].to_numpy() for d in detectors},
                                                           poisoned)}
    if poisoned is not None and poisoned.any() and not poisoned.all():
        figs["curves"] = roc_pr_curves(table, detectors, run.get("detection"))
    if rows is not None:
        figs["map"] = embedding_map(rows.image, len(rows), table[f"is_{det}_suspect"].to_numpy(bool), poisoned,
                                    seed=seed, max_points=max_map_points, projection=projection)
    return figs


def _clusters(scan_dir: Path) -> list[dict[str, Any]] | None:
    path = scan_dir / "discover" / "clusters.parquet"
    if not path.is_file():
        return None
    keep = ["rank", "kind", "name", "size", "share", "mean_score", "tightness", "caption_agreement",
            "planted_share", "poisoned_share"]
    df = pd.read_parquet(path)
    return df[[c for c in keep if c in df.columns]].head(20).to_dict("records")


_CURVE_COLUMNS = ("share_removed", "n_removed", "is_estimate", "expected_precision", "expected_recall",
                  "clean_lost_share")
"""The columns of ``tradeoff.csv`` the section needs (``precision`` and ``recall`` too when measured)."""


def _share(run: dict[str, Any], scan_dir: Path) -> dict[str, Any]:
    """The "How much to drop" section: ``{"estimate", "rows", "measured", "figure"}`` from ``run["share_estimate"]``
    and ``scan_dir/tradeoff.csv``, or ``{"missing": sentence}`` when the scan has no estimate (an older scan, or
    one that recorded why it skipped it); ``rows`` empty (and ``curve_missing`` a sentence) when the curve is
    missing or unreadable."""
    est = run.get("share_estimate")
    if not isinstance(est, dict):
        return {"missing": "This scan records no estimate of the poisoned share: it was written by a clipguard "
                           "version that did not estimate it; rerun `clipguard scan` to get one."}
    if "skipped" in est or not isinstance(est.get("share"), (int, float)):
        why = est.get("skipped") or "the record is incomplete"
        return {"missing": f"The scan did not estimate the poisoned share from {est.get('detector') or 'its'} "
                           f"scores: {why}."}
    out: dict[str, Any] = {"estimate": est, "rows": [], "measured": False, "figure": None, "curve_missing": None}
    path = scan_dir / TRADEOFF_FILE
    try:
        curve = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        log.warning("report: the trade-off curve %s was not read (%s)", path, exc)
        out["curve_missing"] = f"The trade-off curve ({TRADEOFF_FILE}) of this scan was not found or not readable."
        return out
    lacking = [c for c in _CURVE_COLUMNS if c not in curve.columns]
    if lacking:
        out["curve_missing"] = f"The trade-off curve ({TRADEOFF_FILE}) lacks the column(s) {', '.join(lacking)}."
        return out
    curve = curve.sort_values("share_removed", kind="stable").reset_index(drop=True)
    out["measured"] = {"precision", "recall"} <= set(curve.columns)
    out["rows"] = curve.to_dict("records")
    out["figure"] = share_tradeoff(curve, est)
    return out


def build_scan_report(scan_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
                      detector: str | None = None, top: int = 48, max_map_points: int = MAP_POINTS,
                      seed: int = 0, projection: str = "pca") -> Path:
    """Write the HTML report of the scan in ``scan_dir`` (see the module docstring).

    Args:
        scan_dir: the output folder of ``clipguard scan`` (``scores/``, ``run.json``).
        out: the HTML file (default ``scan_dir/report.html``).
        detector: whose ranking the suspect grid and the map follow (default: the scan's default).
        top: suspects in the grid.
        max_map_points: above this many rows the map is a density raster.
        seed: the map's sample (and UMAP's seed).
        projection: the embedding map's ``"pca"`` (default) or ``"umap"`` (needs ``clipguard[umap]``).

    Returns:
        The path of the page.

    Raises:
        ConfigError: ``scan_dir`` holds no scan, or ``detector`` did not run in it; an unknown projection, or
            ``"umap"`` without umap-learn (the message says how to install it).
    """
    t0 = time.perf_counter()
    if projection not in PROJECTIONS:
        raise ConfigError(f"unknown map projection {projection!r}; choose from: {', '.join(PROJECTIONS)}")
    if projection == "umap" and importlib.util.find_spec("umap") is None:
        raise ConfigError(UMAP_HINT)
    scan_dir = Path(scan_dir)
    saved = read_scan(scan_dir)
    run, table = saved.run, saved.table.reset_index(drop=True)
    detectors = list(run["detectors"])
    det = detector or run.get("default_detector") or default_detector(detectors)
    if det not in detectors:
        raise ConfigError(f"detector {det!r} did not run in {scan_dir}; choose from: {', '.join(detectors)}")
    rows = _rows_of(run, scan_dir, len(table))
    meta = rows.metadata(["caption", "image"]) if rows is not None else None
    root = _image_root(rows.root if rows is not None and isinstance(rows.root, Path) else None)
    page = render(
        "scan.html.j2", title=f"clipguard scan report: {scan_dir}", run=run, detectors=detectors, detector=det,
        n=len(table), suspects=_suspects(table, meta, detectors, det, top, root),
        figures=_figures(table, run, detectors, det, rows, max_map_points, seed, projection),
        clusters=_clusters(scan_dir), metrics=run.get("detection"), projection=projection,
        share=_share(run, scan_dir))
    path = write_page(Path(out) if out is not None else scan_dir / "report.html", page, scan_dir, t0)
    return path


