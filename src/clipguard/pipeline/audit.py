"""``clipguard audit MODEL --images CLEAN --out DIR``: is this checkpoint backdoored, and towards what?

The model owner's question (issue 12). For every candidate target a trigger is reversed on half of the clean
images (:func:`clipguard.analyze.reverse_trigger`, the smallest mask that sends them there) and verified on
the other half; the verdict is Neural Cleanse's anomaly index of the smallest mask
(:mod:`clipguard.analyze.verdict`) against a threshold calibrated on clean models
(:func:`calibrate_audits`: with two clean audits or more, each target's mask size is also compared with its
size in the clean models; without a calibration, Neural Cleanse's index and fixed threshold 2, and
``"calibrated": false``).

Candidates: the class names of ``classes`` and the captions naming the first ``n_clusters`` backdoor
clusters of a scan (``clipguard discover``; run on the scan when it has no ``discover/clusters.parquet``);
with neither, the most frequent captions of the images' manifest. The zero-shot head is the one of
``clipguard reverse`` (:func:`~clipguard.pipeline.reverse.zero_shot_head`: the class list, or the frequent
captions) plus the cluster captions as extra classes.

Writes::

    out/verdict.json     verdict ("backdoored" / "clean"), target (null when clean), closest_target,
                         anomaly_index, threshold, calibrated, attack_success_rate (held-out ASR of the
                         closest target's trigger), mask_l1, candidates
    out/candidates.csv   one row per candidate: target, source, mask_l1, success, held_out_asr, anomaly_index
    out/triggers/NN_trigger.png, NN_mask.png   the reversed trigger of candidate NN
    out/run.json         with n_skipped / skip_counts: the image rows skipped (unreadable, missing, ...) by reason
    out/skipped.csv      each skipped row and its reason (when there is one)
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from clipguard.analyze import ReverseConfig
from clipguard.analyze.verdict import (NEURAL_CLEANSE_THRESHOLD, Calibration, anomaly_indices, calibrate_threshold,
                                      calibrate_with_reference)
from clipguard.data.dataset import SkipLog
from clipguard.data.manifest import read_manifest
from clipguard.errors import ConfigError
from clipguard.evaluate.api import read_classes
from clipguard.models.factory import ClipBundle, load_model
from clipguard.pipeline.discover import discover_scan
from clipguard.pipeline.reverse import (pixel_images, record_skips, require_text_tower, save_trigger, search_trigger,
                                       zero_shot_head)
from clipguard.utils.device import DEFAULT_DEVICE
from clipguard.utils.io import read_json_object, write_json
from clipguard.utils.progress import progress_bar
from clipguard.utils.runrecord import RunRecord, fingerprint_files

__all__ = ["audit_model", "calibrate_audits", "candidate_targets", "read_calibration"]

MAX_CAPTION_CANDIDATES = 10


def _scan_clusters(scan: str | os.PathLike, n_clusters: int) -> list[str]:
    """Names of the first ``n_clusters`` backdoor clusters of the scan (discovered now if not yet)."""
    path = Path(scan) / "discover" / "clusters.parquet"
    table = pd.read_parquet(path) if path.is_file() else discover_scan(scan)
    return [str(n) for n in table.loc[table["kind"] == "backdoor", "name"].head(n_clusters)]


def candidate_targets(*, classes: str | os.PathLike | None, scan: str | os.PathLike | None, images_captions:
                      Sequence[str], n_clusters: int = 3) -> tuple[list[str], list[str]]:
    """(candidate targets, their sources: "class", "cluster" or "caption"), duplicates dropped in that order."""
    found: list[tuple[str, str]] = []
    if classes is not None:
        found += [(c, "class") for c in read_classes(classes)[0]]
    if scan is not None:
        found += [(c, "cluster") for c in _scan_clusters(scan, n_clusters)]
    if classes is None and scan is None:
        counts = pd.Series(list(images_captions), dtype=str).value_counts()
        found += [(c, "caption") for c in counts.index[:MAX_CAPTION_CANDIDATES]]
    seen: dict[str, str] = {}
    for name, source in found:
        seen.setdefault(name, source)
    return list(seen), list(seen.values())


def read_calibration(calibration: str | os.PathLike | float | Calibration | None) -> tuple[float, Calibration | None]:
    """(threshold, calibration or None) from a ``calibration.json`` path, a number, a Calibration or None."""
    if calibration is None:
        return NEURAL_CLEANSE_THRESHOLD, None
    if isinstance(calibration, Calibration):
        return calibration.threshold, calibration
    if isinstance(calibration, (int, float)):
        return float(calibration), None
    data = read_json_object(Path(calibration), "an audit calibration", "write it with `clipguard audit-calibrate`")
    try:
        fields = ("threshold", "alpha", "n_clean", "k", "false_alarm_bound", "conformal_threshold", "floor")
        cal = Calibration(**{f: data[f] for f in fields}, clean_statistics=tuple(data["clean_statistics"]),
                          reference=dict(data.get("reference") or {}))
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{calibration}: not an audit calibration ({exc}); write it with "
                          "`clipguard audit-calibrate`") from None
    return cal.threshold, cal


def _search_all(bundle: ClipBundle, fit: torch.Tensor, held: torch.Tensor, head: tuple[list[str], torch.Tensor],
                targets: list[str], config: ReverseConfig, out: Path, progress: bool) -> list[dict[str, Any]]:
    """Reverse a trigger for every candidate (a name of ``head``); save each as ``triggers/NN_*.png``."""
    rows = []
    (out / "triggers").mkdir(parents=True, exist_ok=True)
    with progress_bar(len(targets), "audit candidates", unit="target", enabled=progress) as bar:
        for k, target in enumerate(targets):
            t0 = time.perf_counter()
            trig, res = search_trigger(bundle, fit, held, head[1], head[0].index(target), config, progress=False)
            save_trigger(out / "triggers", trig, prefix=f"{k:02d}_")
            rows.append({"target": target, **res, "seconds": round(time.perf_counter() - t0, 2)})
            bar.update(1)
    return rows


def audit_model(model: ClipBundle | str | os.PathLike, images: str | os.PathLike, out_dir: str | os.PathLike, *,
                classes: str | os.PathLike | None = None, scan: str | os.PathLike | None = None,
                calibration: str | os.PathLike | float | Calibration | None = None, n_clusters: int = 3,
                n_images: int = 400, config: ReverseConfig = ReverseConfig(),
                device: str | None = DEFAULT_DEVICE, progress: bool = True) -> dict[str, Any]:
    """Audit a model: reverse a trigger per candidate target and judge the smallest mask (see the module doc).

    Args:
        model: a model folder or a :class:`ClipBundle`.
        images: manifest of clean images; the first ``n_images`` readable ones, half to fit, half to verify.
        out_dir: ``verdict.json``, ``candidates.csv``, ``triggers/``, ``run.json``.
        classes: ``classes.json``: its class names are candidates and form the zero-shot head.
        scan: a ``clipguard scan`` folder whose first ``n_clusters`` backdoor clusters are candidates.
        calibration: ``calibration.json`` of :func:`calibrate_audits`, or a threshold [default: 2, uncalibrated].

    Returns:
        The ``verdict.json`` record.

    Raises:
        ConfigError: fewer than 3 candidates, an empty image set, a model without a text tower, a bad calibration.
    """
    threshold, cal = read_calibration(calibration)
    man = read_manifest(images)
    bundle = model if isinstance(model, ClipBundle) else load_model(model, device=device)
    require_text_tower(bundle)
    targets, sources = candidate_targets(classes=classes, scan=scan, images_captions=man.df["caption"].astype(str),
                                         n_clusters=n_clusters)
    if len(targets) < 3:
        raise ConfigError(f"an audit needs at least 3 candidate targets, found {len(targets)}; give --classes or a "
                          "--scan with clusters")
    rec = RunRecord("audit", {"model": str(model if not isinstance(model, ClipBundle) else model.name),
                              "images": str(images), "classes": str(classes or ""), "scan": str(scan or ""),
                              "threshold": threshold, "n_clusters": n_clusters, "n_images": n_images,
                              "search": asdict(config)})
    rec["data_fingerprint"] = fingerprint_files([images])
    skipped = SkipLog()
    pix = pixel_images(man, bundle.image_size, n_images, skipped)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record_skips(rec, len(pix), skipped, out)
    with rec.stage("search"):
        head = zero_shot_head(bundle, man, classes, extra=[t for t, s in zip(targets, sources) if s != "class"])
        rows = _search_all(bundle, pix[: len(pix) // 2], pix[len(pix) // 2:], head, targets, config, out, progress)
    index = anomaly_indices([r["mask_l1"] for r in rows], cal.reference_for(targets) if cal else None)
    table = pd.DataFrame(rows).assign(source=sources, anomaly_index=index)
    table.to_csv(out / "candidates.csv", index=False)
    best = int(np.argmax(index))
    backdoored = bool(index[best] > threshold)
    verdict = {"verdict": "backdoored" if backdoored else "clean", "target": targets[best] if backdoored else None,
               "closest_target": targets[best], "anomaly_index": float(index[best]), "threshold": threshold,
               "calibrated": cal is not None, "per_target_reference": bool(cal and cal.reference),
               "attack_success_rate": rows[best]["held_out_asr"],
               "mask_l1": rows[best]["mask_l1"], "trigger": f"triggers/{best:02d}_trigger.png",
               "mask": f"triggers/{best:02d}_mask.png",
               "candidates": table.drop(columns=["n_held_out"]).to_dict(orient="records")}
    write_json(out / "verdict.json", verdict)
    rec.data.update({k: v for k, v in verdict.items() if k != "candidates"})
    rec.save(out)
    return verdict


def calibrate_audits(audit_dirs: Sequence[str | os.PathLike], out: str | os.PathLike | None = None, *,
                     alpha: float = 0.05, reference: bool = True,
                     floor: float = NEURAL_CLEANSE_THRESHOLD) -> Calibration:
    """Calibrate the verdict threshold on the audits of clean models (their ``verdict.json``).

    With ``reference`` (and two audits or more) the calibration also keeps each target's expected mask size
    (:func:`clipguard.analyze.verdict.calibrate_with_reference`); otherwise the threshold is calibrated on the
    audits' own statistics (:func:`~clipguard.analyze.verdict.calibrate_threshold`). The threshold is never
    below ``floor``. Writes ``out`` (a ``calibration.json``) when given.

    Raises:
        ConfigError: a folder without ``verdict.json``, or no folder.
    """
    verdicts = []
    for d in audit_dirs:
        path = Path(d) / "verdict.json" if Path(d).is_dir() else Path(d)
        if not path.is_file():
            raise ConfigError(f"{d}: no verdict.json; pass the --out folders of `clipguard audit` on clean models")
        verdicts.append(read_json_object(path, "an audit verdict", "rerun `clipguard audit`"))
    if reference and len(verdicts) >= 2:
        cal = calibrate_with_reference([{c["target"]: float(c["mask_l1"]) for c in v["candidates"]}
                                        for v in verdicts], alpha, floor)
    else:
        cal = calibrate_threshold([float(v["anomaly_index"]) for v in verdicts], alpha, floor)
    if out is not None:
        write_json(Path(out), {**cal.as_dict(), "audits": [str(d) for d in audit_dirs]})
    return cal
