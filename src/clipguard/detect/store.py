"""The scan folder: written by :meth:`Scan.save <clipguard.detect.facade.Scan.save>` and read back
by :meth:`Scan.load <clipguard.detect.facade.Scan.load>` (and so by ``clipguard filter``).

::

    out_dir/
        scores/scores_{i}.parquet   row-aligned with img_emb/img_emb_{i}.npy; columns id, and per
                                    detector <det>_score (float64, higher = more suspicious),
                                    <det>_rank (int64, 1 = most suspicious over the whole
                                    dataset), is_<det>_suspect (bool, the top suspect_share of the
                                    dataset), then poisoned (if the metadata has it)
        run.json                    config, versions, timings, data fingerprint, sizes, shard ids,
                                    the reference plan (mode chosen and why, IVF recall),
                                    detectors skipped for missing inputs, detection metrics, and
                                    share_estimate: the poisoned share estimated from the default
                                    detector's scores (:mod:`clipguard.detect.share`)
        tradeoff.csv                for each share removed (top rows of the default detector):
                                    expected precision / recall / clean share lost from the
                                    estimate, measured precision / recall with ground truth

Empty embedding shards get an empty score file with the same columns, so every embedding shard
has its score shard. The ``run.json`` keys written here are the ones :func:`read_scan` needs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipguard.detect.config import ScanConfig
from clipguard.detect.options import DEFAULT_DETECTOR, DEFAULT_RULE, PROBE_DETECTOR
from clipguard.detect.results import score_columns
from clipguard.detect.share import estimate_share, tradeoff_curve
from clipguard.errors import ConfigError
from clipguard.io.layout import list_shards, shard_path
from clipguard.io.writer import write_scores_shard
from clipguard.utils.io import atomic_path, read_json_object
from clipguard.utils.runrecord import RunRecord

__all__ = ["SavedScan", "default_detector", "embedding_model", "new_scan_record", "record_data", "record_scoring", "record_share",
           "write_scan", "read_scan", "read_share", "format_tradeoff", "TRADEOFF_FILE", "TRAINED_ON_THIS_SET"]

TRADEOFF_FILE = "tradeoff.csv"
"""The trade-off curve of a scan folder (:func:`record_share`)."""

TRAINED_ON_THIS_SET = ("these embeddings come from a model trained on this very set (the DAO paper's setting): a "
                       "dirty-label backdoor it learned makes poisoned captions MATCH their images there. To clean a "
                       "set before training, embed it with a model not trained on it and read clipscore_rank beside "
                       "the default (benchmarks/results/clean_model_scan.md: clipscore worst AUROC 0.977 over the "
                       "panel's learned cells, 0.148 here)")
"""The scan's note (``run.json`` ``embedding_model.note``, the printed summary) when the embedding folder's
``run.json`` says its model was trained on the embedded manifest."""


def embedding_model(emb_dir: str | Path | None) -> dict[str, Any] | None:
    """What the embedding folder's ``run.json`` (``clipguard embed``) says of its model's training set:
    ``{"trained_on", "trained_on_this_set"[, "note"]}``, or None (no such record, or a model without one)."""
    path = Path(emb_dir) / "run.json" if emb_dir is not None else None
    if path is None or not path.is_file():
        return None
    try:
        run = read_json_object(path, "the embedding run record")
    except ConfigError as exc:  # a damaged embedding record does not stop a scan (the embeddings are checked)
        log.warning("%s; the embedding model's training set is not checked", exc)
        return None
    if run.get("command") != "embed" or not run.get("model_trained_on"):
        return None
    out = {"trained_on": run["model_trained_on"], "trained_on_this_set": bool(run.get("model_trained_on_this_set"))}
    if out["trained_on_this_set"]:
        out["note"] = TRAINED_ON_THIS_SET
    return out

log = logging.getLogger("clipguard")


def new_scan_record(source: str | None, requested: list[str] | None, cfg: ScanConfig,
                    load_s: float | None) -> RunRecord:
    """The run record of a scan: ``config`` holds ``emb_dir``, ``detectors`` (None = the default
    set) and every ScanConfig field; ``timings_s.load`` the time spent reading the folder."""
    rec = RunRecord("scan", config={"emb_dir": source, "detectors": requested, **cfg.as_dict()})
    if load_s is not None:
        rec["timings_s"]["load"] = round(load_s, 4)
    model = embedding_model(source)
    if model is not None:
        rec["embedding_model"] = model
    return rec


def default_detector(detectors: list[str]) -> str:
    """The scan's default ranking column: :data:`~clipguard.detect.options.PROBE_DETECTOR` when it ran (the
    scan joined a perturbation-stability record), else :data:`~clipguard.detect.options.DEFAULT_DETECTOR` when it
    ran, else the first detector that ran (:data:`~clipguard.detect.options.DEFAULT_RULE`)."""
    for name in (PROBE_DETECTOR, DEFAULT_DETECTOR):
        if name in detectors:
            return name
    return detectors[0]


def record_data(rec: RunRecord, *, n: int, d: int, inputs: set[str], detectors: list[str],
                shard_ids: list[int], shard_sizes: list[int], skipped_shards: list[int],
                ignored_files: list[str] | None = None) -> None:
    """Put the sizes, inputs, detectors and shards of the scanned data into the run record:
    ``skipped_shards`` (empty shards, 0 rows) and ``ignored_files`` (files of the shard folders that are
    not shards) are counted too (``n_skipped_shards``, ``n_ignored_files``)."""
    rec["n"], rec["d"] = int(n), int(d)
    rec["inputs"] = sorted(inputs)
    rec["detectors"] = detectors
    rec["default_detector"] = default_detector(detectors)
    rec["default_rule"] = DEFAULT_RULE
    rec["shard_ids"] = shard_ids
    rec["shard_sizes"] = shard_sizes
    rec["skipped_shards"] = skipped_shards
    rec["n_skipped_shards"] = len(skipped_shards)
    rec["ignored_files"] = list(ignored_files or [])
    rec["n_ignored_files"] = len(rec["ignored_files"])


def record_scoring(rec: RunRecord, info: dict[str, Any], skipped: dict[str, str]) -> None:
    """Put the reference plan, kNN info and skipped detectors into the run record."""
    rec["reference_plan"] = info.get("reference_plan")
    rec["references"] = info.get("references")
    if "recall_at_k" in info:
        rec["recall_at_k"] = info["recall_at_k"]
    if "detector_info" in info:
        rec["detector_info"] = info["detector_info"]
    rec["skipped_detectors"] = skipped
    rec["n_skipped_detectors"] = len(skipped)


def write_scan(
    table: pd.DataFrame, names: list[str], shard_ids: list[int], out_dir: str | Path, rec: RunRecord
) -> tuple[list[Path], Path]:
    """Write ``scores/scores_{i}.parquet`` for every shard id and ``run.json``.

    Args:
        table: from :func:`~clipguard.detect.results.build_score_table` (needs ``id`` and ``shard``).
        names: detector names, in column order.
        shard_ids: every shard to write, including empty ones (they get an empty file).
        out_dir: output folder (created).
        rec: the run record, saved as ``run.json`` after the score files.

    Returns:
        ``(score_paths, run_json)``.
    """
    out_dir = Path(out_dir)
    file_cols = ["id"] + score_columns(names)
    if "poisoned" in table.columns:
        file_cols.append("poisoned")
    paths: list[Path] = []
    with rec.stage("write"):
        (out_dir / "scores").mkdir(parents=True, exist_ok=True)
        stale = {p.name for p in list_shards(out_dir, "scores").values()}
        shard_col = table["shard"].to_numpy()
        for i in sorted(shard_ids):
            part = table.loc[shard_col == i, file_cols].reset_index(drop=True)
            path = write_scores_shard(out_dir, i, part)
            paths.append(path)
            stale.discard(path.name)
        if stale:
            log.warning("%s holds score files from an earlier scan that this scan did not "
                        "write: %s", out_dir / "scores", ", ".join(sorted(stale)))
    rec["outputs"] = [str(p) for p in paths]
    curve = record_share(table, default_detector(names), out_dir, rec)
    if curve is not None:
        rec["outputs"].append(str(curve))
    return paths, rec.save(out_dir)


def record_share(table: pd.DataFrame, detector: str, out_dir: str | Path, rec: RunRecord) -> Path | None:
    """Estimate the poisoned share from ``table[<detector>_score]`` into ``rec["share_estimate"]`` and
    write ``out_dir/tradeoff.csv`` (:func:`~clipguard.detect.share.tradeoff_curve`; with measured precision
    and recall when ``table`` has ``poisoned``). A set too small to estimate records the reason instead
    (``{"skipped": ...}``) and writes no curve. Returns the curve's path or None."""
    scores = table[f"{detector}_score"].to_numpy(dtype=np.float64)
    seed = int(rec.data.get("config", {}).get("seed", 0) or 0)
    with rec.stage("share"):
        try:
            est = estimate_share(scores, detector=detector, seed=seed)
        except ConfigError as e:
            rec["share_estimate"] = {"skipped": str(e), "detector": detector}
            return None
        truth = table["poisoned"].fillna(False).to_numpy(dtype=bool) if "poisoned" in table.columns else None
        curve = tradeoff_curve(scores, est, truth)
        path = Path(out_dir) / TRADEOFF_FILE
        with atomic_path(path) as tmp:
            curve.to_csv(tmp, index=False, float_format="%.6g")
    rec["share_estimate"] = est.as_dict()
    log.info("%s", est.describe())
    return path


@dataclass
class SavedScan:
    """What a scan folder holds: the score table (``id``, ``shard``, ``row_in_shard``, the score
    columns, ``poisoned``), the ``run.json`` contents, and the score files read."""

    table: pd.DataFrame
    run: dict[str, Any]
    score_paths: list[Path]


def _read_run(root: Path) -> dict[str, Any]:
    path = root / "run.json"
    if not path.is_file():
        raise ConfigError(f"{root}: no run.json beside scores/; pass the --out folder of `clipguard scan`")
    run = read_json_object(path, "the run record of a scan", "rerun `clipguard scan`")
    if run.get("command") != "scan":
        raise ConfigError(f"{path} is not the run record of a scan; pass the --out folder of `clipguard scan`")
    missing = [key for key in ("config", "detectors") if not isinstance(run.get(key), (dict, list))]
    if missing:
        raise ConfigError(f"{path} lacks {', '.join(missing)}; it was not written by a finished scan, rerun "
                          "`clipguard scan`")
    return run


def _score_files(root: Path, run: dict[str, Any]) -> dict[int, Path]:
    """``{i: path}`` of the score files of this run (every file when run.json lists no shards)."""
    if not run.get("shard_ids"):
        return list_shards(root, "scores")
    ids = sorted(int(i) for i in list(run["shard_ids"]) + list(run.get("skipped_shards") or []))
    files = {i: shard_path(root, "scores", i) for i in ids}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise ConfigError(f"{root}: score file(s) {', '.join(missing)} of this scan are missing; rerun "
                          "`clipguard scan`")
    return files


def read_scan(scan_dir: str | Path) -> SavedScan:
    """Read a scan folder written by :func:`write_scan`.

    Returns:
        A :class:`SavedScan`: the table has the rows of every shard in shard order, with
        ``shard`` and ``row_in_shard`` restored from the file names and row positions.

    Raises:
        ConfigError: no ``scores/scores_*.parquet`` or no ``run.json``, or files of the scan missing.
    """
    root = Path(scan_dir)
    if not list_shards(root, "scores"):
        raise ConfigError(f"{scan_dir}: no scores/scores_*.parquet; pass the --out folder of `clipguard scan`")
    run = _read_run(root)
    files = _score_files(root, run)
    frames = []
    for i, path in files.items():
        frame = pd.read_parquet(path)
        frame.insert(1, "shard", np.full(len(frame), i, dtype=np.int64))
        frame.insert(2, "row_in_shard", np.arange(len(frame), dtype=np.int64))
        frames.append(frame)
    table = pd.concat([f for f in frames if len(f)] or frames[:1], ignore_index=True)
    return SavedScan(table, run, list(files.values()))


def read_share(scan_dir: str | Path) -> tuple[dict[str, Any] | None, pd.DataFrame | None]:
    """``(share_estimate, tradeoff curve)`` of a scan folder (None where the scan has none: an older scan,
    or a set too small to estimate, whose ``share_estimate`` holds ``skipped``)."""
    root = Path(scan_dir)
    run = read_json_object(root / "run.json", "the scan record") if (root / "run.json").is_file() else {}
    curve = root / TRADEOFF_FILE
    return run.get("share_estimate"), (pd.read_csv(curve) if curve.is_file() else None)


def format_tradeoff(curve: pd.DataFrame) -> str:
    """The trade-off curve as a small fixed-width table (shares and precisions in percent)."""
    measured = "precision" in curve.columns
    head = (f"{'removed':>8s} {'rows':>8s} {'exp.prec':>8s} {'exp.recall':>10s} {'clean lost':>10s}"
            + (f" {'precision':>9s} {'recall':>7s}" if measured else ""))
    lines = [head]
    for r in curve.itertuples(index=False):
        rec_ = "n/a" if pd.isna(r.expected_recall) else f"{r.expected_recall:.1%}"
        line = (f"{r.share_removed:8.2%} {r.n_removed:8d} {r.expected_precision:8.1%} {rec_:>10s} "
                f"{r.clean_lost_share:10.2%}" + (" <- estimate" if r.is_estimate and not measured else ""))
        if measured:
            line += f" {r.precision:9.1%} {('n/a' if pd.isna(r.recall) else f'{r.recall:.1%}'):>7s}"
            line += " <- estimate" if r.is_estimate else ""
        lines.append(line)
    return "\n".join(lines)
