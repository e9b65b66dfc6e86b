"""The poisoned-share estimate (issue 16) on the evaluation panel: estimated against true share, and what
``clipguard filter --share auto`` removes.

Input: folders of panel cells (``benchmarks/panel.py`` writes ``<work>/cells/<cell>/scores_auto.parquet``,
every ``<detector>_score`` and ``poisoned`` of the scan with the default reference, and
``<work>/cells/<cell>/result.json``); a cell without ``result.json`` is still running and is skipped.
Per cell, on the default detector's scores (``fused_score``), with :mod:`clipguard.detect.share` at its
defaults (no ground truth used):

- the true share (mean of ``poisoned``), the estimate and its interval, whether the truth is inside;
- the AUROC of ``fused``;
- recall and precision of what ``filter --share auto`` removes (the largest top cut whose expected
  precision is >= 0.5, :func:`~clipguard.detect.share.precision_cut`), of the cut at the estimate itself
  (the top ``n_estimated`` rows, ``--share estimate``) and of the Benjamini-Hochberg cut at ``--fdr`` (0.1) on the null p-values;
- learned: ASR (``attack_success_rate`` of ``result.json``) >= ``--learned`` (0.8, the panel's); cells
  without an ASR (synthetic score sets) carry their own ``learned`` flag.

``--clean-worlds``: truly clean scans (poisoned rows removed from a poisoned scan are NOT clean data: their
scores were computed with the poison present). For each world of ``--worlds`` (the panel's; the two
long-tailed ones share one world), the panel preset's tiny-rn is trained on the CLEAN training split
(reused from the world folder's ``clean_model`` when its training settings are the preset's: panel.py
trains it there for the BadCLIP patch), the pairs are embedded and scanned (:func:`clipguard.detect.run_scan`,
default detectors and reference), and the share `filter --share auto` removes is reported (goal <= 0.5 %).
Each clean world's result is kept in ``<work>/clean/<world>/result.json`` and reused by a rerun.

Output: ``<out>/share_estimate.md`` (per-cell table, summary, the issue's goals reached or not) and
``<out>/share_estimate.csv`` (one row per cell and per clean world) for the default null (the IFR envelope);
with ``--null gamma`` ``share_estimate_gamma.md`` / ``.csv``; ``--name N`` adds ``_N`` to the file names. A clean
world trained, embedded and scanned once is
rescored from its stored scan for another null (``result_<null>.json``).

Usage::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/share_estimate.py --cells runs/panel_cpu/cells runs/panel_gpu/cells
    python benchmarks/share_estimate.py --cells /tmp/panel16/cells runs/panel_gpu/cells \\
        --clean-worlds --world-from /tmp/panel16 --preset cpu --threads 1
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from _results import limit_threads, write_csv
from panel import PRESETS, WORLDS, make_worlds, world_dir

from clipguard.detect.metrics import detection_metrics
from clipguard.detect.share import DEFAULT_NULL, NULLS, bh_cut, estimate_share, null_pvalues, precision_cut

ROOT = Path(__file__).resolve().parents[1]
"""The repository (scratch folders go to its git-ignored runs/, wherever the script is started)."""

DETECTOR = "fused"
AUROC_HIGH = 0.99
GOAL_COVERAGE, GOAL_RECALL, GOAL_PRECISION, GOAL_CLEAN = 0.9, 0.9, 0.5, 0.005
FIELDS = ["kind", "source", "cell", "world", "attack", "rate", "n_rows", "n_poisoned", "true_share", "asr",
          "learned", "auroc", "est_share", "est_low", "est_high", "inside", "abs_error", "n_estimated", "lam",
          "auto_n", "auto_removed_share", "auto_recall", "auto_precision", "estimate_recall",
          "estimate_precision", "oracle_recall", "feasible", "feasible_cuts", "bh_n", "bh_removed_share",
          "bh_recall", "bh_precision", "clean_accuracy", "model", "seconds"]


def top_k_quality(scores: np.ndarray, y: np.ndarray, k: int) -> tuple[float, float]:
    """``(recall, precision)`` of removing the ``k`` highest (N,) scores (NaN: least suspicious; a stable
    order, as ``tradeoff_curve``); precision is NaN when nothing is removed, recall NaN without poison."""
    order = np.argsort(-np.where(np.isfinite(scores), scores, -np.inf), kind="stable")
    tp = int(y[order[:k]].sum())
    recall = tp / int(y.sum()) if y.any() else float("nan")
    return recall, (tp / k if k else float("nan"))


def feasible_cuts(scores: np.ndarray, y: np.ndarray) -> tuple[int, int]:
    """``(k_min, k_max)``: the range of top cuts of the (N,) scores that reach goal 2 (recall >= GOAL_RECALL at
    precision >= GOAL_PRECISION) with the (N,) ground truth ``y``, ``(0, 0)`` when no cut does: what a cut rule
    could reach with this ranking, whatever its estimate (order as :func:`top_k_quality`)."""
    order = np.argsort(-np.where(np.isfinite(scores), scores, -np.inf), kind="stable")
    tp = np.cumsum(y[order])
    k = np.arange(1, len(y) + 1)
    ok = np.flatnonzero((tp >= GOAL_RECALL * max(int(y.sum()), 1)) & (tp >= GOAL_PRECISION * k))
    return (int(k[ok[0]]), int(k[ok[-1]])) if ok.size and y.any() else (0, 0)


def evaluate_scores(scores: np.ndarray, y: np.ndarray | None, a: argparse.Namespace) -> dict:
    """The estimate on (N,) scores and, with (N,) ground truth ``y``, how it and its two cuts fare."""
    est = estimate_share(scores, detector=DETECTOR, n_boot=a.n_boot, seed=a.seed, null=a.null)
    n = len(scores)
    k_bh = bh_cut(null_pvalues(scores, est), a.fdr)
    k_auto = precision_cut(scores, est, 0.5)  # what `filter --share auto` removes
    row = {"n_rows": n, "est_share": est.share, "est_low": est.low, "est_high": est.high,
           "n_estimated": est.n_estimated, "lam": est.lam, "auto_n": k_auto, "auto_removed_share": k_auto / n,
           "bh_n": k_bh, "bh_removed_share": k_bh / n}
    if y is not None:
        true = float(y.mean())
        auto_r, auto_p = top_k_quality(scores, y, k_auto)
        row["estimate_recall"], row["estimate_precision"] = top_k_quality(scores, y, est.n_estimated)
        bh_r, bh_p = top_k_quality(scores, y, k_bh)  # the k smallest null p-values are the k highest scores
        row.update(n_poisoned=int(y.sum()), true_share=true, inside=bool(est.low <= true <= est.high),
                   abs_error=abs(est.share - true), auroc=detection_metrics(y, scores)["auroc"],
                   auto_recall=auto_r, auto_precision=auto_p, bh_recall=bh_r, bh_precision=bh_p,
                   oracle_recall=top_k_quality(scores, y, int(y.sum()))[0])  # the cut at the TRUE share
        k_lo, k_hi = feasible_cuts(scores, y)
        row.update(feasible=bool(k_hi), feasible_cuts=f"{k_lo}-{k_hi}" if k_hi else "-")
    return row


def source_label(cells_dir: Path) -> str:
    """``runs/panel_gpu/cells`` -> ``panel_gpu``; any other folder -> its own name."""
    return cells_dir.parent.name if cells_dir.name == "cells" else cells_dir.name


def cell_rows(a: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """One row per finished cell of the ``--cells`` folders, and the cells skipped (with why)."""
    rows, skipped = [], []
    for d in map(Path, a.cells):
        if not d.is_dir():
            skipped.append(f"{d} (no such folder)")
            continue
        for cell in sorted(p for p in d.iterdir() if p.is_dir()):
            res_path, scores_path = cell / "result.json", cell / f"scores_{a.mode}.parquet"
            if not res_path.is_file() or not scores_path.is_file():
                skipped.append(f"{source_label(d)}/{cell.name} (unfinished: no result.json or scores_{a.mode})")
                continue
            t = time.perf_counter()
            res = json.loads(res_path.read_text())
            frame = pd.read_parquet(scores_path, columns=[f"{DETECTOR}_score", "poisoned"])
            asr = res.get("attack_success_rate")
            row = {"kind": "cell", "source": source_label(d), "cell": cell.name, "world": res.get("world"),
                   "attack": res.get("attack"), "rate": res.get("rate"),
                   "asr": float("nan") if asr is None else float(asr),
                   "learned": bool(asr >= a.learned) if asr is not None else bool(res.get("learned", False)),
                   "clean_accuracy": res.get("clean_accuracy")}
            row.update(evaluate_scores(frame[f"{DETECTOR}_score"].to_numpy(np.float64),
                                       frame["poisoned"].to_numpy(bool), a))
            row["seconds"] = round(time.perf_counter() - t, 1)
            rows.append(row)
            print(f"[{row['source']}/{cell.name}] true {row['true_share']:.4f} est {row['est_share']:.4f} "
                  f"[{row['est_low']:.4f}, {row['est_high']:.4f}] AUROC {row['auroc']:.4f} "
                  f"auto R {row['auto_recall']:.3f} P {row['auto_precision']:.3f}", flush=True)
    return rows, skipped


def clean_model(a: argparse.Namespace, world: str, work: Path):
    """The preset's tiny-rn trained on the clean world: the world folder's ``clean_model`` when its
    training settings are the preset's (epochs = the first of the cells' ladder, seed), else trained here.
    Returns ``(bundle, where)``."""
    from dataclasses import asdict

    from clipguard.models import load_model
    from clipguard.train import TrainConfig, train_from_manifest

    cfg = TrainConfig(epochs=PRESETS[a.preset]["epochs"][0], seed=a.seed)
    want = {k: v for k, v in asdict(cfg).items() if k != "record_epochs"}
    ready = world_dir(a.wa, world) / "clean_model"
    if (ready / "model.json").is_file():
        have = json.loads((ready / "model.json").read_text()).get("train_config", {})
        if {k: have.get(k) for k in want} == want:
            return load_model(ready, device=a.device), str(ready)
    bundle, _ = train_from_manifest(world_dir(a.wa, world) / "train" / "manifest.parquet", work / "model",
                                    config=cfg, progress=False, device=a.device)
    return bundle, str(work / "model")


def clean_world(a: argparse.Namespace, world: str) -> dict:
    """Train (or reuse), embed and scan one clean world; the estimate on its ``fused`` scores."""
    from clipguard.data.manifest import read_manifest
    from clipguard.detect import run_scan
    from clipguard.embed import embed_dataset
    from clipguard.evaluate.api import evaluate_model

    from clipguard.detect import Scan

    name = world_dir(a.wa, world).name
    work = Path(a.work) / "clean" / name
    first = work / "result.json"  # the run that trained, embedded and scanned (whatever its null)
    done = first if a.null == "gamma" else work / f"result_{a.null}.json"
    if done.is_file() and not a.redo_clean:
        return json.loads(done.read_text())
    if first.is_file() and (work / "scan" / "run.json").is_file() and not a.redo_clean:  # another null: rescore
        row = {**json.loads(first.read_text()), **evaluate_scores(
            Scan.load(work / "scan").scores[f"{DETECTOR}_score"].to_numpy(np.float64), None, a)}
        done.write_text(json.dumps(row, indent=1))
        return row
    t = time.perf_counter()
    bundle, where = clean_model(a, world, work)
    wd = world_dir(a.wa, world)
    ev = evaluate_model(bundle, wd / "test" / "manifest.parquet", wd / "classes.json", seed=a.seed, progress=False)
    embed_dataset(bundle, read_manifest(wd / "train" / "manifest.parquet"), work / "emb", progress=False,
                  device=a.device)
    scan = run_scan(work / "emb", work / "scan", k=a.k, seed=a.seed, device=a.device)
    row = {"kind": "clean-world", "source": "clean", "cell": name, "world": name, "attack": "-", "rate": 0.0,
           "true_share": 0.0, "n_poisoned": 0, "learned": False, "clean_accuracy": ev["clean_accuracy"],
           "model": where}
    row.update(evaluate_scores(scan.scores[f"{DETECTOR}_score"].to_numpy(np.float64), None, a))
    row["seconds"] = round(time.perf_counter() - t, 1)
    work.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(row, indent=1))
    print(f"[clean {name}] est {row['est_share']:.4f} [{row['est_low']:.4f}, {row['est_high']:.4f}], "
          f"auto removes {row['auto_removed_share']:.4%}, BH {row['bh_removed_share']:.4%} "
          f"({row['seconds']:.0f} s)", flush=True)
    return row


def clean_worlds(a: argparse.Namespace) -> list[dict]:
    """The clean rows of the distinct worlds of ``--worlds`` (generated in ``--work`` unless ``--world-from``
    has them)."""
    a.wa = argparse.Namespace(preset=a.preset, worlds=[], attacks=[], work=a.world_from or a.work,
                              seed=a.seed, device=a.device)
    chosen = {world_dir(a.wa, w).name: w for w in a.worlds}  # longtail-frequent / -rare: one world
    missing = [w for w in chosen.values() if not (world_dir(a.wa, w) / "classes.json").is_file()]
    if missing:
        if a.world_from:
            raise SystemExit(f"--world-from {a.world_from} has no world for {missing}; drop --world-from to "
                             "generate them in --work")
        a.wa.worlds = missing
        make_worlds(a.wa)
    return [clean_world(a, w) for w in chosen.values()]


def clean_scans(a: argparse.Namespace) -> list[dict]:
    """Scan folders of data without poison (``--clean-scans``, e.g. the 1M synthetic clustered set of
    ``benchmarks/memory.py``): the estimate on their saved ``fused`` scores."""
    from clipguard.detect import Scan

    rows = []
    for d in a.clean_scans:
        t = time.perf_counter()
        scores = Scan.load(d).scores[f"{DETECTOR}_score"].to_numpy(np.float64)
        row = {"kind": "clean-scan", "source": "clean", "cell": str(d), "world": Path(d).parent.name, "attack": "-",
               "rate": 0.0, "true_share": 0.0, "n_poisoned": 0, "learned": False, "model": "-"}
        row.update(evaluate_scores(scores, None, a))
        row["seconds"] = round(time.perf_counter() - t, 1)
        print(f"[clean scan {d}] est {row['est_share']:.4f} [{row['est_low']:.4f}, {row['est_high']:.4f}], "
              f"auto removes {row['auto_removed_share']:.4%}", flush=True)
        rows.append(row)
    return rows


def _fmt(v, spec: str = ".4f") -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return format(v, spec) if isinstance(v, float) else str(v)


def _goal(ok: bool | None) -> str:
    return "not measured (no such cells)" if ok is None else ("**reached**" if ok else "**NOT reached**")


def summary_lines(rows: list[dict], clean: list[dict] | None, fdr: float) -> list[str]:
    """The summary and the issue's three goals, as markdown lines."""
    df = pd.DataFrame(rows, columns=list(dict.fromkeys([*FIELDS, *(rows[0] if rows else [])])))
    df["learned"] = df["learned"].astype(bool)
    learned, high = df[df["learned"]], df[df["auroc"] >= AUROC_HIGH]
    out = ["## Summary", "",
           "| set | cells | mean abs error | worst abs error (cell) | truth inside interval | mean interval width |",
           "|---|---|---|---|---|---|"]
    sets = [("learned", learned), (f"learned, AUROC >= {AUROC_HIGH}", learned[learned["auroc"] >= AUROC_HIGH]),
            ("not learned", df[~df["learned"]]), ("all", df)]
    sets += [(f"learned, from {src}", part) for src, part in learned.groupby("source", sort=False)]
    sets += [(f"learned, world {w}", part) for w, part in learned.groupby("world", sort=True)]
    for label, part in sets:
        if not len(part):
            out.append(f"| {label} | 0 | - | - | - | - |")
            continue
        worst = part.loc[part["abs_error"].idxmax()]
        out.append(f"| {label} | {len(part)} | {part['abs_error'].mean():.4f} | {worst['abs_error']:.4f} "
                   f"({worst['source']}/{worst['cell']}) | {int(part['inside'].sum())}/{len(part)} "
                   f"({part['inside'].mean():.0%}) | {(part['est_high'] - part['est_low']).mean():.4f} |")
    out += ["", f"`--share auto` (the largest top cut with expected precision >= 0.5), `--share estimate` (the top "
                f"n_estimated rows) and the BH cut (fdr {fdr}) "
                f"on every cell with AUROC >= {AUROC_HIGH} ({len(high)} cells):", ""]
    if len(high):
        ok = (high["auto_recall"] >= GOAL_RECALL) & (high["auto_precision"] >= GOAL_PRECISION)
        for cut in ("auto", "estimate", "bh"):
            out.append(f"- {cut}: recall mean {high[f'{cut}_recall'].mean():.3f} / worst "
                       f"{high[f'{cut}_recall'].min():.3f}; precision mean {high[f'{cut}_precision'].mean():.3f} / "
                       f"worst {high[f'{cut}_precision'].min():.3f} (over the cells where it removed rows)")
        out.append(f"- a cut at the TRUE share (perfect estimate): recall = precision mean "
                   f"{high['oracle_recall'].mean():.3f} / worst {high['oracle_recall'].min():.3f}")
        feas = high["feasible"].astype(bool)
        out.append(f"- goal 2 is within reach of SOME top cut of the ranking (`feasible`: recall >= {GOAL_RECALL} at "
                   f"precision >= {GOAL_PRECISION} for a cut of `feasible_cuts` rows, found with the ground truth) in "
                   f"{int(feas.sum())}/{len(high)} cells; `--share auto` reaches it in "
                   f"{int((ok & feas).sum())} of those")
    cov = learned["inside"].mean() if len(learned) else None
    goals = ["", "## Goals of the issue", "",
             f"1. True share inside the stated interval in >= {GOAL_COVERAGE:.0%} of the learned cells: "
             + (f"{int(learned['inside'].sum())}/{len(learned)} = {cov:.0%} -> {_goal(cov >= GOAL_COVERAGE)}"
                if cov is not None else _goal(None))]
    if len(high):
        goals.append(f"2. `--share auto` removes >= {GOAL_RECALL:.0%} of the poison at precision >= {GOAL_PRECISION} "
                     f"wherever AUROC >= {AUROC_HIGH}: {int(ok.sum())}/{len(high)} cells -> {_goal(bool(ok.all()))}"
                     + ("" if ok.all() else " (failing: " + ", ".join(
                         f"{r.source}/{r.cell} R {r.auto_recall:.2f} P {_fmt(r.auto_precision, '.2f')}"
                         for r in high[~ok].itertuples()) + ")"))
    else:
        goals.append(f"2. `--share auto` recall >= {GOAL_RECALL:.0%} at precision >= {GOAL_PRECISION} where AUROC >= "
                     f"{AUROC_HIGH}: {_goal(None)}")
    if clean:
        worst = max(r["auto_removed_share"] for r in clean)
        goals.append(f"3. On clean data `--share auto` removes <= {GOAL_CLEAN:.1%} of the rows: worst "
                     f"{worst:.3%} over {len(clean)} clean sets -> {_goal(worst <= GOAL_CLEAN)}")
    else:
        goals.append("3. On clean data `--share auto` removes <= 0.5 % of the rows: not measured here "
                     "(run with --clean-worlds)")
    return out + goals


def write_report(rows: list[dict], skipped: list[str], clean: list[dict] | None, a: argparse.Namespace) -> Path:
    out = Path(a.out)
    stem = "share_estimate" if a.null == DEFAULT_NULL else f"share_estimate_{a.null}"
    stem += f"_{a.name}" if a.name else ""
    write_csv(out / f"{stem}.csv", FIELDS, [{k: r.get(k) for k in FIELDS} for r in rows + (clean or [])])
    cols = ["source", "cell", "true_share", "est_share", "est_low", "est_high", "inside", "asr", "learned", "auroc",
            "auto_n", "auto_recall", "auto_precision", "estimate_recall", "estimate_precision", "oracle_recall",
            "feasible_cuts", "bh_n", "bh_recall", "bh_precision"]
    lines = ["# Poisoned-share estimate on the panel (issue 16)", "",
             f"`benchmarks/share_estimate.py`: `estimate_share` (null `{a.null}`, n_boot {a.n_boot}, level 0.95) on "
             f"`{DETECTOR}_score` of `scores_{a.mode}.parquet`; learned = ASR >= {a.learned}; BH at fdr {a.fdr} on "
             "`null_pvalues`. No ground truth is used by the estimate; it is used only to score it.", "",
             f"Command: `python benchmarks/share_estimate.py {' '.join(sys.argv[1:])}`", "",
             *summary_lines(rows, clean, a.fdr), "", "## Cells", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    lines += ["", "`oracle_recall`: recall (= precision) of a cut at the TRUE share: what a cut at a perfect "
              "estimate would give with this ranking. `feasible_cuts`: the top cuts (rows) that reach goal 2 with this "
              "ranking (found with the ground truth; - where none does). Cells without an ASR (synthetic score sets) carry their own "
              "`learned` flag."]
    if clean:
        ccols = ["cell", "n_rows", "clean_accuracy", "est_share", "est_low", "est_high", "n_estimated",
                 "auto_n", "auto_removed_share", "bh_n", "bh_removed_share", "model", "seconds"]
        lines += ["", f"## Clean worlds (preset {a.preset}: no poison; what `filter --share auto` removes)", "",
                  "| " + " | ".join(ccols) + " |", "|" + "---|" * len(ccols)]
        lines += ["| " + " | ".join(_fmt(r.get(c), ".1f" if c == "seconds" else ".4f") for c in ccols) + " |"
                  for r in clean]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(skipped)]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    return out / f"{stem}.md"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cells", nargs="*", default=[str(ROOT / "runs" / "panel_cpu" / "cells")],
                   help="folders of panel cells")
    p.add_argument("--mode", default="auto", help="which scores_<mode>.parquet (auto: what `clipguard scan` does)")
    p.add_argument("--learned", type=float, default=0.8, help="ASR from which a cell's backdoor counts as learned")
    p.add_argument("--fdr", type=float, default=0.1)
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples (estimate_share's default)")
    p.add_argument("--null", choices=NULLS, default=DEFAULT_NULL, help="the estimate's null (another than the "
                   "default: results go to share_estimate_<null>.md / .csv)")
    p.add_argument("--name", default="", help="suffix of the result files (share_estimate[_<null>]_<name>.md)")
    p.add_argument("--clean-worlds", action="store_true", help="also train, embed and scan clean worlds")
    p.add_argument("--worlds", nargs="*", default=["shapes", "longtail-frequent"], choices=list(WORLDS))
    p.add_argument("--preset", choices=list(PRESETS), default="cpu", help="the panel preset of the clean worlds")
    p.add_argument("--world-from", default=None, help="a panel work folder whose worlds to read (not written)")
    p.add_argument("--redo-clean", action="store_true", help="ignore stored clean-world results")
    p.add_argument("--clean-scans", nargs="*", default=[], help="scan folders of data without poison (clean data "
                   "made elsewhere, e.g. benchmarks/memory.py's 1M synthetic clustered set) to evaluate too")
    p.add_argument("--work", default=str(ROOT / "runs" / "share_estimate"), help="scratch folder of the clean worlds")
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch/FAISS threads (0 = default)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    limit_threads(a.threads)
    rows, skipped = cell_rows(a)
    clean = (clean_worlds(a) if a.clean_worlds else []) + clean_scans(a)
    clean = clean or None
    print(f"-> {write_report(rows, skipped, clean, a)}")


if __name__ == "__main__":
    main()
