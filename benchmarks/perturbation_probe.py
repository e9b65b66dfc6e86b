"""The perturbation-stability probe (STRIP adapted to CLIP) on the learned cells of the panel (issue 9).

For every learned cell of a finished panel run (``benchmarks/panel.py``: ``<panel>/cells/<cell>/result.json``
and ``scores_auto.parquet``), the cell is rebuilt exactly -- the same clean split poisoned with the same attack,
target, rate and seed, the same tiny-rn trained for the same epochs (the panel deletes its models) -- and
:func:`clipguard.embed.perturbation_stability` probes that model on the cell's training pairs: the cosine
between each image's embedding and that of a noisy (``noise``) and a blurred (``blur``) copy. The stabilities
are joined by id to the panel's stored scores of the same pairs and scored against the ground truth:

- ``noise``: the noise stability itself (higher = more suspicious: a trigger survives the noise and keeps
  driving the embedding, STRIP's observation);
- ``blur``: one minus the blur stability (a patch or pattern does not survive a blur);
- ``both``: the sum of their robust z-scores;
- beside them the panel's default ``fused``, the best single image-only signal of the scan (picked with the
  labels) and the best single signal of any kind in either orientation (the oracle ceiling of
  ``fusion_min_p.py``), and ``fused`` with the noise stability added as a sixth component (Fisher).

The training reproduces the stored cell: the script checks the ASR against ``result.json`` and reports both.
Stabilities are kept in ``<work>/<cell>/stability.parquet`` and reused by a rerun. A panel run with ``--probe``
probed each cell while its model was in memory (``<cell>/stability.parquet``): that record is used as it is, and
nothing is rebuilt.

``--probe-model clean`` is the control: the same poisoned pairs probed by the world's CLEAN tiny-rn (the panel's
``<panel>/world_*/clean_model``, never trained on poison) instead of the poisoned one. If the signal comes from
the learned backdoor, the control is near chance; if it came from the trigger's pixels alone, it would not be.
Output then ``perturbation_probe_clean.md`` / ``.csv`` (stabilities in ``stability_clean.parquet``).

``--extra-noise-sd 12.5 50`` is a sensitivity check of the noise strength: the rebuilt model is also probed
with those standard deviations (columns ``noise_sd<v>``). Use its own ``--work`` folder: cells already probed
there are not rebuilt. ``--cells`` limits the run to some learned cells.

Output: ``<out>/perturbation_probe.md`` / ``.csv``. Usage (two workers of one thread, about 3.5 min per cell)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/perturbation_probe.py --panel /tmp/panel16 --jobs 2 --threads 1
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import panel
from panel_report import IMAGE_ONLY
from _results import limit_threads, share_of, spawn_workers, train_until_learned, write_csv

from clipguard.data.manifest import read_manifest
from clipguard.detect.detectors.fused import DEFAULT_IMAGE, DEFAULT_SIGNALS, fuse_components, robust_z
from clipguard.detect.metrics import detection_metrics
from clipguard.embed import perturbation_stability
from clipguard.models import load_model

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = (*DEFAULT_IMAGE, *DEFAULT_SIGNALS)
"""The default `fused` components."""
FIELDS = ["cell", "world", "attack", "rate", "asr_panel", "asr_here", "noise", "blur", "both", "fused",
          "fused_plus_noise", "best_image_signal", "best_image_name", "oracle_either_sign", "seconds"]


def learned_cells(a: argparse.Namespace) -> list[Path]:
    out = []
    for res in sorted((Path(a.panel) / "cells").glob("*/result.json")):
        if a.cells and res.parent.name not in a.cells:
            continue
        if json.loads(res.read_text())["attack_success_rate"] >= a.learned:
            out.append(res.parent)
    return out


def probe_cell(cell: Path, a: argparse.Namespace) -> Path:
    """Rebuild ``cell``'s poisoned set and model and write its stabilities (reused when present)."""
    out = Path(a.work) / cell.name
    target = out / _stability_file(a)
    if target.is_file():
        return target
    made = cell / "stability.parquet"  # probed by the panel itself (panel.py --probe), the model then in memory
    if a.probe_model == "poisoned" and not a.extra_noise_sd and made.is_file():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(made, target)
        return target
    for stale in [out / "data", *out.glob("model_e*")]:  # a killed run's leftovers (training would resume them)
        shutil.rmtree(stale, ignore_errors=True)
    res, r, pa = panel.repoison_cell(cell, out / "data", a.panel)
    world = r["world"]
    if a.probe_model == "clean":
        bundle, model_dir = load_model(panel.world_dir(pa, world) / "clean_model", device=a.device), None
        asr = float("nan")
    else:
        bundle, attempts, model_dir = train_until_learned(
            res.manifest_path, out, panel.world_dir(pa, world), res.spec_path, epochs_ladder=[r["epochs"]],
            learned=a.learned, seed=r.get("seed", 0), device=a.device)
        asr = attempts[-1]["attack_success_rate"]
    manifest = read_manifest(res.manifest_path)
    frame, skips = perturbation_stability(bundle, manifest, seed=a.seed, progress=False)
    for sd in a.extra_noise_sd:
        extra, _ = perturbation_stability(bundle, manifest, kinds=("noise",), seed=a.seed, noise_sd=sd, progress=False)
        frame[f"noise_sd{sd:g}_stability"] = extra["noise_stability"].to_numpy()
    frame["asr_here"] = asr
    frame["n_skipped"] = len(skips)
    frame.to_parquet(target, index=False)
    shutil.rmtree(out / "data" / "images", ignore_errors=True)
    if model_dir is not None:
        shutil.rmtree(model_dir, ignore_errors=True)
    return target


def _record_of(cell: Path, a: argparse.Namespace) -> Path | None:
    """The cell's stability record: the one in ``--work``, else the panel's own (``panel.py --probe``), else None."""
    here = Path(a.work) / cell.name / _stability_file(a)
    if here.is_file():
        return here
    made = cell / "stability.parquet"
    return made if a.probe_model == "poisoned" and not a.extra_noise_sd and made.is_file() else None


def _stability_file(a: argparse.Namespace) -> str:
    return "stability.parquet" if a.probe_model == "poisoned" else "stability_clean.parquet"


def score_cell(cell: Path, stab: pd.DataFrame) -> dict:
    """The probe's AUROCs on one cell beside the panel's signals (module docstring)."""
    r = json.loads((cell / "result.json").read_text())
    s = pd.read_parquet(cell / "scores_auto.parquet").set_index("id").loc[stab["id"]].reset_index()
    y = s["poisoned"].to_numpy(bool)
    auroc = lambda v: detection_metrics(y, np.asarray(v, dtype=np.float64))["auroc"]  # noqa: E731
    noise, blur = stab["noise_stability"].to_numpy(), 1 - stab["blur_stability"].to_numpy()
    image = {n: auroc(s[f"{n}_score"]) for n in IMAGE_ONLY if f"{n}_score" in s.columns}
    best = max(image, key=image.get)
    every = [auroc(np.nan_to_num(s[c].to_numpy(np.float64), nan=np.nanmedian(s[c])))
             for c in s.columns if c.endswith("_score") and c != "fused_score"]
    parts = {n: s[f"{n}_score"].to_numpy(np.float64) for n in COMPONENTS}
    return {"cell": cell.name, "world": r["world"], "attack": r["attack"], "rate": r["rate"],
            "asr_panel": r["attack_success_rate"], "asr_here": float(stab["asr_here"].iat[0]),
            "noise": auroc(noise), "blur": auroc(blur), "both": auroc(robust_z(noise) + robust_z(blur)),
            "fused": auroc(s["fused_score"]), "fused_plus_noise": auroc(fuse_components({**parts, "noise": noise})),
            "best_image_signal": image[best], "best_image_name": best,
            "oracle_either_sign": max(max(v, 1 - v) for v in every),
            **{c[:-len("_stability")]: auroc(stab[c]) for c in stab.columns if c.startswith("noise_sd")}}


def report(a: argparse.Namespace) -> Path:
    paths = {c: _record_of(c, a) for c in learned_cells(a)}
    rows = [score_cell(c, pd.read_parquet(path)) for c, path in paths.items() if path is not None]
    if not rows:
        raise SystemExit(f"no learned cell (ASR >= {a.learned}) of {a.panel} has a stability record to report")
    out = Path(a.out)
    stem = "perturbation_probe" if a.probe_model == "poisoned" else "perturbation_probe_clean"
    stem += "".join(f"_sd{sd:g}" for sd in a.extra_noise_sd) + (f"_{a.name}" if a.name else "")
    extra = [f"noise_sd{sd:g}" for sd in a.extra_noise_sd]
    write_csv(out / f"{stem}.csv", FIELDS + extra, [{k: row.get(k) for k in FIELDS + extra} for row in rows])
    df = pd.DataFrame(rows)
    cols = ["noise", *extra, "blur", "both", "fused", "fused_plus_noise", "best_image_signal", "oracle_either_sign"]
    from_panel = all((c / "stability.parquet").is_file() for c in learned_cells(a))
    probe = ("each learned cell's model probed by the panel run itself (`panel.py --probe`, the model in memory)"
             if a.probe_model == "poisoned" and from_panel and not a.extra_noise_sd else
             "each learned cell rebuilt (same poison, same tiny-rn, same epochs) and its model probed"
             if a.probe_model == "poisoned" else "CONTROL: each learned cell's poisoned pairs rebuilt and probed by "
             "the world's CLEAN tiny-rn (never trained on poison; `asr here` is not measured)")
    if a.extra_noise_sd:
        probe += (" (sensitivity check: also noise sd " + ", ".join(f"{sd:g}" for sd in a.extra_noise_sd)
                  + "/255, columns `noise_sd<v>`" + (f"; cells {', '.join(a.cells)}" if a.cells else "") + ")")
    title = "" if a.probe_model == "poisoned" else ", clean-model control"
    lines = [f"# Perturbation-stability probe on the panel's learned cells (issue 9){title}", "",
             f"`benchmarks/perturbation_probe.py --panel {a.panel} --probe-model {a.probe_model}`: {probe} by "
             "`clipguard.embed.perturbation_stability` (noise sd "
             "25/255, blur radius 1.5/64 of the side). AUROC against the ground truth; `best_image_signal` (picked "
             "with the labels) and `oracle_either_sign` (the best signal of the scan in either orientation) are "
             "ceilings, not rules.", "",
             "| AUROC over the learned cells | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols),
             "| worst | " + " | ".join(f"{df[c].min():.3f}" for c in cols) + " |",
             "| mean | " + " | ".join(f"{df[c].mean():.3f}" for c in cols) + " |", "",
             "| cell | asr panel / here | " + " | ".join(cols) + " | best image signal |",
             "|---|---|" + "---|" * len(cols) + "---|"]
    for row in rows:
        lines.append(f"| {row['cell']} | {row['asr_panel']:.3f} / {row['asr_here']:.3f} | "
                     + " | ".join(f"{row[c]:.3f}" for c in cols) + f" | {row['best_image_name']} |")
    path = out / f"{stem}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--panel", required=True, help="work folder of a finished panel run (cells/, worlds, badclip/)")
    p.add_argument("--work", default=str(ROOT / "runs" / "perturbation_probe"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--learned", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0, help="seed of the noise")
    p.add_argument("--probe-model", choices=("poisoned", "clean"), default="poisoned",
                   help="probe the cell's poisoned model (default) or the world's clean one (the control)")
    p.add_argument("--extra-noise-sd", nargs="*", type=float, default=[],
                   help="also probe with these noise sds (0-255 scale): a sensitivity check")
    p.add_argument("--cells", nargs="*", default=[], help="only these learned cells (default: all)")
    p.add_argument("--name", default="", help="suffix of the output files (perturbation_probe_<name>.md)")
    p.add_argument("--device", default=None)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--part", default=None, help=argparse.SUPPRESS)
    p.add_argument("--report-only", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    if a.part:
        limit_threads(a.threads)
        for cell in share_of(a.part, learned_cells(a)):
            print(f"[{cell.name}] -> {probe_cell(cell, a)}", flush=True)
        return
    if not a.report_only:
        spawn_workers(__file__, argv if argv is not None else sys.argv[1:], a.jobs)
    print(f"-> {report(a)}")


if __name__ == "__main__":
    main()
