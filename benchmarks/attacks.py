"""Attack benchmark: CA and ASR of the demo's tiny CLIP trained on each attack of the catalogue.

For every attack and poison rate: poison the embedded world -> train tiny-rn exactly as the demo
does -> zero-shot CA / ASR on the labelled test split (ASR convention: triggered non-target test
images classified as the target; class embeddings averaged over all templates), plus the DAO and
k-distance AUROC of the training images' embeddings (global and per-batch reference) as a preview
for the detection work. A clean model gives the CA baseline and is the model BadCLIP optimises
against.

Resumable: rows already in the CSV are skipped. Run by hand (about 4 minutes per row on 2 cores):

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/attacks.py --rates 0.05 0.005

Writes ``benchmarks/results/attacks.csv`` and ``attacks.md``.
"""
from __future__ import annotations

import argparse
import csv
import shutil
import time
from pathlib import Path

from clipguard.attacks import get_trigger, poison_dataset
from clipguard.attacks.badclip import BadCLIPConfig, optimize_badclip_patch
from clipguard.data.manifest import read_manifest
from clipguard.data.synth import generate_world
from clipguard.detect import run_scan
from clipguard.embed import embed_dataset
from clipguard.evaluate.api import evaluate_model
from clipguard.models import load_model
from clipguard.train import TrainConfig, train_from_manifest
from clipguard.utils.io import read_json

#: name -> (attack, params, mode, extra); parameters scaled to the 32-px world
CATALOGUE = {
    "badnets": ("badnets", {"size": 8, "cell": 2}, "dirty", {}),
    "badnets-noise": ("badnets", {"pattern": "noise", "size": 8}, "dirty", {}),
    "blended": ("blended", {"alpha": 0.2}, "dirty", {}),
    "sig": ("sig", {}, "dirty", {}),
    "wanet": ("wanet", {"k": 4, "strength": 1.0}, "dirty", {}),
    # s=1 moves pixels by about half a pixel: too subtle for the tiny CNN at 32 px; s=4 is ~2 px
    "wanet-s4": ("wanet", {"k": 4, "strength": 4.0}, "dirty", {}),
    "nashville": ("nashville", {}, "dirty", {}),
    "badnets-clean-label": ("badnets", {"size": 8, "cell": 2}, "clean", {}),
    "multi": ("multi", {"triggers": [{"attack": "badnets", "params": {"size": 8, "cell": 2}},
                                     {"attack": "blended", "params": {"alpha": 0.2}}]}, "dirty", {}),
    "tdpa": ("tdpa", {}, "dirty", {}),
    "badclip": ("badclip", {}, "dirty", {}),
    "badnets-adaptive": ("badnets", {"size": 8, "cell": 2}, "dirty", {"adaptive_density": 1.0}),
}
FIELDS = ["attack", "rate", "n_poisoned", "clean_accuracy", "attack_success_rate", "asr_template_mean",
          "dao_auroc_global", "dao_auroc_batch", "kdist_auroc_global", "kdist_auroc_batch", "train_seconds",
          "total_seconds", "epochs", "seed"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--work", default="runs/bench_attacks", help="scratch folder (datasets, models)")
    ap.add_argument("--attacks", nargs="*", default=list(CATALOGUE))
    ap.add_argument("--rates", nargs="*", type=float, default=[0.05, 0.005])
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--target", default="star")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "attacks.csv"
    done = set()
    if csv_path.is_file():
        with open(csv_path) as f:
            done = {(r["attack"], float(r["rate"])) for r in csv.DictReader(f)}
    world = work / "world"
    if not (world / "classes.json").is_file():
        generate_world(world, n_train=args.n_train, n_test=2000, seed=args.seed)
    classes, test = world / "classes.json", world / "test" / "manifest.parquet"
    templates = read_json(classes)["templates"]
    tcfg = TrainConfig(epochs=args.epochs, seed=args.seed)

    clean_model = work / "clean_model"
    if not (clean_model / "model.safetensors").is_file():
        t0 = time.perf_counter()
        train_from_manifest(world / "train" / "manifest.parquet", clean_model, config=tcfg)
        ev = evaluate_model(clean_model, test, classes)
        write_row(csv_path, {"attack": "none (clean)", "rate": 0.0, "n_poisoned": 0,
                             "clean_accuracy": ev["clean_accuracy"], "train_seconds": round(time.perf_counter() - t0, 1),
                             "epochs": args.epochs, "seed": args.seed})

    for name in args.attacks:
        attack, params, mode, extra = CATALOGUE[name]
        for rate in args.rates:
            if (name, rate) in done:
                continue
            t0 = time.perf_counter()
            run = work / f"{name}_{rate}"
            shutil.rmtree(run, ignore_errors=True)
            if attack == "badclip":
                trig = optimize_badclip_patch(load_model(clean_model),
                                              read_manifest(world / "train" / "manifest.parquet"), run / "trigger",
                                              target=args.target, templates=templates,
                                              config=BadCLIPConfig(size=8, steps=300, seed=args.seed))
                params = {"patch": trig.patch, "location": trig.location}
            trigger = get_trigger(attack, **params)
            res = poison_dataset(read_manifest(world / "train" / "manifest.parquet"), run / "data", trigger,
                                 target=args.target, rate=rate, mode=mode, templates=templates, seed=args.seed)
            t1 = time.perf_counter()
            train_from_manifest(res.manifest_path, run / "model", config=tcfg, **extra)
            train_s = time.perf_counter() - t1
            ev = evaluate_model(run / "model", test, classes, attack_spec=res.spec_path, seed=args.seed)
            embed_dataset(load_model(run / "model"), read_manifest(res.manifest_path), run / "emb", text=False)
            det = {ref: run_scan(run / "emb", run / f"scan_{ref}", detectors=["kdist", "dao"], reference=ref).metrics
                   for ref in ("global", "batch")}
            write_row(csv_path, {
                "attack": name, "rate": rate, "n_poisoned": res.n_poisoned,
                "clean_accuracy": ev["clean_accuracy"], "attack_success_rate": ev["attack_success_rate"],
                "asr_template_mean": ev.get("attack_success_rate_template_mean"),
                "dao_auroc_global": det["global"]["dao"]["auroc"], "dao_auroc_batch": det["batch"]["dao"]["auroc"],
                "kdist_auroc_global": det["global"]["kdist"]["auroc"],
                "kdist_auroc_batch": det["batch"]["kdist"]["auroc"],
                "train_seconds": round(train_s, 1), "total_seconds": round(time.perf_counter() - t0, 1),
                "epochs": args.epochs, "seed": args.seed})
            shutil.rmtree(run / "data" / "images", ignore_errors=True)
    write_markdown(csv_path, out / "attacks.md")


def write_row(path: Path, row: dict) -> None:
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        w.writerow({k: (f"{v:.4f}" if isinstance(v, float) and k not in ("rate", "train_seconds", "total_seconds")
                        else v) for k, v in row.items()})
    print(row, flush=True)


def write_markdown(csv_path: Path, md_path: Path) -> None:
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    lines = ["| " + " | ".join(FIELDS) + " |", "|" + "---|" * len(FIELDS)]
    lines += ["| " + " | ".join(r.get(k, "") or "" for k in FIELDS) + " |" for r in rows]
    md_path.write_text("# Attack benchmark (tiny-rn on the shapes world)\n\n"
                       "ASR: triggered test images whose true class is not the target, classified as the target; "
                       "class embeddings averaged over all templates. TDPA: 1 if its one image is classified as "
                       "the target. AUROCs: DAO / k-distance (k=16) on the training images' embeddings.\n\n"
                       + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
