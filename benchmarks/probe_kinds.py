"""Which perturbation should the probe use? Noise, blur and STRIP's blend on the learned cells of a panel, with the
poisoned model and, as the control, the world's clean model (issue 9).

The probe's noise stability is the default ranking of a scan with a stability record; its worst learned cell is a
colour filter (Nashville, 0.684). STRIP (Gao et al. 2019) perturbs by superimposing another image, which a global
filter may not survive as it survives noise. This benchmark measures that design against noise and blur on the
same cells, and two label-free ways to combine noise with blend (the mean of their ranks; Fisher's combination of
their rank p-values).

Each named cell of the panel run ``--panel`` (default: every learned cell there, ASR >= 0.8) is rebuilt in
``--work`` by ``panel.run_cell`` -- the same poisoned split, the same tiny-rn for the cell's epochs, so the same
model (the script checks the ASR against the panel's) -- and probed with ``--kinds`` while in memory
(``<work>/cells/<cell>/stability.parquet``). ``--clean`` adds the control: the same poisoned pairs probed by the
world's CLEAN tiny-rn (``stability_clean.parquet``): a signal that stays with the clean model is the trigger's
pixels, not the learned backdoor. ``noise over clean`` asks whether a reference model can take out the image's own
robustness: the poisoned model's noise stability in excess of what the clean model's predicts (the residual of a
line fitted on the atanh scale, :func:`excess_over`). The clean model here is the poisoned one's twin (same world,
seed and schedule, without the poison): the most favourable reference there can be; ``clean rows' correlation`` is
that of the two models' atanh noise stabilities over the clean rows (not an AUROC). Finished cells are reused.

Usage (two workers of one thread, about 2 min per cell and 1.5 min per control)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/probe_kinds.py --panel runs/panel_cpu_probe --work runs/probe_kinds \\
        --clean --jobs 2 --threads 1
    OMP_WAIT_POLICY=PASSIVE python benchmarks/probe_kinds.py --panel runs/panel_variants24 \\
        --work runs/probe_kinds_variants --clean --clean-from runs/panel_cpu_probe --jobs 2 --threads 1 \\
        --name variants                                  # the trigger designs the panel was not measured on
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

import panel
from _results import add_cell_options, limit_threads, share_of, spawn_workers, write_csv

from clipguard.data.manifest import read_manifest
from clipguard.detect.metrics import detection_metrics
from clipguard.embed import perturbation_stability
from clipguard.models import load_model

KINDS = ("noise", "blur", "blend")
WORLD_DIRS = ("world_shapes", "world_longtail", "badclip")
"""What a cell needs from its panel folder (linked into ``--work``)."""


def learned_cells(panel_dir: Path, learned: float) -> list[str]:
    """Names of the cells of a finished panel whose ASR reached ``learned``."""
    out = []
    for res in sorted((panel_dir / "cells").glob("*/result.json")):
        if json.loads(res.read_text())["attack_success_rate"] >= learned:
            out.append(res.parent.name)
    return out


def rebuild(name: str, a: argparse.Namespace) -> None:
    """Train and probe cell ``name`` again in ``--work`` (``panel.run_cell``), for the panel's epochs."""
    r = json.loads((Path(a.panel) / "cells" / name / "result.json").read_text())
    pa = panel.parse(["--preset", r.get("preset", "cpu"), "--work", a.work, "--probe", "--probe-kinds", *a.kinds,
                      "--modes", "auto", "--epochs", str(r["epochs"]), "--seed", str(r.get("seed", 0)),
                      "--k", str(r.get("k", 16))])
    rec = panel.run_cell(r["world"], r["attack"], r["rate"], pa)
    if abs(rec["attack_success_rate"] - r["attack_success_rate"]) > 1e-6:
        print(f"[{name}] ASR {rec['attack_success_rate']:.4f} here, {r['attack_success_rate']:.4f} in the panel",
              file=sys.stderr)


def control(cell: Path, a: argparse.Namespace) -> None:
    """Probe the cell's poisoned pairs with the world's clean model (``stability_clean.parquet``)."""
    tmp = Path(tempfile.mkdtemp(prefix="probe_kinds_"))
    try:
        res, r, pa = panel.repoison_cell(cell, tmp / "data", a.work)
        world = panel.world_dir(pa, r["world"]).name
        bundle = load_model(Path(a.clean_from or a.panel) / world / "clean_model", device=a.device)
        frame, _ = perturbation_stability(bundle, read_manifest(res.manifest_path), kinds=a.kinds, seed=a.seed,
                                          batch_size=256, device=a.device, progress=False)
        frame.to_parquet(cell / "stability_clean.parquet", index=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def worker(a: argparse.Namespace) -> None:
    limit_threads(a.threads)
    for name in share_of(a.part, a.cells):
        cell = Path(a.work) / "cells" / name
        if not (cell / "result.json").is_file():
            rebuild(name, a)
        if a.clean and not (cell / "stability_clean.parquet").is_file():
            control(cell, a)
        print(f"[{name}] done", flush=True)


def _rank(v: np.ndarray) -> np.ndarray:
    return rankdata(v) / len(v)


def scores_of(stab: pd.DataFrame) -> dict[str, np.ndarray]:
    """Label-free scores (higher = more suspicious) from one record: each kind's stability (one minus it for
    blur), and for noise + blend the mean of their ranks and Fisher's ``-sum ln(1 - rank + 1/n)``."""
    out = {k: (1 - stab[f"{k}_stability"] if k == "blur" else stab[f"{k}_stability"]).to_numpy()
           for k in KINDS if f"{k}_stability" in stab.columns}
    if "noise" in out and "blend" in out:
        n = len(stab)
        out["noise+blend mean rank"] = _rank(out["noise"]) + _rank(out["blend"])
        out["noise+blend fisher"] = -np.log(1 - _rank(out["noise"]) + 1 / n) - np.log(1 - _rank(out["blend"]) + 1 / n)
    return out


def cell_row(cell: Path) -> dict:
    r = json.loads((cell / "result.json").read_text())
    stab = pd.read_parquet(cell / "stability.parquet")
    scores = pd.read_parquet(cell / "scores_auto.parquet").set_index("id")
    y = scores.loc[stab["id"], "poisoned"].to_numpy(bool)
    row = {"cell": cell.name, "attack": r["attack"], "asr": r["attack_success_rate"],
           "fused": detection_metrics(y, scores.loc[stab["id"], "fused_score"].to_numpy())["auroc"]}
    row.update({k: detection_metrics(y, v)["auroc"] for k, v in scores_of(stab).items()})
    if (cell / "stability_clean.parquet").is_file():
        clean = pd.read_parquet(cell / "stability_clean.parquet").set_index("id").loc[stab["id"]].reset_index()
        row.update({f"clean {k}": detection_metrics(y, v)["auroc"] for k, v in scores_of(clean).items()
                    if k in KINDS})
        t, c = stab["noise_stability"].to_numpy(), clean["noise_stability"].to_numpy()
        row["noise over clean"] = detection_metrics(y, excess_over(t, c))["auroc"]
        row["clean rows' correlation"] = float(np.corrcoef(_atanh(t[~y]), _atanh(c[~y]))[0, 1])
    return row


def _atanh(v: np.ndarray) -> np.ndarray:
    return np.arctanh(np.clip(v, -1 + 1e-6, 1 - 1e-6))


def excess_over(stability: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The part of the poisoned model's stability a reference model's does not predict: the residual of
    ``atanh(stability)`` regressed by least squares on ``atanh(reference)`` (higher = more stable than the
    image's own robustness explains)."""
    t, r = _atanh(stability), _atanh(reference)
    slope, icept = np.polyfit(r, t, 1)
    return t - (icept + slope * r)


def report(a: argparse.Namespace) -> Path:
    rows = [cell_row(Path(a.work) / "cells" / c) for c in a.cells]
    df = pd.DataFrame(rows)
    cols = [c for c in df.columns if c not in ("cell", "attack", "asr")]
    out = Path(a.out)
    write_csv(out / f"probe_kinds_{a.name}.csv", list(df.columns), rows)
    lines = [f"# Probe perturbations on the learned cells of `{a.panel}` (issue 9)", "",
             f"`{' '.join(['python benchmarks/probe_kinds.py', *sys.argv[1:]])}`: every cell rebuilt (same split, "
             "model and epochs as the panel) and probed with " + ", ".join(a.kinds) + "; AUROC against the "
             "ground truth, higher stability = more suspicious (one minus it for blur). `clean ...`: the same "
             "pairs probed by the world's clean model (the control). `fused`: the scan's default without a record.",
             "", f"Over {len(df)} cells: worst / mean AUROC (for the correlation: its smallest / mean value)", "",
             "| score | worst | mean | worst cell |",
             "|---|---|---|---|"]
    for c in cols:
        lines.append(f"| {c} | {df[c].min():.3f} | {df[c].mean():.3f} | {df.loc[df[c].idxmin(), 'cell']} |")
    lines += ["", "| cell | ASR | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for r in rows:
        lines.append(f"| {r['cell']} | {r['asr']:.3f} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
    path = out / f"probe_kinds_{a.name}.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return path


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--panel", required=True, help="a finished panel run (its cells and worlds)")
    p.add_argument("--cells", nargs="*", default=None, help="cell names (default: the learned cells of --panel)")
    p.add_argument("--learned", type=float, default=0.8)
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    p.add_argument("--clean", action="store_true", help="also probe with the world's clean model (the control)")
    p.add_argument("--clean-from", default=None,
                   help="the panel folder whose worlds hold the clean models (default --panel; a run without "
                        "BadCLIP trains none: take them from a run of the same preset and seed)")
    p.add_argument("--name", default="panel", help="suffix of the result files")
    p.add_argument("--report-only", action="store_true")
    add_cell_options(p, "runs/probe_kinds")
    a = p.parse_args(argv)
    a.cells = a.cells or learned_cells(Path(a.panel), a.learned)
    return a


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    if a.part:
        worker(a)
        return
    if not a.report_only:
        (Path(a.work) / "cells").mkdir(parents=True, exist_ok=True)
        for d in WORLD_DIRS:  # the cells train on the panel's worlds
            link, src = Path(a.work) / d, (Path(a.panel) / d).resolve()
            if src.exists() and not link.exists():
                link.symlink_to(src, target_is_directory=True)
        spawn_workers(__file__, argv if argv is not None else sys.argv[1:], a.jobs)
    print(f"-> {report(a)}")


if __name__ == "__main__":
    main()
