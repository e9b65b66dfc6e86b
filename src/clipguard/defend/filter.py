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
    out/skipped.csv      the lines the manifest's reader left out (row -1, id, reason; when there is
                         one; ``run.json`` counts them: ``rows_skipped_when_read``, ``read_skip_counts``)

Which rows go (one rule; the run records it with its reason):

* ``share="auto"`` (default): from the poisoned share estimated from the detector's scores
  (:func:`clipguard.detect.share.estimate_share`: tail excess over a null for the clean rows, no ground
  truth), the largest top cut whose EXPECTED precision is still >= 0.5
  (:func:`~clipguard.detect.share.precision_cut`; Storey's adaptive Benjamini-Hochberg at FDR 0.5);
  0 rows when no excess is found;
* ``share="estimate"``: exactly as many top rows as the estimate (``n_estimated``);
* ``fdr=q``: the Benjamini-Hochberg cut at false-discovery rate q on the same null's p-values;
* ``null`` (with the three rules above): ``"envelope"`` (default), a bound on the clean tail, or ``"gamma"``,
  a Gamma fitted to the bulk (:mod:`clipguard.detect.share` says when each is right);
* ``share=f``: the top ``ceil(f * n_scored)`` by ``<detector>_rank``;
* ``top=n``: the top ``n`` by ``<detector>_rank``;
* ``share="suspects"``: the scan's own budget, ``is_<detector>_suspect`` (the top ``suspect_share``
  of the scan, 1 % unless the scan was told otherwise).

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

from clipguard.data.dataset import SkipLog
from clipguard.data.manifest import Manifest, read_manifest, write_manifest
from clipguard.detect.facade import Scan
from clipguard.detect.store import default_detector
from clipguard.detect.share import DEFAULT_NULL, NULLS, ShareEstimate, bh_cut, estimate_share, null_pvalues, precision_cut
from clipguard.errors import ConfigError
from clipguard.utils.fs import is_url
from clipguard.utils.io import atomic_path
from clipguard.utils.runrecord import RunRecord, fingerprint_files
from clipguard.utils.validate import check_choice, check_int, check_real

__all__ = ["FilterResult", "filter_manifest", "datacomp_uids", "SHARE_RULES"]

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
    rule: str = ""
    reason: str = ""
    share_estimate: ShareEstimate | None = None
    detector: str = ""


SHARE_RULES = ("auto", "estimate", "suspects")
"""The named values of ``share`` (besides a fraction in (0, 1])."""


AUTO_MIN_PRECISION = 0.5
"""``share="auto"`` removes top rows while their expected precision is at least this (expected FDR 0.5)."""


def _check_rule(share: float | str | None, top: int | None, fdr: float | None) -> float | str | None:
    """The one rule given (``share`` as a float, ``"auto"`` or ``"suspects"``; None when ``top``/``fdr`` decide)."""
    if isinstance(share, str) and share not in SHARE_RULES:
        try:
            share = float(share)
        except ValueError:
            raise ConfigError(f"--share must be a fraction in (0, 1], 'auto', 'estimate' or 'suspects', got "
                              f"{share!r}") from None
    given = [n for n, v in (("--top", top), ("--fdr", fdr)) if v is not None]
    if share not in (None, "auto") and given:
        given.insert(0, "--share")
    if len(given) > 1:
        raise ConfigError(f"give one of --share, --top, --fdr, not {' and '.join(given)}")
    if given:
        share = None
    if isinstance(share, float | int) and not isinstance(share, bool):
        check_real("share", share, low=0, high=1, low_open=True)
    if top is not None:
        check_int("top", top, minimum=0)
    if fdr is not None:
        check_real("fdr", fdr, low=0, high=1, low_open=True, high_open=True)
    return share


def _scan_scores(scan_dir: str | os.PathLike, detector: str | None, ids: pd.Series, manifest_path: Path
                 ) -> tuple[pd.DataFrame, int, str]:
    """``(the score table of the scan in scan_dir (ids as strings), checked against the manifest; the scan's seed;
    the detector: the one given, or the scan's default ranking)``."""
    scan = Scan.load(scan_dir)
    detector = detector or default_detector(scan.detectors)
    if detector not in scan.detectors:
        raise ConfigError(f"{scan_dir}: the scan did not run detector {detector!r}; choose one of: "
                          f"{', '.join(scan.detectors)}")
    scores = scan.scores.copy()
    seed = int(scan.config.seed)
    scores["id"] = scores["id"].astype(str)
    unknown = ~scores["id"].isin(set(ids))
    if unknown.any():
        raise ConfigError(f"{scan_dir}: {int(unknown.sum())} of {len(scores)} scored ids are not in {manifest_path} "
                          f"(e.g. {scores['id'][unknown].iat[0]!r}); was the scan made from this manifest?")
    return scores, seed, detector


def _to_remove(scores: pd.DataFrame, detector: str, share: float | str | None, top: int | None,
               fdr: float | None, seed: int, null: str = DEFAULT_NULL
               ) -> tuple[pd.Series, str, str, ShareEstimate | None]:
    """``(mask of the scored rows to remove, rule, the cut in words, the share estimate or None)``."""
    rank_col, flag_col = f"{detector}_rank", f"is_{detector}_suspect"
    n_scored = len(scores)
    if top is not None:
        return scores[rank_col] <= int(top), "top", f"top {int(top)} by {rank_col}", None
    if share == "suspects":
        return scores[flag_col].astype(bool), "suspects", f"{flag_col} (the scan's suspect budget)", None
    if share is not None and share not in SHARE_RULES:
        n = math.ceil(float(share) * n_scored)
        return scores[rank_col] <= n, "share", f"top {float(share):g} of {n_scored} scored ({n}) by {rank_col}", None
    values = scores[f"{detector}_score"].to_numpy(dtype=np.float64)
    est = estimate_share(values, detector=detector, seed=seed, null=null)
    if fdr is not None:
        n = bh_cut(null_pvalues(values, est), fdr)
        return (scores[rank_col] <= n, "fdr", f"Benjamini-Hochberg at FDR {fdr:g} on the p-values of the "
                f"{'fitted Gamma null' if null == 'gamma' else 'IFR envelope'}: {n} of {n_scored} rows "
                f"({est.describe()})", est)
    if share == "estimate":
        n = est.n_estimated
        return (scores[rank_col] <= n, "estimate", f"cut at the estimated poisoned share: {n} of {n_scored} rows "
                f"({est.reason})", est)
    n = precision_cut(values, est, AUTO_MIN_PRECISION)
    why = (f"the largest top cut whose expected precision is >= {AUTO_MIN_PRECISION:g}: {n} of {n_scored} rows"
           if est.share > 0 else f"no poisoned share found, nothing removed ({n} of {n_scored} rows): the estimate "
           f"counts only poison that {detector}_score separates from the clean tail; --share F or --top N cut anyway")
    return scores[rank_col] <= n, "auto", f"{why} ({est.reason})", est


def filter_manifest(manifest: str | os.PathLike, scan_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                    detector: str | None = None, share: float | str | None = "auto", top: int | None = None,
                    fdr: float | None = None, seed: int | None = None, null: str = DEFAULT_NULL) -> FilterResult:
    """Write ``manifest`` without the suspects of ``detector`` in ``scan_dir`` to ``out_dir``.

    The scan is read with :meth:`clipguard.detect.Scan.load`.

    Args:
        manifest: the dataset the scan was made from (its ids are matched to the scores).
        scan_dir: the output folder of ``clipguard scan`` (``scores/`` and ``run.json`` inside).
        out_dir: folder for ``manifest.<ext>`` (the input's format), ``removed.csv``, ``run.json`` (and
            ``skipped.csv`` when the manifest's reader left a line out).
        detector: whose ranking decides (a detector the scan ran); None (default): the scan's default ranking
            (``run.json``'s ``default_detector``: :func:`~clipguard.detect.store.default_detector`).
        share: ``"auto"`` (default): from the poisoned share estimated from the detector's scores,
            the largest top cut whose expected precision is >= 0.5 (nothing when the estimate is
            0); ``"estimate"``: exactly the estimated number of rows; a fraction f: the top
            ``ceil(f * n_scored)``; ``"suspects"``: the scan's ``is_<detector>_suspect`` rows.
        top: remove the top ``top`` instead; fdr: remove the Benjamini-Hochberg cut at this
            false-discovery rate instead (p-values of the estimate's null).
        seed: seed of the estimate's bootstrap (default: the scan's seed).
        null: the null of the estimate and of the ``"auto"``/``"estimate"``/``fdr`` cuts: ``"envelope"``
            (default), a bound on the clean tail that holds when the clean scores' hazard rate does not fall
            (nothing removed from the clean sets measured), or ``"gamma"``, a Gamma fitted to the bulk, which
            also removes a poison that merges into the clean tail but misreads tails that are not Gamma-shaped
            (:mod:`clipguard.detect.share`).

    Raises:
        ConfigError: more than one of ``share`` (other than "auto"), ``top``, ``fdr``; a value out of
            range or an unknown ``null``; a set too small to estimate (< 20 scored rows) with
            ``"auto"``/``fdr``; a folder
            that holds no scan, a detector the scan did not run, or scores that do not belong to the
            manifest.
        ManifestError: the manifest cannot be read.
    """
    share = _check_rule(share, top, fdr)
    check_choice("null", null, NULLS)
    m = read_manifest(manifest)
    ids = m.df["id"].astype(str)
    scores, scan_seed, detector = _scan_scores(scan_dir, detector, ids, m.path)
    remove, rule, reason, est = _to_remove(scores, detector, share, top, fdr, scan_seed if seed is None else seed,
                                           null)
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
                       removed.reset_index(drop=True), rule=rule, reason=reason, share_estimate=est,
                       detector=detector)
    if m.has_ground_truth:
        y = m.df["poisoned"].astype(bool).to_numpy()
        res.poisoned_recall = float(drop[y].mean()) if y.any() else None
        res.poisoned_precision = float(y[drop].mean()) if drop.any() else None
    _save_record(res, m, scan_dir, detector, {"share": share, "top": top, "fdr": fdr, "null": null}, out)
    return res


def datacomp_uids(ids: pd.Series) -> np.ndarray | None:
    """The ids as DataComp's sorted uid array (``np.dtype("u8,u8")``: the 32 hex digits of each
    uid as two 64-bit halves, sorted), or None when some id is not a 32-hex-digit uid."""
    if not len(ids) or not ids.str.fullmatch(r"[0-9a-fA-F]{32}").all():
        return None
    out = np.array([(int(u[:16], 16), int(u[16:], 16)) for u in ids], dtype=np.dtype("u8,u8"))
    out.sort()
    return out


def _save_record(res: FilterResult, manifest: Manifest, scan_dir, detector: str, given: dict, out: Path) -> None:
    rec = RunRecord("filter", {"manifest": str(manifest.path), "scan_dir": str(scan_dir), "detector": detector,
                               **given})
    rec["data_fingerprint"] = fingerprint_files([manifest.path])
    rec.data.update(manifest.read_counts())
    skipped = SkipLog()
    skipped.add_read_skips(manifest)  # the lines the manifest's reader left out, as rows -1
    if len(skipped):
        skipped.save(out / "skipped.csv")
    rec.data.update(rule=res.rule, cut={"rule": res.rule, "n_removed": res.n_removed, "reason": res.reason},
                    n_rows=res.n_rows, n_scored=res.n_scored, n_removed=res.n_removed,
                    n_kept=res.n_kept, n_unscored=res.n_unscored, poisoned_recall=res.poisoned_recall,
                    poisoned_precision=res.poisoned_precision)
    if res.share_estimate is not None:
        rec["share_estimate"] = res.share_estimate.as_dict()
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

