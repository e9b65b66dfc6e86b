"""The tables of ``benchmarks/defences.py``: ``defences_<preset>.md`` / ``.csv`` from the stored runs."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from _results import write_csv

LEARNED = 0.8  # ASR from which the backdoor counts as learned
GOAL_RELATIVE_CUT, GOAL_CA_POINTS = 0.80, 3.0
GOAL_ROWS = ("CleanCLIP", "PAR", "filter-retrain")


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _cell(ca: float, asr: float) -> str:
    return f"{100 * ca:.1f} / {100 * asr:.1f}"


def collect(a: argparse.Namespace, models: list, jobs: list[dict]) -> tuple[dict, list[dict]]:
    """(the backdoored models' results by name, one row per finished defence run)."""
    work = Path(a.work)
    base = {f"{att}_{r:g}": _load(work / "models" / f"{att}_{r:g}" / "result.json") for att, r in models}
    out = []
    for job in jobs:
        rec = _load(Path(job["out"]) / "run.json")
        if rec is None or "after" not in rec:
            continue
        out.append({"sweep": job["sweep"], "label": job["label"], "method": job["method"], "model": job["model"],
                    "ca_before": rec["before"]["clean_accuracy"], "asr_before": rec["before"]["attack_success_rate"],
                    "ca_after": rec["after"]["clean_accuracy"], "asr_after": rec["after"]["attack_success_rate"],
                    "ca_change_points": rec["ca_change"], "asr_reduction": rec.get("asr_reduction"),
                    "epochs": rec["train_config"]["epochs"], "lr": rec["train_config"]["lr"],
                    "data": Path(job["data"]).name, "seconds": rec["timings_s"].get("total")})
    return base, out


def main_table(rows: list[tuple], models: list, base: dict, runs: list[dict]) -> list[str]:
    names = [f"{att}_{r:g}" for att, r in models]
    head = [f"{att} {100 * r:g}%" for att, r in models]
    lines = ["| defence | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    lines.append("| no defence | " + " | ".join(
        _cell(base[n]["clean_accuracy"], base[n]["attack_success_rate"]) + ("" if base[n]["attack_success_rate"] >= LEARNED
                                                                           else " (not learned)")
        if base.get(n) else "-" for n in names) + " |")
    by = {(r["label"], r["model"]): r for r in runs if r["sweep"] == "table"}
    for label, _, _ in rows:
        cells = [_cell(by[(label, n)]["ca_after"], by[(label, n)]["asr_after"]) if (label, n) in by
                 else "not run (not learned)" if label.startswith(("filter-retrain", "ABL")) and base.get(n)
                 and base[n]["attack_success_rate"] < LEARNED else "-" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def goal_table(runs: list[dict]) -> list[str]:
    """Per goal defence and learned model: relative ASR cut and CA change; does it meet the goal?"""
    lines = ["| defence | model | ASR before -> after | relative cut | CA change (points) | goal met |",
             "|---|---|---|---|---|---|"]
    for r in runs:
        if r["sweep"] != "table" or not r["label"].startswith(GOAL_ROWS) or r["asr_before"] < LEARNED:
            continue
        cut = r["asr_reduction"]
        ok = cut is not None and cut >= GOAL_RELATIVE_CUT and r["ca_change_points"] >= -GOAL_CA_POINTS
        lines.append(f"| {r['label']} | {r['model']} | {r['asr_before']:.3f} -> {r['asr_after']:.3f} | "
                     f"{cut:.1%} | {r['ca_change_points']:+.1f} | {'yes' if ok else 'no'} |")
    return lines


def sweep_table(runs: list[dict], sweep: str) -> list[str]:
    lines = ["| run | finetuning set | lr | epochs | CA before -> after | ASR before -> after |", "|---|---|---|---|---|---|"]
    for r in runs:
        if r["sweep"] == sweep:
            lines.append(f"| {r['label']} | {r['data']} | {r['lr']:g} | {r['epochs']} | {r['ca_before']:.3f} -> "
                         f"{r['ca_after']:.3f} | {r['asr_before']:.3f} -> {r['asr_after']:.3f} |")
    return lines


def report(a: argparse.Namespace, rows: list[tuple], models: list, jobs: list[dict], world: str = "shapes") -> Path:
    base, runs = collect(a, models, jobs)
    out = Path(a.out)
    fields = ["sweep", "label", "method", "model", "ca_before", "asr_before", "ca_after", "asr_after",
              "ca_change_points", "asr_reduction", "epochs", "lr", "data", "seconds"]
    write_csv(out / f"defences_{a.preset}.csv", fields, runs)
    speed = _load(Path(a.work) / "speed.json")
    md = [f"# Model defences (`benchmarks/defences.py --preset {a.preset}`)", "",
          "CA / ASR in % (zero-shot; ASR = share of triggered test images whose true class is not the target "
          f"that are classified as the target). Models: tiny-rn backdoored on the {world} world; see the script's "
          "docstring for the set-up. `-`: not run (out of time).", "", *main_table(rows, models, base, runs), "",
          f"## The goal: relative ASR cut >= {GOAL_RELATIVE_CUT:.0%} at <= {GOAL_CA_POINTS:g} points of CA "
          f"(learned models, ASR >= {LEARNED})", "", *goal_table(runs), "",
          "## Size of the clean finetuning set (CleanCLIP, BadNets 5 %)", "", *sweep_table(runs, "size"), "",
          "## Learning rate (BadNets 5 %)", "", *sweep_table(runs, "lr"), ""]
    if speed:
        md += ["## Speed", "", f"MMCL {speed['mmcl']:.0f} pairs/s, CleanCLIP {speed['cleanclip']:.0f} pairs/s: a "
               f"CleanCLIP step costs {speed['ratio_step_cost']:.2f}x a plain step "
               f"({speed['loader_workers']} loader worker(s), augmentation in the workers).", ""]
    path = out / f"defences_{a.preset}.md"
    path.write_text("\n".join(md))
    return path
