"""Natural backdoor and mismatched pairs in a planted embedded world (issue 12): does `clipguard discover`
put the planted motif among its first clusters, which pair signal finds the mismatched pairs, and does the
trigger reversed for the motif's caption reach the caption on held-out clean images while random captions,
held to the same mask size, do not?

Usage (a world planted with `clipguard plant`, a model trained on it)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/natural_backdoor.py --label shapes-s0 \
        --model runs/audit/models/natural --data runs/audit/natural/manifest.parquet \
        --images runs/heads/clean_world/train/manifest.parquet --classes runs/heads/world/classes.json \
        --work runs/audit/nat_s0

Appends its row to benchmarks/results/natural_cpu.json and rewrites natural_cpu.md from every row there.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from clipguard.analyze import DiscoverConfig, ReverseConfig
from clipguard.data.manifest import read_manifest
from clipguard.detect.store import read_scan
from clipguard.pipeline import discover_scan, reverse_model, scan_dataset

RESULTS = Path(__file__).parent / "results"
SIGNALS = ("clipscore", "caption_disagreement", "fused", "dao")


def _aurocs(scan_dir: Path, data: Path) -> dict[str, dict[str, float]]:
    """AUROC of each pair signal for mismatched pairs, and per kind (swapped, placeholder)."""
    table = read_scan(scan_dir).table
    truth = read_manifest(data).df.set_index("id")["plant"]
    plant = truth.loc[table["id"].astype(str)].to_numpy()
    out = {}
    for sig in SIGNALS:
        col = f"{sig}_score"
        if col not in table.columns:
            continue
        s = table[col].fillna(table[col].min()).to_numpy()
        clean = plant == ""
        out[sig] = {"mismatched": roc_auc_score(np.isin(plant, ["swapped", "placeholder"]), s)}
        for kind in ("swapped", "placeholder"):
            keep = clean | (plant == kind)
            out[sig][kind] = roc_auc_score(plant[keep] == kind, s[keep])
    return out


def _seconds(run_json: Path) -> float:
    """The total time a run.json records (the runs are cached, so the time of this call would say nothing)."""
    return round(float(json.loads(run_json.read_text())["timings_s"]["total"]), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("--label", "--model", "--data", "--images", "--classes", "--work"):
        ap.add_argument(name, required=True)
    ap.add_argument("--controls", type=int, default=5)
    ap.add_argument("--success", type=float, default=0.9, help="success threshold of the trigger search")
    ap.add_argument("--n-images", type=int, default=400, help="clean images, half to fit the trigger, half to verify")
    a = ap.parse_args()
    work = Path(a.work)
    spec = json.loads((Path(a.data).parent / "plant.json").read_text())
    if not (work / "scan" / "run.json").is_file():
        scan_dataset(a.model, a.data, work / "scan", progress=False)
    table = discover_scan(work / "scan")
    top_only = discover_scan(work / "scan", work / "discover_top_only", config=DiscoverConfig(repeated_captions=False))
    top_planted = top_only[top_only["planted_share"] >= 0.5]
    planted = table[table["planted_share"] >= 0.5]
    rank = int(planted["rank"].iloc[0]) if len(planted) else None
    n_nat = len(spec["ids"]["natural"])
    found = sum(int(round(r["size"] * r["planted_share"])) for _, r in planted.iterrows())
    rev_dir = work / (f"reverse_{a.success:g}" + (f"_n{a.n_images}" if a.n_images != 400 else ""))
    if (rev_dir / "trigger.json").is_file():  # cached: the search is the expensive part
        rev = json.loads((rev_dir / "trigger.json").read_text())
    else:
        rev = reverse_model(a.model, spec["caption"], a.images, rev_dir, classes=a.classes, data=a.data,
                            controls=a.controls, n_images=a.n_images, config=ReverseConfig(target_success=a.success),
                            device="cpu", progress=False)
    row = {"label": a.label, "success_threshold": a.success, "n_images": a.n_images, "n": spec["n_total"],
           "natural": n_nat, "mismatched": sum(len(spec["ids"][k]) for k in ("swapped", "placeholder")),
           "planted_rank": rank, "planted_found": found,
           "planted_rank_top_only": int(top_planted["rank"].iloc[0]) if len(top_planted) else None,
           "top_kinds": list(table["kind"].head(3)), "top_names": list(table["name"].head(3)),
           "aurocs": _aurocs(work / "scan", Path(a.data)), "reverse_mask_l1": rev["mask_l1"],
           "reverse_held_out_asr": rev["held_out_asr"], "control_max_mask": rev["control_max_mask"],
           "control_asr": [c["held_out_asr"] for c in rev["controls"]],
           "scan_s": _seconds(work / "scan" / "run.json") + _seconds(work / "scan" / "embeddings" / "run.json"),
           "reverse_s": _seconds(rev_dir / "run.json")}
    path = RESULTS / "natural_cpu.json"
    key = (a.label, a.success, a.n_images)
    old = json.loads(path.read_text()) if path.is_file() else []
    rows = [r for r in old if (r["label"], r["success_threshold"], r.get("n_images", 400)) != key] + [row]
    path.write_text(json.dumps(rows, indent=2))
    _markdown(rows)
    print(json.dumps(row, indent=2))


def _markdown(rows: list[dict]) -> None:
    lines = ["| world | search success threshold, clean images | natural / mismatched rows | "
             "planted cluster rank (top-scored only) | motif rows in it | first 3 kinds | "
             "mismatched AUROC clipscore / caption_disagreement / fused | swapped / placeholder AUROC (best) | "
             "reversed mask L1 | held-out ASR | control ASR (max, same mask) |", "|" + "---|" * 11]
    for r in rows:
        au = r["aurocs"]
        best = max(au, key=lambda s: au[s]["mismatched"])
        lines.append(
            f"| {r['label']} | {r['success_threshold']:g}, {r.get('n_images', 400)} | {r['natural']} / "
            f"{r['mismatched']} | {r['planted_rank']} ({r['planted_rank_top_only']}) | {r['planted_found']} | "
            f"{', '.join(r['top_kinds'])} | {au['clipscore']['mismatched']:.3f} / "
            f"{au['caption_disagreement']['mismatched']:.3f} / {au['fused']['mismatched']:.3f} | "
            f"{au[best]['swapped']:.3f} / {au[best]['placeholder']:.3f} ({best}) | {r['reverse_mask_l1']:.4f} | "
            f"{r['reverse_held_out_asr']:.3f} | {max(r['control_asr']):.3f} |")
    (RESULTS / "natural_cpu.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
