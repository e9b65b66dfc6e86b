"""Poison-rate sweep: detection AUROC of every detector x reference mode, per attack and rate.

For every attack (BadNets, Blended, SIG, WaNet) and poison rate (0.1 %, 0.5 %, 1 %, 5 %, 10 % by
default) on the embedded shapes world (20,000 training pairs, target "star", dirty-label):

1. poison (seeded) -> train tiny-rn for the first epoch count of ``--epochs`` -> zero-shot CA/ASR;
   if ASR < ``--learned`` (0.8) the model is trained again from scratch with the next, longer
   epoch count (the ladder), until the backdoor is learned or the ladder ends (then the cell is
   reported as "not learned"; its detection figures are still given, marked);
2. embed the training pairs (image + caption) with the final model;
3. scan with every registered detector under every reference mode (global exact kNN, the DAO
   paper's per-batch reference B=2048, one fixed random reference M=4096, 8 random references
   of 2048 averaged, and ``auto``; ``--modes``), plus variants of ``fused``: two that leave
   caption signals out, ``fused_image_only`` (DAO + density_anomaly) and
   ``fused_no_caption_dup`` (image + CLIPScore + caption disagreement) -- the shapes world's
   poison captions are templated, which makes ``caption_dup`` stronger here than on a
   web-scale set -- and ``fused_rank`` (mean-rank combination instead of Fisher's).

Cells are independent: ``--jobs J`` runs J worker processes (each with ``--threads`` torch
threads), each cell writes ``<work>/cells/<attack>_<rate>/result.json`` and is skipped when it
exists (resumable). The report step merges the cells into ``rate_sweep.csv`` (one row per cell x
mode x detector) and ``rate_sweep.md``.

Usage (a GPU is used with ``--device auto`` when there is one)::

    # what produced benchmarks/results/rate_sweep.md (one H100, 16 CPU cores: about 8.5 min)
    python benchmarks/rate_sweep.py --device cuda --jobs 8 --threads 2 --modes global batch reference multi
    # on a 2-core CPU: about 5 min per cell (10 epochs) with one job
    OMP_WAIT_POLICY=PASSIVE python benchmarks/rate_sweep.py --jobs 1
    python benchmarks/rate_sweep.py --report-only        # re-write the tables from the cells
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

# benchmarks/ is on sys.path when a script runs
from _results import (add_cell_options, limit_threads, share_of, spawn_workers, train_until_learned,
                      write_csv)

#: attack name -> (registered trigger, parameters scaled to the 32-px world)
ATTACKS = {
    "badnets": ("badnets", {"size": 8, "cell": 2}),
    "blended": ("blended", {"alpha": 0.2}),
    "sig": ("sig", {}),
    # strength 1 moves pixels by about half a pixel at 32 px: not learnable by the tiny CNN
    # (ASR 0.14 at 5 %, benchmarks/results/attacks.md); strength 4 is about 2 px.
    "wanet": ("wanet", {"k": 4, "strength": 4.0}),
}
RATES = [0.001, 0.005, 0.01, 0.05, 0.1]
FIELDS = ["attack", "rate", "n_poisoned", "epochs", "clean_accuracy", "attack_success_rate", "learned",
          "mode", "detector", "auroc", "auprc", "tpr_at_1pct_fpr", "device", "seed"]
#: fused variants without (some) caption signals: label -> Fused parameters
FUSED_VARIANTS = {
    "fused_image_only": {"signals": ()},
    "fused_no_caption_dup": {"signals": ("clipscore", "caption_disagreement")},
    "fused_rank": {"method": "rank"},  # the mean-rank combination (the default before 2026-11-22)
}


def modes(batch_size: int = 2048, reference_size: int = 4096, multi_size: int = 2048,
          n_references: int = 8) -> dict[str, dict]:
    """Reference-mode label -> find_suspects keyword arguments."""
    return {
        "global": dict(reference="global"),
        f"batch B={batch_size}": dict(reference="batch", batch_size=batch_size),
        f"reference M={reference_size}": dict(reference="reference", reference_size=reference_size),
        f"multi {n_references}x{multi_size}": dict(reference="multi_reference", reference_size=multi_size,
                                                   n_references=n_references),
        "auto": dict(reference="auto"),
    }


def cell_name(attack: str, rate: float) -> str:
    return f"{attack}_{rate:g}"


def run_cell(attack: str, rate: float, a: argparse.Namespace) -> dict:
    """Poison, train (escalating epochs until learned), embed and scan one cell; returns its record."""
    from clipguard.attacks import get_trigger, poison_dataset
    from clipguard.data.manifest import read_manifest
    from clipguard.detect import Scan
    from clipguard.embed import embed_dataset
    from clipguard.utils.device import resolve_device
    from clipguard.utils.io import read_json

    work, world = Path(a.work), Path(a.work) / "world"
    cell = work / "cells" / cell_name(attack, rate)
    shutil.rmtree(cell, ignore_errors=True)
    t0 = time.perf_counter()
    templates = read_json(world / "classes.json")["templates"]
    name, params = ATTACKS[attack]
    res = poison_dataset(read_manifest(world / "train" / "manifest.parquet"), cell / "data",
                         get_trigger(name, **params), target=a.target, rate=rate, templates=templates,
                         seed=a.seed, progress=False)
    bundle, attempts, _ = train_until_learned(res.manifest_path, cell, world, res.spec_path, epochs_ladder=a.epochs,
                                              learned=a.learned, seed=a.seed, device=a.device)
    embed_dataset(bundle, read_manifest(res.manifest_path), cell / "emb", progress=False, device=a.device)
    scan = Scan.from_folder(cell / "emb")
    rows = []
    for label, kw in modes().items():
        if label.split()[0] not in a.modes:
            continue
        t = time.perf_counter()
        scan.find_suspects(None, k=a.k, seed=a.seed, **kw)
        metrics = dict(scan.metrics)
        for variant, prm in FUSED_VARIANTS.items():
            scan.find_suspects(["fused"], k=a.k, seed=a.seed, detector_params={"fused": prm}, **kw)
            metrics[variant] = scan.metrics["fused"]
        for det, m in metrics.items():
            rows.append({"mode": label, "detector": det, **m})
        best = max(metrics.items(), key=lambda kv: kv[1]["auroc"])
        print(f"[{cell.name}] {label}: best {best[0]} {best[1]['auroc']:.4f} ({time.perf_counter() - t:.1f} s)",
              flush=True)
    last = attempts[-1]
    record = {"attack": attack, "trigger": {"attack": name, **params}, "rate": rate, "n_poisoned": res.n_poisoned,
              "epochs": last["epochs"], "clean_accuracy": last["clean_accuracy"],
              "attack_success_rate": last["attack_success_rate"],
              "learned": last["attack_success_rate"] >= a.learned, "attempts": attempts, "detection": rows,
              "k": a.k, "seed": a.seed, "device": str(resolve_device(a.device)),
              "seconds": round(time.perf_counter() - t0, 1)}
    (cell / "result.json").write_text(json.dumps(record, indent=1))
    if not a.keep_data:
        shutil.rmtree(cell / "data" / "images", ignore_errors=True)
    return record


def cells(a: argparse.Namespace) -> list[tuple[str, float]]:
    """Rate-major order: the slow cells (low rates, trained again for longer) start first."""
    return [(att, r) for r in a.rates for att in a.attacks]


def worker(a: argparse.Namespace) -> None:
    limit_threads(a.threads)
    for att, rate in share_of(a.part, cells(a)):
        if not (Path(a.work) / "cells" / cell_name(att, rate) / "result.json").is_file():
            run_cell(att, rate, a)


def report(a: argparse.Namespace) -> Path:
    """Merge the cells' result.json into rate_sweep.csv and rate_sweep.md; returns the .md path."""
    records = []
    for att, rate in cells(a):
        p = Path(a.work) / "cells" / cell_name(att, rate) / "result.json"
        if p.is_file():
            records.append(json.loads(p.read_text()))
    if not records:
        raise SystemExit(f"no finished cell under {a.work}/cells")
    rows = [{**{k: rec[k] for k in ("attack", "rate", "n_poisoned", "epochs", "clean_accuracy",
                                     "attack_success_rate", "learned", "device", "seed")},
             **{k: d[k] for k in ("mode", "detector", "auroc", "auprc", "tpr_at_1pct_fpr")}}
            for rec in records for d in rec["detection"]]
    out = Path(a.out)
    write_csv(out / "rate_sweep.csv", FIELDS, rows)

    def cell_auroc(rec: dict, det: str, mode: str | None = None) -> tuple[float, str]:
        cand = [d for d in rec["detection"] if d["detector"] == det and (mode is None or d["mode"] == mode)]
        best = max(cand, key=lambda d: d["auroc"])
        return best["auroc"], best["mode"]

    lines = [f"# Poison-rate sweep (AUROC; {time.strftime('%Y-%m-%d %H:%M')})", "",
             f"tiny-rn on the shapes world ({a.n_train} training pairs), target '{a.target}', dirty-label, "
             f"k = {a.k}, seed {a.seed}, device {records[0]['device']}. Epochs: the first of {a.epochs} whose "
             f"model reaches ASR >= {a.learned} (else the last, marked 'not learned'). Attacks: "
             + "; ".join(f"{k} {v[0]} {v[1]}" for k, v in ATTACKS.items() if k in a.attacks) + ".", "",
             "## Summary: best configuration and the signals without captions", "",
             "`fused global` is what `--reference auto` scans with at this size (global up to 100,000 "
             "samples); `fused_rank` is the mean-rank combination (the default before 2026-11-22).", "",
             "| attack | rate | poisoned | epochs | CA | ASR | best (detector, mode) | fused global | "
             "fused_rank global | fused multi | fused no caption_dup (best mode) | fused image-only (best mode) | "
             "DAO per-batch (paper) | k-dist per-batch |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for rec in records:
        best = max(rec["detection"], key=lambda d: d["auroc"])
        def at(det: str, prefix: str) -> str:
            hit = [d["auroc"] for d in rec["detection"] if d["detector"] == det and d["mode"].startswith(prefix)]
            return f"{hit[0]:.4f}" if hit else ""

        fg, fr, fm = at("fused", "global"), at("fused_rank", "global"), at("fused", "multi")
        nd, nd_mode = cell_auroc(rec, "fused_no_caption_dup")
        io, io_mode = cell_auroc(rec, "fused_image_only")
        dao_b, kd_b = at("dao", "batch"), at("kdist", "batch")
        learned = "" if rec["learned"] else " (not learned)"
        lines.append(f"| {rec['attack']} | {rec['rate']:.1%} | {rec['n_poisoned']} | {rec['epochs']} | "
                     f"{rec['clean_accuracy']:.3f} | {rec['attack_success_rate']:.3f}{learned} | "
                     f"**{best['auroc']:.4f}** ({best['detector']}, {best['mode']}) | {fg} | {fr} | {fm} | "
                     f"{nd:.4f} ({nd_mode}) | {io:.4f} ({io_mode}) | {dao_b} | {kd_b} |")
    lines += ["", "## Every detector x reference mode", ""]
    for rec in records:
        mode_list = list(dict.fromkeys(d["mode"] for d in rec["detection"]))
        dets = list(dict.fromkeys(d["detector"] for d in rec["detection"]))
        cell = {(d["detector"], d["mode"]): d["auroc"] for d in rec["detection"]}
        lines += [f"### {rec['attack']} at {rec['rate']:.1%} ({rec['n_poisoned']} poisoned; CA "
                  f"{rec['clean_accuracy']:.3f}, ASR {rec['attack_success_rate']:.3f}, {rec['epochs']} epochs)", "",
                  "| detector | " + " | ".join(mode_list) + " |", "|---|" + "---|" * len(mode_list)]
        for det in dets:
            lines.append(f"| {det} | " + " | ".join(f"{cell[(det, m)]:.4f}" for m in mode_list) + " |")
        lines.append("")
    md = out / "rate_sweep.md"
    md.write_text("\n".join(lines))
    return md


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--attacks", nargs="*", default=list(ATTACKS), choices=list(ATTACKS))
    p.add_argument("--rates", nargs="*", type=float, default=RATES)
    p.add_argument("--epochs", nargs="*", type=int, default=[10, 30],
                   help="epoch ladder: train again with the next count while ASR < --learned")
    p.add_argument("--modes", nargs="*", default=["global", "batch", "reference", "multi", "auto"],
                   help="reference modes to scan with (auto = global up to 100,000 samples)")
    p.add_argument("--learned", type=float, default=0.8, help="ASR from which the backdoor counts as learned")
    p.add_argument("--n-train", type=int, default=20000)
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--target", default="star")
    add_cell_options(p, "runs/rate_sweep")
    p.add_argument("--keep-data", action="store_true", help="keep the poisoned images of each cell")
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args(argv)
    if a.part:
        worker(a)
        return
    if not a.report_only:
        from clipguard.data.synth import generate_world

        world = Path(a.work) / "world"
        if not (world / "classes.json").is_file():
            generate_world(world, n_train=a.n_train, n_test=a.n_test, seed=a.seed, progress=False)
        spawn_workers(__file__, argv if argv is not None else sys.argv[1:], a.jobs)
    print(f"-> {report(a)}")


if __name__ == "__main__":
    main()
