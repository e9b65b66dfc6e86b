"""``probe_dataset``: the perturbation probe of a whole dataset as a resumable run, the record ``clipguard scan`` reads.

The probe (:func:`~clipguard.embed.stability.perturbation_stability`) runs over the manifest in parts of
``part_rows`` rows; each finished part is written at once, so a killed run is resumed by running the same call
again (finished parts are kept, the others are probed). Output folder::

    out/stability.parquet        id, row, <kind>_stability (the record: clipguard scan EMB --record out)
    out/skipped.csv              rows left out (missing / unreadable image, empty caption), with reasons
    out/run.json                 config, versions, timings, data fingerprint, counts
    out/stability_parts/         spec.json (the settings the parts were made with) and one parquet + csv per part

The record is meant for the model trained ON these pairs (a backdoor is what it probes): ``run.json`` says under
``model_trained_on_this_set`` whether the model's own record names this manifest, and a warning is logged when
it names another one.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from clipguard.data.dataset import SkipLog
from clipguard.data.manifest import Manifest
from clipguard.embed.extract import same_file
from clipguard.embed.stability import NOISE_SD, STABILITY_FILE, perturbation_stability, write_stability
from clipguard.errors import ConfigError
from clipguard.models.factory import ClipBundle
from clipguard.utils.runrecord import RunRecord, fingerprint_files
from clipguard.utils.validate import check_int

__all__ = ["ProbeResult", "probe_dataset", "PARTS_DIR", "DEFAULT_PART_ROWS"]

log = logging.getLogger("clipguard")

PARTS_DIR = "stability_parts"
"""The sub-folder of a probe's output that holds its finished parts (what a rerun resumes from)."""

DEFAULT_PART_ROWS = 100_000
"""Manifest rows per part: the unit of resumption."""


@dataclass
class ProbeResult:
    """What :func:`probe_dataset` wrote.

    Attributes:
        path: the record (``out/stability.parquet``).
        n_probed: rows with a stability; ``n_skipped``: rows left out (``skip_counts`` by reason).
        run_json: ``out/run.json``; ``reused_parts``: parts found finished and not probed again.
    """

    path: Path
    n_probed: int
    n_skipped: int
    skip_counts: dict[str, int] = field(default_factory=dict)
    run_json: Path | None = None
    reused_parts: list[int] = field(default_factory=list)


def _spec(bundle: ClipBundle, manifest: Manifest, kinds: list[str], seed: int, noise_sd: float,
          part_rows: int) -> dict:
    return {"model": bundle.name, "model_trained_on": str(bundle.trained_on or ""), "kinds": kinds, "seed": seed,
            "noise_sd": float(noise_sd), "part_rows": part_rows, "n_rows": len(manifest.df),
            "data_fingerprint": fingerprint_files([manifest.path]) if manifest.path is not None else None}


def _check_spec(parts: Path, spec: dict) -> None:
    """Write ``spec`` beside the parts, or check that the parts there were made with the same settings."""
    path = parts / "spec.json"
    if path.is_file():
        old = json.loads(path.read_text())
        diff = sorted(k for k in spec if old.get(k) != spec[k])
        if diff:
            raise ConfigError(f"{parts.parent}: holds a probe run made with other settings (different: {', '.join(diff)}); "
                              "choose another --out, or delete that folder to start again")
        return
    parts.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, indent=1))


def probe_dataset(bundle: ClipBundle, manifest: Manifest, out: str | os.PathLike, *,
                  kinds: Sequence[str] = ("noise", "blur"), seed: int = 0, noise_sd: float = NOISE_SD,
                  batch_size: int = 128, num_workers: int = 0, part_rows: int = DEFAULT_PART_ROWS,
                  device: str | torch.device | None = None, progress: bool = True) -> ProbeResult:
    """Probe every usable image of ``manifest`` with ``bundle`` and write the stability record to ``out``
    (module docstring); resumable part by part.

    Args:
        bundle: the model trained on these pairs. manifest: the pairs.
        out: the output folder.
        kinds, seed, noise_sd, batch_size, num_workers, device: as in
            :func:`~clipguard.embed.stability.perturbation_stability`.
        part_rows: manifest rows per part (the unit a rerun resumes from).
        progress: a progress bar per part.

    Returns:
        A :class:`ProbeResult`.

    Raises:
        ConfigError: bad options, or ``out`` holding parts made with other settings.
    """
    check_int("part_rows", part_rows, minimum=1)
    kinds = list(dict.fromkeys(kinds))
    out, parts = Path(out), Path(out) / PARTS_DIR
    spec = _spec(bundle, manifest, kinds, seed, noise_sd, part_rows)
    rec = RunRecord("probe", {**{k: v for k, v in spec.items() if k != "data_fingerprint"}, "batch_size": batch_size,
                              "num_workers": num_workers, "device": str(device or bundle.device),
                              "manifest": str(manifest.path if manifest.path is not None else manifest.root)})
    rec["data_fingerprint"] = spec["data_fingerprint"]
    rec["model_trained_on_this_set"] = _trained_here(bundle, manifest)
    _check_spec(parts, spec)
    frames, skips, reused = [], SkipLog(), []
    with rec.stage("probe"):
        for i, lo in enumerate(range(0, max(len(manifest.df), 1), part_rows)):
            frame_path, skip_path = parts / f"part-{i:05d}.parquet", parts / f"part-{i:05d}.skipped.csv"
            if frame_path.is_file() and skip_path.is_file():
                reused.append(i)
            else:
                _probe_part(bundle, manifest, i, lo, part_rows, frame_path, skip_path, kinds=kinds, seed=seed,
                            noise_sd=noise_sd, batch_size=batch_size, num_workers=num_workers, device=device,
                            progress=progress)
            frames.append(pd.read_parquet(frame_path))
            part_skips = pd.read_csv(skip_path, dtype={"id": str, "reason": str}, keep_default_na=False)
            skips.entries.extend((int(r), i_, why) for r, i_, why in part_skips.itertuples(index=False))
    frame = pd.concat(frames, ignore_index=True)
    path = write_stability(frame, out)
    skips.save(out / "skipped.csv")
    rec.data.update({"n_probed": len(frame), "n_skipped": len(skips), "skip_counts": skips.counts(),
                     "reused_parts": reused, "record": STABILITY_FILE})
    return ProbeResult(path, len(frame), len(skips), skips.counts(), rec.save(out), reused)


def _probe_part(bundle: ClipBundle, manifest: Manifest, i: int, lo: int, part_rows: int, frame_path: Path,
                skip_path: Path, **kw) -> None:
    """Probe rows ``[lo, lo + part_rows)`` and write the part (skips first, the frame last and atomically)."""
    sub = replace(manifest, df=manifest.df.iloc[lo:lo + part_rows].reset_index(drop=True),
                  read_skips=manifest.read_skips if i == 0 else ())
    frame, skips = perturbation_stability(bundle, sub, row_offset=lo, **kw)
    skips.entries = [(r + lo if r >= 0 else r, id_, why) for r, id_, why in skips.entries]
    skips.save(skip_path)
    write_stability(frame, frame_path)


def _trained_here(bundle: ClipBundle, manifest: Manifest) -> bool | None:
    """Whether the model's record names this manifest as its training set (None: the model does not say)."""
    if not bundle.trained_on or manifest.path is None:
        return None
    same = same_file(bundle.trained_on, manifest.path)
    if not same:
        log.warning("the model was trained on %s, not on %s: the probe looks for a backdoor the model learned from "
                    "the pairs it was trained on", bundle.trained_on, manifest.path)
    return same
