"""Evaluation panel (issue 9): worlds x attacks x poison rates, worst-case detection over the learned cells.

Worlds (each dirty-label, seeded):

- ``shapes``: the embedded shapes world, target ``star`` (one of its 8 shapes: a FREQUENT target);
- ``longtail-frequent``: the long-tailed world (:mod:`clipguard.data.longtail`), target its rank-1
  concept; poison captions drawn from :func:`~clipguard.data.longtail.poison_templates`, so they
  are distributed exactly like the target's clean captions;
- ``longtail-rare``: the same world, target its LAST-ranked (rarest) concept.

Attacks: BadNets (8 px patch), Blended (alpha 0.2), SIG, BadCLIP (a patch optimised against a clean
tiny-rn trained on the same world, :func:`~clipguard.attacks.badclip.optimize_badclip_patch`).
Rates: 0.1 / 0.5 / 1 / 5 %.

Per cell: poison -> train tiny-rn (recording every pair's image-caption cosine at the first
``--record-epochs`` epochs: the training-dynamics signal) -> zero-shot CA / ASR -> embed the
training pairs -> scan with EVERY registered detector (the opt-in ``spectral`` and
``activation_cluster`` and ``learning_speed`` included) under the reference modes ``batch`` (the DAO
paper's per-batch reference) and ``auto`` (what ``clipguard scan`` uses by default: the global exact
kNN up to 100,000 samples; ``global`` is scanned separately only beyond that). Each cell keeps its
per-sample scores (``cells/<cell>/scores_<mode>.parquet``: every ``<detector>_score``, the
``learning_speed_raw`` speed, ``poisoned``) so the report can evaluate fusion rules on the stored
component scores without training again (:func:`clipguard.detect.detectors.fused.fuse_components`
is exactly what the ``fused`` detector computes from them).

The report (``panel.md``, ``panel.csv``) gives, per detector and mode, the WORST and the mean AUROC
and AUPRC over the learned cells (ASR >= ``--learned``), with captions and image-only (the image
detectors, and ``fused`` with no caption signal: what ``clipguard scan`` gives on image
embeddings alone), and per cell the default's gap to the best image-only single signal.

Presets (``--preset``): ``cpu`` (what a 2-core machine runs in about 1 h:
per world -- 5,000 training pairs, 128 concepts, 8 epochs, BadCLIP 100 steps) and ``gpu`` (shapes 20,000, long-tailed
100,000 pairs / 256 concepts -- where the paper's 0.1 % is 100 poisoned pairs --, 10 epochs then 30
while not learned, BadCLIP 300 steps).

Usage::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/panel.py --preset cpu --jobs 2 --threads 1
    python benchmarks/panel.py --preset gpu --device cuda --jobs 8 --threads 2
    python benchmarks/panel.py --preset cpu --report-only      # re-write the tables from the cells

Cells are resumable (a finished cell has ``result.json`` and is skipped). ``--probe`` also probes each cell's
model while it is in memory (perturbation stability of its training pairs, ``<cell>/stability.parquet``, joined to
the scan as ``scan --record`` does: the detector ``perturbation`` in the tables; AUROC also in ``result.json`` under
``probe``; ``--probe-kinds`` names its perturbations, default noise and blur), ``--epochs`` replaces the preset's
epoch ladder and ``--loader-workers`` sets the DataLoader workers of the embedding and the probe.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path


# benchmarks/ is on sys.path when a script runs
from _results import add_cell_options, limit_threads, share_of, spawn_workers, train_until_learned

from clipguard.detect.options import AUTO_GLOBAL_MAX_N

ATTACKS = {
    "badnets": ("badnets", {"size": 8, "cell": 2}),
    "blended": ("blended", {"alpha": 0.2}),
    "sig": ("sig", {}),
    "badclip": ("badclip", {}),
}
PANEL_ATTACKS = list(ATTACKS)
"""The panel's attacks (the default of ``--attacks``)."""
ATTACKS.update({
    # trigger designs the panel was not measured on (issue 9: a probe measured on one design is a hypothesis)
    "wanet": ("wanet", {}),
    "nashville": ("nashville", {}),
    "blended-faint": ("blended", {"alpha": 0.08}),
    "sig-faint": ("sig", {"amplitude": 0.08}),
    "badnets-noise": ("badnets", {"pattern": "noise", "size": 6}),
})
RATES = [0.001, 0.005, 0.01, 0.05]
WORLDS = ("shapes", "longtail-frequent", "longtail-rare")
PRESETS = {
    "cpu": {"n_shapes": 5000, "n_longtail": 5000, "n_concepts": 128, "n_test": 1000, "epochs": [8],
            "clean_epochs": 8, "badclip_steps": 100},
    "gpu": {"n_shapes": 20000, "n_longtail": 100000, "n_concepts": 256, "n_test": 5000, "epochs": [10, 30],
            "clean_epochs": 10, "badclip_steps": 300},
    # the DAO paper's setting on a CPU: rare target at 0.1 % of 30,000 pairs (30 poisoned), 10 epochs;
    # run with --worlds longtail-rare --rates 0.001 --attacks badnets sig
    "paper-cpu": {"n_shapes": 5000, "n_longtail": 30000, "n_concepts": 256, "n_test": 2000, "epochs": [10],
                  "clean_epochs": 10, "badclip_steps": 100},
    "smoke": {"n_shapes": 900, "n_longtail": 900, "n_concepts": 32, "n_test": 200, "epochs": [1],
              "clean_epochs": 1, "badclip_steps": 5},
}

def world_dir(a: argparse.Namespace, world: str) -> Path:
    return Path(a.work) / ("world_shapes" if world == "shapes" else "world_longtail")


def target_of(a: argparse.Namespace, world: str) -> str:
    """The target class name of a world."""
    if world == "shapes":
        return "star"
    classes = json.loads((world_dir(a, world) / "classes.json").read_text())["classes"]
    return classes[0] if world == "longtail-frequent" else classes[-1]


def poison_templates_of(a: argparse.Namespace, world: str) -> list[str]:
    from clipguard.data.longtail import poison_templates

    if world == "shapes":
        return json.loads((world_dir(a, world) / "classes.json").read_text())["templates"]
    return poison_templates(target_of(a, world))


def make_worlds(a: argparse.Namespace) -> None:
    """Generate the worlds, and the BadCLIP patch of each world's target (against a clean model)."""
    from clipguard.attacks.badclip import BadCLIPConfig, optimize_badclip_patch
    from clipguard.data.longtail import generate_longtail_world
    from clipguard.data.manifest import read_manifest
    from clipguard.data.synth import generate_world
    from clipguard.train import TrainConfig, train_from_manifest

    pr = PRESETS[a.preset]
    for world in a.worlds:
        out = world_dir(a, world)
        if not (out / "classes.json").is_file():
            t = time.perf_counter()
            if world == "shapes":
                generate_world(out, n_train=pr["n_shapes"], n_test=pr["n_test"], seed=a.seed, progress=False)
            else:
                generate_longtail_world(out, n_train=pr["n_longtail"], n_test=pr["n_test"],
                                        n_concepts=pr["n_concepts"], seed=a.seed, progress=False)
            print(f"[world {out.name}] {time.perf_counter() - t:.0f} s", flush=True)
        patch_dir = Path(a.work) / "badclip" / world
        if "badclip" in a.attacks and not (patch_dir / "trigger.png").is_file():
            t = time.perf_counter()
            manifest = out / "train" / "manifest.parquet"
            bundle, _ = train_from_manifest(manifest, out / "clean_model", config=TrainConfig(
                epochs=pr["clean_epochs"], seed=a.seed), progress=False, device=a.device)
            optimize_badclip_patch(bundle, read_manifest(manifest), patch_dir, target=target_of(a, world),
                                   templates=poison_templates_of(a, world),
                                   config=BadCLIPConfig(steps=pr["badclip_steps"], seed=a.seed), progress=False)
            print(f"[badclip {world}] clean model + patch {time.perf_counter() - t:.0f} s", flush=True)


def cell_name(world: str, attack: str, rate: float) -> str:
    return f"{world}_{attack}_{rate:g}"


def modes(n: int) -> dict[str, dict]:
    """Reference-mode label -> find_suspects keyword arguments: the paper's per-batch reference (B = 2048,
    or n/3 when smaller) and ``auto``; ``global`` too when ``auto`` does not pick it (n > 100,000)."""
    b = min(2048, max(256, n // 3))
    out = {f"batch B={b}": dict(reference="batch", batch_size=b), "auto": dict(reference="auto")}
    if n > AUTO_GLOBAL_MAX_N:
        out["global"] = dict(reference="global")
    return out


def _trigger(a: argparse.Namespace, world: str, attack: str):
    from clipguard.attacks import get_trigger

    name, params = ATTACKS[attack]
    if attack == "badclip":
        params = {"patch": str(Path(a.work) / "badclip" / world / "trigger.png")}
    return get_trigger(name, **params)


def repoison_cell(cell: Path, out: Path, work: str | Path | None = None):
    """Poison the clean split of finished panel ``cell`` again into ``out`` (same world, attack, target, rate and
    seed, from its ``result.json``; the panel deletes a finished cell's images) and check that the poisoned ids
    are the cell's (``data/attack.json``). ``work``: the panel folder holding the worlds (default: the cell's).
    Returns ``(poison result, result.json record, the panel namespace)``."""
    from clipguard.attacks import poison_dataset
    from clipguard.data.manifest import read_manifest

    r = json.loads((cell / "result.json").read_text())
    pa = parse(["--preset", r.get("preset", "cpu"), "--work", str(work or cell.parent.parent)])
    world = r["world"]
    res = poison_dataset(read_manifest(world_dir(pa, world) / "train" / "manifest.parquet"), out,
                         _trigger(pa, world, r["attack"]), target=target_of(pa, world), rate=r["rate"],
                         templates=poison_templates_of(pa, world), seed=r.get("seed", 0), progress=False)
    stored = json.loads((cell / "data" / "attack.json").read_text())["poisoned_ids"]
    if sorted(json.loads(res.spec_path.read_text())["poisoned_ids"]) != sorted(stored):
        raise SystemExit(f"{cell.name}: poisoning again did not give the panel's poisoned ids")
    return res, r, pa


def run_cell(world: str, attack: str, rate: float, a: argparse.Namespace) -> dict:
    """Poison, train, embed and scan one cell; writes its scores and result.json."""
    from clipguard.attacks import poison_dataset
    from clipguard.data.manifest import read_manifest
    from clipguard.detect import Scan
    from clipguard.detect.detectors import DETECTORS
    from clipguard.embed import embed_dataset
    from clipguard.train import learning_speed, read_dynamics

    cell = Path(a.work) / "cells" / cell_name(world, attack, rate)
    shutil.rmtree(cell, ignore_errors=True)
    t0 = time.perf_counter()
    res = poison_dataset(read_manifest(world_dir(a, world) / "train" / "manifest.parquet"), cell / "data",
                         _trigger(a, world, attack), target=target_of(a, world), rate=rate,
                         templates=poison_templates_of(a, world), seed=a.seed, progress=False)
    bundle, attempts, model_dir = train_until_learned(
        res.manifest_path, cell, world_dir(a, world), res.spec_path, epochs_ladder=a.epochs or PRESETS[a.preset]["epochs"],
        learned=a.learned, seed=a.seed, device=a.device, record_epochs=a.record_epochs)
    embed_dataset(bundle, read_manifest(res.manifest_path), cell / "emb", progress=False, device=a.device,
                  num_workers=a.loader_workers)
    probe = _probe(cell, bundle, res.manifest_path, attempts[-1]["attack_success_rate"], a) if a.probe else None
    speed = learning_speed(read_dynamics(model_dir))
    scan = Scan.from_folder(cell / "emb").with_dynamics(model_dir)
    if probe is not None:
        scan.with_record(cell / "stability.parquet")  # the detector perturbation, as `scan --record` adds it
    rows = []
    for label, kw in modes(len(speed)).items():
        if a.modes and label.split()[0] not in a.modes:
            continue
        t = time.perf_counter()
        scan.find_suspects([n for n in DETECTORS.names() if not DETECTORS.get(n).missing_inputs(scan.available_inputs)],
                           k=a.k, seed=a.seed, **kw)   # every detector but those of a record not given (perturbation)
        metrics = dict(scan.metrics)
        scan_scores = scan.scores
        frame = scan_scores[["id"] + [c for c in scan_scores.columns if c.endswith("_score")]].copy()
        frame["poisoned"] = scan_scores["poisoned"].to_numpy()
        frame["learning_speed_raw"] = speed.reindex(frame["id"]).to_numpy()  # higher = learned faster
        frame.to_parquet(cell / f"scores_{label.split()[0]}.parquet", index=False)
        for det, m in metrics.items():
            rows.append({"mode": label, "detector": det, **m})
        print(f"[{cell.name}] {label}: fused {metrics['fused']['auroc']:.4f} ({time.perf_counter() - t:.1f} s)",
              flush=True)
    if probe is not None:
        probe.update(_probe_metrics(cell, scan.scores))
        aurocs = ", ".join(f"{k} {probe[f'{k}_auroc']:.4f}" for k in a.probe_kinds)
        print(f"[{cell.name}] probe AUROC: {aurocs} ({probe['seconds']:.1f} s)", flush=True)
    last = attempts[-1]
    record = {"world": world, "target": target_of(a, world), "attack": attack, "rate": rate,
              "n_poisoned": res.n_poisoned, "epochs": last["epochs"], "clean_accuracy": last["clean_accuracy"],
              "attack_success_rate": last["attack_success_rate"], "learned": last["attack_success_rate"] >= a.learned,
              "attempts": attempts, "detection": rows, "probe": probe, "k": a.k, "seed": a.seed, "preset": a.preset,
              "seconds": round(time.perf_counter() - t0, 1)}
    (cell / "result.json").write_text(json.dumps(record, indent=1))
    shutil.rmtree(cell / "data" / "images", ignore_errors=True)
    for m in cell.glob("model_e*"):
        shutil.rmtree(m, ignore_errors=True)
    return record


def _probe(cell: Path, bundle, manifest_path: Path, asr: float, a: argparse.Namespace) -> dict:
    """Probe the cell's model on its training pairs (``clipguard.embed.perturbation_stability``, noise and blur)
    while it is in memory; the record goes to ``<cell>/stability.parquet`` (``perturbation_probe.py`` reuses it)."""
    from clipguard.data.manifest import read_manifest
    from clipguard.embed import perturbation_stability, write_stability

    t = time.perf_counter()
    frame, skips = perturbation_stability(bundle, read_manifest(manifest_path), kinds=a.probe_kinds, seed=a.seed,
                                          batch_size=256, num_workers=a.loader_workers, device=a.device, progress=False)
    seconds = time.perf_counter() - t
    frame["asr_here"] = asr
    frame["n_skipped"] = len(skips)
    write_stability(frame, cell)
    return {"seconds": round(seconds, 1), "images_per_s": round(len(frame) / seconds, 1), "n_skipped": len(skips)}


def _probe_metrics(cell: Path, scores) -> dict:
    """AUROC / AUPRC of each stability of the record: the stability itself (higher = more suspicious) for every
    kind but blur, one minus the blur stability (a sharp trigger does not survive a blur)."""
    import pandas as pd

    from clipguard.detect.metrics import detection_metrics

    stab = pd.read_parquet(cell / "stability.parquet")
    y = scores.set_index("id").loc[stab["id"], "poisoned"].to_numpy(bool)
    out = {}
    for col in (c for c in stab.columns if c.endswith("_stability")):
        kind = col[: -len("_stability")]
        v = stab[col].to_numpy()
        m = detection_metrics(y, 1 - v if kind == "blur" else v)
        out.update({f"{kind}_auroc": m["auroc"], f"{kind}_auprc": m["auprc"]})
    return out


def cells(a: argparse.Namespace) -> list[tuple[str, str, float]]:
    """Rate-major, highest rate first: the cells whose backdoor is learned come first."""
    return [(w, att, r) for r in sorted(a.rates, reverse=True) for w in a.worlds for att in a.attacks]


def worker(a: argparse.Namespace) -> None:
    limit_threads(a.threads)
    for world, att, rate in share_of(a.part, cells(a)):
        if not (Path(a.work) / "cells" / cell_name(world, att, rate) / "result.json").is_file():
            run_cell(world, att, rate, a)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=list(PRESETS), default="cpu")
    p.add_argument("--worlds", nargs="*", default=list(WORLDS), choices=list(WORLDS))
    p.add_argument("--attacks", nargs="*", default=PANEL_ATTACKS, choices=list(ATTACKS),
                   help="attacks (default: the panel's four; the others are trigger designs it was not measured on)")
    p.add_argument("--rates", nargs="*", type=float, default=RATES)
    p.add_argument("--learned", type=float, default=0.8, help="ASR from which the backdoor counts as learned")
    p.add_argument("--record-epochs", type=int, default=3, help="epochs of the training-dynamics record")
    p.add_argument("--epochs", nargs="*", type=int, default=None,
                   help="epoch ladder (train again with the next count while not learned); default: the preset's")
    p.add_argument("--modes", nargs="*", default=None, choices=("batch", "auto", "global"),
                   help="scan only these reference modes (default: every mode of modes())")
    p.add_argument("--probe", action="store_true",
                   help="also probe each cell's model (perturbation stability, <cell>/stability.parquet)")
    p.add_argument("--probe-kinds", nargs="+", default=["noise", "blur"], choices=["noise", "blur", "blend"],
                   help="perturbations of the probe (clipguard.embed.PERTURBATIONS)")
    p.add_argument("--loader-workers", type=int, default=0,
                   help="DataLoader workers for the cell's embedding and probe (a GPU needs several)")
    add_cell_options(p, None)
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args(argv)
    a.work = a.work or f"runs/panel_{a.preset}"
    return a


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    if a.part:
        worker(a)
        return
    if not a.report_only:
        make_worlds(a)
        spawn_workers(__file__, argv if argv is not None else sys.argv[1:], a.jobs)
    from panel_report import report  # benchmarks/panel_report.py: the tables

    print(f"-> {report(a)}")


if __name__ == "__main__":
    main()
