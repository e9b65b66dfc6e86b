"""The audit panel (issue 12): verdicts of `clipguard audit` on clean and backdoored models, with the threshold
calibrated on the clean ones -- leave-one-out for each clean model, all of them for the others. Two verdicts
per model: Neural Cleanse's index on raw mask sizes ("nc"), and the index on mask sizes relative to each
target's size in the clean models ("reference", the default of `clipguard audit-calibrate`).

Usage (each --audit is LABEL=AUDIT_DIR:TRUTH, TRUTH = "clean" or the attack's target; --attack LABEL=attack.json
gives the patch location to compare the reversed mask with)::

    python benchmarks/audit_panel.py --audit clean-s0=runs/audit/a_clean_s0:clean ... \
        --audit natural-s0=runs/audit/a_natural:a_birthday_cake_with_candles \
        --audit badnets=runs/audit/a_badnets:star --attack badnets=runs/heads/data/badnets/attack.json

Writes benchmarks/results/audit_cpu.md, .csv and .json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from _results import write_csv
from clipguard.analyze import anomaly_indices, calibrate_threshold
from clipguard.analyze.verdict import calibrate_with_reference

RESULTS = Path(__file__).parent / "results"
CORNERS = {"bottom_right": (slice(-1, None), slice(-1, None)), "bottom_left": (slice(-1, None), slice(0, 1)),
           "top_right": (slice(0, 1), slice(-1, None)), "top_left": (slice(0, 1), slice(0, 1))}


def _mask_location(mask: np.ndarray, attack: dict | None, size: int = 8) -> dict:
    """Share of the mask's mass in its best size x size window, and in the attack's patch box when fixed."""
    m = mask / max(mask.sum(), 1e-12)
    c = np.pad(m.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    win = c[size:, size:] - c[:-size, size:] - c[size:, :-size] + c[:-size, :-size]
    out = {"best_window_mass": float(win.max()), "uniform_window_mass": size * size / m.size}
    loc = (attack or {}).get("params", {}).get("location")
    if loc in CORNERS:
        h, w = m.shape
        rows = slice(h - size, h) if loc.startswith("bottom") else slice(0, size)
        cols = slice(w - size, w) if loc.endswith("right") else slice(0, size)
        out["patch_box_mass"] = float(m[rows, cols].sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--audit", action="append", required=True)
    ap.add_argument("--attack", action="append", default=[])
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--floor", type=float, default=2.0, help="smallest threshold (Neural Cleanse's 2); 0 = none")
    a = ap.parse_args()
    attacks = dict(s.split("=", 1) for s in a.attack)
    panel = []
    for spec in a.audit:
        label, rest = spec.split("=", 1)
        folder, truth = rest.rsplit(":", 1)
        truth = truth.replace("_", " ")  # captions as targets: underscores for spaces on the command line
        v = json.loads((Path(folder) / "verdict.json").read_text())
        run = json.loads((Path(folder) / "run.json").read_text())
        panel.append({"label": label, "dir": folder, "truth": truth, "v": v, "seconds": run["timings_s"]["search"]})
    clean = [p for p in panel if p["truth"] == "clean"]
    rows = []
    for p in panel:
        calib = [q for q in clean if q is not p]
        masks = {c["target"]: c["mask_l1"] for c in p["v"]["candidates"]}
        targets = list(masks)
        nc = calibrate_threshold([q["v"]["anomaly_index"] for q in calib], a.alpha, a.floor)
        ref = calibrate_with_reference([{c["target"]: c["mask_l1"] for c in q["v"]["candidates"]} for q in calib],
                                       a.alpha, a.floor)
        idx = anomaly_indices([masks[t] for t in targets], ref.reference_for(targets))
        row = {"model": p["label"], "truth": p["truth"]}
        for name, stat, target, thr in (("nc", p["v"]["anomaly_index"], p["v"]["closest_target"], nc.threshold),
                                        ("reference", float(idx.max()), targets[int(np.argmax(idx))], ref.threshold)):
            verdict = "backdoored" if stat > thr else "clean"
            correct = verdict == "clean" if p["truth"] == "clean" else (verdict == "backdoored" and target == p["truth"])
            row.update({f"{name}_verdict": verdict, f"{name}_target": target, f"{name}_correct": correct,
                        f"{name}_index": stat, f"{name}_threshold": thr})
        best = targets.index(row["reference_target"])
        mask = np.asarray(Image.open(Path(p["dir"]) / "triggers" / f"{best:02d}_mask.png"), dtype=np.float64) / 255
        attack = json.loads(Path(attacks[p["label"]]).read_text()) if p["label"] in attacks else None
        cand = p["v"]["candidates"][best]
        row.update({"n_calibration": len(calib), "asr": cand["held_out_asr"], "mask_l1": cand["mask_l1"],
                    **_mask_location(mask, attack), "seconds": p["seconds"]})
        rows.append(row)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    stem = RESULTS / f"audit_cpu{'' if a.floor == 2.0 else f'-floor{a.floor:g}'}"
    write_csv(stem.with_suffix(".csv"), fields, rows)
    stem.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    lines = ["| model | truth | verdict: reference (index / threshold) | verdict: Neural Cleanse (index / threshold) | "
             "held-out ASR | mask L1 | mass in best 8x8 window | mass in the patch box | seconds |", "|" + "---|" * 9]
    for r in rows:
        box = f"{r['patch_box_mass']:.2f}" if "patch_box_mass" in r else "-"
        cells = [f"{r[f'{v}_verdict']} -> {r[f'{v}_target'][:28] if r[f'{v}_verdict'] == 'backdoored' else '-'}"
                 f"{'' if r[f'{v}_correct'] else ' (wrong)'} ({r[f'{v}_index']:.2f} / {r[f'{v}_threshold']:.2f})"
                 for v in ("reference", "nc")]
        lines.append(f"| {r['model']} | {r['truth'][:28]} | {cells[0]} | {cells[1]} | {r['asr']:.3f} | {r['mask_l1']:.4f} | "
                     f"{r['best_window_mass']:.2f} | {box} | {r['seconds']:.0f} |")
    lines += ["", "| verdict | backdoored judged backdoored, right target | backdoored missed or wrong target | "
              "clean judged clean | clean judged backdoored |", "|---|---|---|---|---|"]
    pos = [r for r in rows if r["truth"] != "clean"]
    neg = [r for r in rows if r["truth"] == "clean"]
    for v in ("reference", "nc"):
        tp, tn = sum(r[f"{v}_correct"] for r in pos), sum(r[f"{v}_correct"] for r in neg)
        lines.append(f"| {v} | {tp} | {len(pos) - tp} | {tn} | {len(neg) - tn} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
