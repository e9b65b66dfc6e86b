"""A minimum-p (Tippett) default? The fusion rules on stored panel scans (issue 9; measured, rejected).

Fisher's combination (the default ``fused``) is an average of ``-ln p`` over its components, so an inverted
or uninformative component pulls a perfect one down. Tippett's rule keeps each row's most extreme
component (``max -ln p``): one perfect component is enough, at the price of every component's clean
extremes. This script recomputes, from the stored ``<detector>_score`` columns of finished scans, the
default's components (``dao``, ``density_anomaly`` (two-sided by definition), ``clipscore``, ``caption_dup``,
``caption_disagreement`` (folded, as ``fused`` folds it); image-only: the first two) combined by Fisher, by Tippett and by the
mean of the two largest ``-ln p`` ("top2") and by the adaptive truncated sum (:func:`omnibus`: the best of
Fisher's sums over the k most extreme components, k = 1..m, each calibrated by its rank), and prints
worst / mean AUROC over the learned cells, and the AUROC on single sets (the demo, the GPU paper cells).

It also prints two CEILINGS, which are not rules (they use the ground truth): per cell, the best single
signal of the scan (every ``<detector>_score`` column but ``fused``; image-only: the detectors that need
image embeddings alone, ``panel_report.IMAGE_ONLY``, as in the panel's image-only tables) as designed
("oracle signal"), and the best one in either orientation ("oracle
signal, either sign": its AUROC or 1 - AUROC). No rule that selects, weights or orients the scan's
signals without labels can beat the second in every cell; only a fusion that adds up partial evidence
could.

Inputs: ``--poisoned-model`` panel cell folders (``<cell>/scores_auto.parquet`` with ``poisoned``,
``result.json``), ``--clean-model`` folders of ``benchmarks/clean_model_scan.py`` (same layout), and
``--sets`` single ``scores_auto.parquet`` files.

Usage::

    python benchmarks/fusion_min_p.py --poisoned-model /tmp/panel16/cells --clean-model runs/clean_model_scan \\
        --sets /tmp/fx/extra/cells/demo/scores_auto.parquet runs/panel_gpu/cells/*/scores_auto.parquet
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from panel_report import IMAGE_ONLY

from clipguard.detect.detectors.fused import (DEFAULT_IMAGE, DEFAULT_SIGNALS, DEFAULT_TWO_SIDED, fold_two_sided,
                                             fuse_components, upper_tail_log_p)
from clipguard.detect.metrics import detection_metrics

COMPONENTS = (*DEFAULT_IMAGE, *DEFAULT_SIGNALS)
"""The default `fused` components."""
IMAGE = DEFAULT_IMAGE
LEARNED_ASR = 0.8


def rules(parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{"fisher", "tippett", "top2", "omnibus"}`` scores (higher = more suspicious) of the component columns
    ``parts``."""
    logp = np.stack([upper_tail_log_p(fold_two_sided(v) if k in DEFAULT_TWO_SIDED else v) for k, v in parts.items()],
                    axis=1)  # each component oriented as `fused` orients it
    ordered = -np.sort(-logp, axis=1)
    return {"fisher": fuse_components(parts, method="fisher"), "tippett": ordered[:, 0],
            "top2": ordered[:, :2].mean(axis=1), "omnibus": omnibus(ordered)}


def omnibus(ordered: np.ndarray) -> np.ndarray:
    """(n,) the adaptive truncated-sum combination of (n, m) per-row ``-ln p`` sorted descending: for each k of
    1..m the sum of the row's k largest is turned into its own upper-tail rank ``-ln p`` within the set, and the
    row keeps the largest of the m (the smallest p over k; ties broken by their mean). k = 1 is Tippett, k = m
    Fisher: one strong component or several moderate ones both count, at the price of the choice over k."""
    per_k = np.stack([upper_tail_log_p(col) for col in np.cumsum(ordered, axis=1).T], axis=1)
    return per_k.max(axis=1) + 1e-9 * per_k.mean(axis=1)


def aurocs(frame: pd.DataFrame) -> dict[str, float]:
    """AUROC of each rule, with captions and image-only, on one scan's scores."""
    y = frame["poisoned"].to_numpy(bool)
    out = {}
    for tag, names in (("captions", COMPONENTS), ("image-only", IMAGE)):
        parts = {n: frame[f"{n}_score"].to_numpy(np.float64) for n in names if f"{n}_score" in frame.columns}
        out.update({f"{rule} {tag}": detection_metrics(y, s)["auroc"] for rule, s in rules(parts).items()})
    return out | ceilings(frame, y)


def ceilings(frame: pd.DataFrame, y: np.ndarray) -> dict[str, float]:
    """The oracle ceilings (module docstring) of one scan: best signal as designed and in either orientation."""
    out = {}
    signals = [c[:-len("_score")] for c in frame.columns if c.endswith("_score") and c != "fused_score"]
    for tag, pool in (("captions", signals), ("image-only", [s for s in signals if s in IMAGE_ONLY])):
        a = []
        for name in pool:
            v = frame[f"{name}_score"].to_numpy(np.float64)
            ok = np.isfinite(v)  # learning_speed: rows without a record
            a.append(detection_metrics(y[ok], v[ok])["auroc"])
        out[f"oracle signal {tag}"] = max(a)
        out[f"oracle signal, either sign, {tag}"] = max(max(v, 1 - v) for v in a)
    return out


def learned_cells(folders: list[str]) -> pd.DataFrame:
    rows = []
    for folder in map(Path, folders):
        for res in sorted(folder.glob("*/result.json")):
            if json.loads(res.read_text()).get("attack_success_rate", 0) >= LEARNED_ASR:
                rows.append({"cell": res.parent.name, **aurocs(pd.read_parquet(res.parent / "scores_auto.parquet"))})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--poisoned-model", nargs="*", default=[])
    p.add_argument("--clean-model", nargs="*", default=[])
    p.add_argument("--sets", nargs="*", default=[])
    a = p.parse_args(argv)
    for label, folders in (("poisoned model's embeddings", a.poisoned_model), ("clean model's embeddings", a.clean_model)):
        df = learned_cells(folders)
        if len(df):
            print(f"{label}: {len(df)} learned cells, worst / mean AUROC")
            print(df.drop(columns="cell").agg(["min", "mean"]).T.round(3).to_string(), "\n")
    for f in a.sets:
        print(f, {k: round(v, 3) for k, v in aurocs(pd.read_parquet(f)).items()})


if __name__ == "__main__":
    main()
