"""Detection quality: AUROC of every detector x reference mode on embedding folders with ground
truth (``metadata/`` with a ``poisoned`` column), e.g. those ``benchmarks/attacks.py`` writes.

For every folder and mode, :class:`clipguard.detect.Scan` runs every registered detector whose
inputs the folder has (``img_emb/`` only: the caption-embedding detectors are skipped;
``caption`` metadata: ``caption_dup`` runs). With ``--poison-counts``, extra rows come from the
same folder with only that many of its poisoned samples kept (a proxy for lower poison rates:
same model, fewer poisoned training samples in the scanned set; the model itself was trained
at the folder's rate).

Usage::

    python benchmarks/detection_quality.py runs/bench_attacks/*/emb --poison-counts 10 100 300

Writes ``detection_quality.csv`` (one row per folder x subset x mode x detector) and
``detection_quality.md`` (one AUROC table per folder and subset: detectors x modes, plus the
best configuration) to ``--out`` (default ``benchmarks/results``).
"""
from __future__ import annotations

import argparse
import csv
import logging
import time
from pathlib import Path

from _results import write_csv  # benchmarks/ is on sys.path when a script runs

import numpy as np

FIELDS = ["folder", "subset", "n", "n_poisoned", "rate", "mode", "detector", "auroc", "auprc",
          "tpr_at_1pct_fpr", "seconds"]


def modes(a: argparse.Namespace) -> dict[str, dict]:
    """Mode label -> find_suspects keyword arguments."""
    out = {
        "global": dict(reference="global"),
        f"batch B={a.batch_size}": dict(reference="batch", batch_size=a.batch_size),
        f"reference M={a.reference_size}": dict(reference="reference", reference_size=a.reference_size),
        f"multi {a.n_references}x{a.multi_size}": dict(reference="multi_reference",
                                                       reference_size=a.multi_size,
                                                       n_references=a.n_references),
        "auto": dict(reference="auto"),
    }
    wanted = [m.strip() for m in a.modes.split(",")]
    return {label: kw for label, kw in out.items() if label.split()[0] in wanted}


def subsets(y: np.ndarray, counts: list[int], seed: int) -> dict[str, np.ndarray | None]:
    """``{"all": None, "keep 10 poisoned": rows, ...}``."""
    out: dict[str, np.ndarray | None] = {"all": None}
    rng = np.random.default_rng(seed)
    pos = np.flatnonzero(y)
    for c in counts:
        if 0 < c < len(pos):
            keep = np.sort(np.r_[np.flatnonzero(~y), rng.choice(pos, c, replace=False)])
            out[f"keep {c} poisoned"] = keep
    return out


def run_folder(folder: Path, a: argparse.Namespace) -> list[dict]:
    from clipguard.detect import Scan

    full = Scan.from_folder(folder)
    if full.ground_truth is None:
        print(f"skip {folder}: no 'poisoned' column in metadata/")
        return []
    y_all = full.ground_truth.astype(bool)
    rows = []
    for subset, keep in subsets(y_all, a.poison_counts, a.seed).items():
        if keep is None:
            scan, y = full, y_all
        else:
            scan = Scan(full.image[keep], full.text[keep] if full.text is not None else None,
                        captions=full.captions[keep] if full.captions is not None else None,
                        ids=full.ids[keep], ground_truth=y_all[keep])
            y = y_all[keep]
        for label, kw in modes(a).items():
            t = time.perf_counter()
            scan.find_suspects(a.detectors or None, k=a.k, seed=a.seed, **kw)
            sec = time.perf_counter() - t
            for det, m in scan.metrics.items():
                rows.append(dict(folder=str(folder), subset=subset, n=len(y), n_poisoned=int(y.sum()),
                                 rate=float(y.mean()), mode=label, detector=det, seconds=sec, **m))
            best = max(scan.metrics.items(), key=lambda kv: kv[1]["auroc"])
            print(f"{folder} [{subset}] {label}: {sec:.1f} s, best {best[0]} "
                  f"AUROC {best[1]['auroc']:.4f}", flush=True)
    return rows


def read_rows(path: Path, skip_folders: set[str]) -> list[dict]:
    """Rows of an earlier CSV, except those of ``skip_folders`` (numbers parsed back)."""
    if not path.is_file():
        return []
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if r["folder"] not in skip_folders]
    for r in rows:
        for k in ("n", "n_poisoned"):
            r[k] = int(r[k])
        for k in ("rate", "auroc", "auprc", "tpr_at_1pct_fpr", "seconds"):
            r[k] = float(r[k])
    return rows


def write(rows: list[dict], out: Path) -> Path:
    write_csv(out / "detection_quality.csv", FIELDS, rows, ".4f")
    lines = [f"# Detection quality (AUROC; {time.strftime('%Y-%m-%d %H:%M')})", ""]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["folder"], r["subset"]), []).append(r)
    for (folder, subset), rs in groups.items():
        mode_list = list(dict.fromkeys(r["mode"] for r in rs))
        dets = list(dict.fromkeys(r["detector"] for r in rs))
        cell = {(r["detector"], r["mode"]): r["auroc"] for r in rs}
        best = max(rs, key=lambda r: r["auroc"])
        lines += [f"## {folder} -- {subset} ({rs[0]['n_poisoned']} of {rs[0]['n']} poisoned, "
                  f"rate {rs[0]['rate']:.2%})", "",
                  "| detector | " + " | ".join(mode_list) + " |", "|---|" + "---|" * len(mode_list)]
        for det in dets:
            vals = [cell.get((det, m)) for m in mode_list]
            lines.append(f"| {det} | " + " | ".join("" if v is None else f"{v:.4f}" for v in vals) + " |")
        lines += ["", f"best: {best['detector']} with {best['mode']} (AUROC {best['auroc']:.4f})", ""]
    path = out / "detection_quality.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folders", nargs="+", help="embedding folders (img_emb/ + metadata/ with 'poisoned')")
    p.add_argument("--detectors", nargs="*", default=None, help="default: every runnable detector")
    p.add_argument("--modes", default="global,batch,reference,multi,auto")
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--reference-size", type=int, default=4096)
    p.add_argument("--multi-size", type=int, default=2048)
    p.add_argument("--n-references", type=int, default=8)
    p.add_argument("--poison-counts", type=int, nargs="*", default=[],
                   help="also scan each folder with only this many of its poisoned samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch/FAISS threads (0 = default)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--append", action="store_true",
                   help="keep the rows of other folders already in the output CSV")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    if a.threads:
        import faiss
        import torch

        torch.set_num_threads(a.threads)
        faiss.omp_set_num_threads(a.threads)
    rows: list[dict] = []
    for folder in a.folders:
        rows += run_folder(Path(folder), a)
    if a.append:
        rows = read_rows(Path(a.out) / "detection_quality.csv", {r["folder"] for r in rows}) + rows
    if not rows:
        raise SystemExit("no folder with ground truth; nothing written")
    print(f"-> {write(rows, Path(a.out))}")


if __name__ == "__main__":
    main()
