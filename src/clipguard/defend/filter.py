"""``clipguard filter``: drop a scan's suspects from a dataset manifest before training.

The last step of the data team's job: ``clipguard scan`` ranks every pair (higher score = more
suspicious), ``filter_manifest`` writes the manifest without the suspects. Output folder::

    out/manifest.<ext>   the kept rows, every column of the input; image paths rewritten so they
                         still point at the same files from the new folder
    out/removed.csv      the removed rows: id, <detector>_rank, <detector>_score, caption
                         (and poisoned, when the manifest has ground truth)
    out/remove_ids.parquet  the ids to remove, with rank and score (what a pipeline joins on)
    out/keep_uids.npy    DataComp-style: the kept uids, sorted, as np.dtype("u8,u8") pairs of the
                         32-hex-digit uid (written when every id is such a uid)
    out/run.json         detector, selection rule, counts, and with ground truth the share of
                         the poisoned rows removed (recall) and of the removed rows poisoned
                         (precision)

Which rows go:

* default: the scan's own budget, ``is_<detector>_suspect`` (the top ``suspect_share`` of the
  scan, 1 % unless the scan was told otherwise);
* ``share=f``: the top ``ceil(f * n_scored)`` by ``<detector>_rank``;
* ``top=n``: the top ``n`` by ``<detector>_rank``.

Rows the scan never scored (left out at embedding time: missing or unreadable image, empty
caption) are kept and counted as ``n_unscored``: the trainer skips them again with the reason.
Scores whose ids are not in the manifest mean the scan belongs to another dataset: an error.
The scan folder is read with :meth:`clipguard.detect.Scan.load` (no parsing of its own).
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from clipguard.data.manifest import Manifest, read_manifest, write_manifest
from clipguard.detect.facade import Scan
from clipguard.detect.options import DEFAULT_DETECTOR
from clipguard.errors import ConfigError
from clipguard.utils.fs import is_url
from clipguard.utils.io import atomic_path
from clipguard.utils.runrecord import RunRecord, fingerprint_files
from clipguard.utils.validate import check_int, check_real

__all__ = ["FilterResult", "filter_manifest", "datacomp_uids"]

log = logging.getLogger("clipguard")


@dataclass
class FilterResult:
    """What :func:`filter_manifest` did (the same figures are in ``run.json``)."""

    manifest_path: Path
    n_rows: int
    n_scored: int
    n_removed: int
    n_kept: int
    n_unscored: int
    removed: pd.DataFrame
    poisoned_recall: float | None = None
    poisoned_precision: float | None = None


def _check_rule(share: float | None, top: int | None) -> None:
    if share is not None and top is not None:
        raise ConfigError("give --share or --top, not both")
    if share is not None:
        check_real("share", share, low=0, high=1, low_open=True)
    if top is not None:
        check_int("top", top, minimum=0)


def _scan_scores(scan_dir: str | os.PathLike, detector: str, ids: pd.Series, manifest_path: Path) -> pd.DataFrame:
    """The score table of the scan in ``scan_dir`` (ids as strings), checked against the manifest."""
    scan = Scan.load(scan_dir)
    if detector not in scan.detectors:
        raise ConfigError(f"{scan_dir}: the scan did not run detector {detector!r}; choose one of: "
                          f"{', '.join(scan.detectors)}")
    scores = scan.scores.copy()
    scores["id"] = scores["id"].astype(str)
    unknown = ~scores["id"].isin(set(ids))
    if unknown.any():
        raise ConfigError(f"{scan_dir}: {int(unknown.sum())} of {len(scores)} scored ids are not in {manifest_path} "
                          f"(e.g. {scores['id'][unknown].iat[0]!r}); was the scan made from this manifest?")
    return scores


def _to_remove(scores: pd.DataFrame, detector: str, share: float | None, top: int | None) -> tuple[pd.Series, str]:
    """``(mask of the scored rows to remove, the rule in words)``."""
    rank_col, flag_col = f"{detector}_rank", f"is_{detector}_suspect"
    n_scored = len(scores)
    if top is not None:
        return scores[rank_col] <= int(top), f"top {int(top)} by {rank_col}"
    if share is not None:
        n = math.ceil(share * n_scored)
        return scores[rank_col] <= n, f"top {share:g} of {n_scored} scored ({n}) by {rank_col}"
    return scores[flag_col].astype(bool), f"{flag_col} (the scan's suspect budget)"


def filter_manifest(manifest: str | os.PathLike, scan_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                    detector: str = DEFAULT_DETECTOR, share: float | None = None, top: int | None = None) -> FilterResult:
    """Write ``manifest`` without the suspects of ``detector`` in ``scan_dir`` to ``out_dir``.

    The scan is read with :meth:`clipguard.detect.Scan.load`.

    Args:
        manifest: the dataset the scan was made from (its ids are matched to the scores).
        scan_dir: the output folder of ``clipguard scan`` (``scores/`` and ``run.json`` inside).
        out_dir: folder for ``manifest.<ext>`` (the input's format), ``removed.csv``, ``run.json``.
        detector: whose ranking decides (a detector the scan ran).
        share: remove the top ``ceil(share * n_scored)``; ``top``: remove the top ``top``;
            neither: remove the scan's ``is_<detector>_suspect`` rows.

    Raises:
        ConfigError: both ``share`` and ``top``, a value out of range, a folder that holds no
            scan, a detector the scan did not run, or scores that do not belong to the manifest.
        ManifestError: the manifest cannot be read.
    """
    _check_rule(share, top)
    m = read_manifest(manifest)
    ids = m.df["id"].astype(str)
    scores = _scan_scores(scan_dir, detector, ids, m.path)
    remove, rule = _to_remove(scores, detector, share, top)
    drop = ids.isin(set(scores["id"][remove])).to_numpy()
    kept = m.df[~drop].copy()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kept["image"] = [_rebase(p, m.root, out) for p in kept["image"]]
    manifest_out = write_manifest(kept.reset_index(drop=True), out / f"manifest{m.path.suffix}", sources=[m.path])

    rank_col = f"{detector}_rank"
    cols = ["id", rank_col, f"{detector}_score"]
    removed = scores.loc[remove, cols].merge(m.df[["id", "caption"] + (["poisoned"] if m.has_ground_truth else [])],
                                             on="id", how="left").sort_values(rank_col)
    with atomic_path(out / "removed.csv") as tmp:
        removed.to_csv(tmp, index=False)
    with atomic_path(out / "remove_ids.parquet") as tmp:
        removed[cols].to_parquet(tmp, index=False)
    keep = datacomp_uids(kept["id"].astype(str))
    if keep is not None:
        with atomic_path(out / "keep_uids.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, keep)

    n_unscored = int((~ids.isin(set(scores["id"]))).sum())
    if n_unscored:
        log.warning("%d manifest rows have no score (skipped when embedding); kept", n_unscored)
    res = FilterResult(manifest_out, len(m), len(scores), int(drop.sum()), len(kept), n_unscored,
                       removed.reset_index(drop=True))
    if m.has_ground_truth:
        y = m.df["poisoned"].astype(bool).to_numpy()
        res.poisoned_recall = float(drop[y].mean()) if y.any() else None
        res.poisoned_precision = float(y[drop].mean()) if drop.any() else None
    _save_record(res, m, scan_dir, detector, share, top, rule, out)
    return res


def datacomp_uids(ids: pd.Series) -> np.ndarray | None:
    """The ids as DataComp's sorted uid array (``np.dtype("u8,u8")``: the 32 hex digits of each
    uid as two 64-bit halves, sorted), or None when some id is not a 32-hex-digit uid."""
    if not len(ids) or not ids.str.fullmatch(r"[0-9a-fA-F]{32}").all():
        return None
    out = np.array([(int(u[:16], 16), int(u[16:], 16)) for u in ids], dtype=np.dtype("u8,u8"))
    out.sort()
    return out


def _save_record(res: FilterResult, manifest: Manifest, scan_dir, detector: str, share, top, rule: str,
                 out: Path) -> None:
    rec = RunRecord("filter", {"manifest": str(manifest.path), "scan_dir": str(scan_dir), "detector": detector,
                               "share": share, "top": top})
    rec["data_fingerprint"] = fingerprint_files([manifest.path])
    rec.data.update(manifest.read_counts())
    rec.data.update(rule=rule, n_rows=res.n_rows, n_scored=res.n_scored, n_removed=res.n_removed,
                    n_kept=res.n_kept, n_unscored=res.n_unscored, poisoned_recall=res.poisoned_recall,
                    poisoned_precision=res.poisoned_precision)
    rec.save(out)


def _rebase(image: str, old_root: Path, new_root: Path) -> str:
    """``image`` (relative to ``old_root``, or absolute) relative to ``new_root`` when possible (a URL is kept)."""
    if is_url(str(image)):
        return str(image)
    p = Path(str(image))
    if p.is_absolute():
        return str(p)
    target = (old_root / p).resolve()
    try:
        return os.path.relpath(target, new_root.resolve())
    except ValueError:  # another drive (Windows): keep it absolute
        return str(target)

