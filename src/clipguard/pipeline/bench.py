"""``clipguard bench --preset quick|full``: attacks x detectors x defences on more than one world.

For every *cell* (world, attack, poison rate) of the preset: poison the world's training split
(dirty-label) -> train a CLIP model on it -> zero-shot clean accuracy (CA) and attack success rate
(ASR) -> embed the training pairs -> scan them with every default detector (AUROC, AUPRC,
TPR@1%FPR against the ground truth) -> apply each defence of the preset to the backdoored model
(when its backdoor was learned: ASR >= ``learned``) and measure CA and ASR after.

Worlds (each generated, seeded, with a labelled test split):

* ``shapes``: the embedded shapes world, target ``star`` (one of its 8 shapes: a frequent target);
* ``longtail``: the long-tailed world (:mod:`clipguard.data.longtail`, Zipf 1.1), target its most
  frequent concept; poison captions distributed like the target's clean captions;
* ``longtail-rare``: the same world with its rarest concept as the target.

Every figure is reported per cell and as the worst case beside the mean over cells, since a figure
measured on one world is a hypothesis.

Writes::

    out/bench.csv          one row per (cell, stage, method): stage "model" (CA, ASR of the backdoored
                           model; ``seconds`` = poison + train + evaluate + embed), "detection" (one
                           detector: AUROC, AUPRC, TPR@1%FPR; ``scan_seconds`` = the scan of all of
                           them) or "defence" (CA/ASR after and before, asr_reduction, ca_change, seconds)
    out/bench.md           the same as tables, with worst and mean over cells
    out/run.json           preset, versions, timings
    out/cells/<cell>/      data/, model/, embeddings/, scan/, defences/<label>/, result.json (a finished
                           cell is skipped when the command runs again: the bench is resumable)
    out/worlds/<world>/    the generated world and the clean finetuning set of the finetuning defences

Example::

    from clipguard.pipeline.bench import run_bench

    table = run_bench("quick", "bench")     # pandas DataFrame = bench.csv
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

from clipguard.attacks import ATTACKS, get_trigger, poison_dataset
from clipguard.data.longtail import generate_longtail_world, poison_templates
from clipguard.data.manifest import read_manifest, write_manifest
from clipguard.data.synth import generate_world
from clipguard.defend import DEFENCES
from clipguard.detect import run_scan
from clipguard.detect.options import DEFAULT_DETECTOR
from clipguard.distributed import TasksFailedError, make_distributor
from clipguard.embed import embed_dataset
from clipguard.errors import ConfigError
from clipguard.evaluate.api import evaluate_model
from clipguard.pipeline.defend_model import defend_model
from clipguard.report.bench_page import build_bench_report
from clipguard.report.bench_tables import bench_tables, cell_label
from clipguard.train import TrainConfig, train_from_manifest
from clipguard.utils.io import read_json, write_json
from clipguard.utils.progress import progress_bar, progress_enabled
from clipguard.utils.runrecord import RunRecord

__all__ = ["BENCH_PRESETS", "BenchPreset", "WORLDS", "bench_cells", "format_bench", "run_bench"]

WORLDS = ("shapes", "longtail", "longtail-rare")
"""The worlds a preset may name (see the module docstring)."""

ATTACK_PARAMS: dict[str, dict[str, Any]] = {
    "badnets": {"pattern": "checker", "size": 8, "cell": 2, "location": "random"},
    "blended": {"alpha": 0.2},
    "sig": {},
    "wanet": {"k": 4, "strength": 4.0},
}
"""The trigger parameters of each attack in the bench (the panels' settings, ``benchmarks/``)."""


@dataclass(frozen=True)
class BenchPreset:
    """What one bench runs. Sizes are per world; ``defences`` are (label, method, parameters)."""

    name: str
    worlds: tuple[str, ...]
    attacks: tuple[str, ...]
    rates: tuple[float, ...]
    n_train: int
    n_test: int
    epochs: int
    n_concepts: int = 64
    model: str = "tiny-rn"
    batch_size: int = 128
    defences: tuple[tuple[str, str, dict], ...] = ()
    ft_size: int = 1000
    ft_epochs: int = 10
    retrain_epochs: int | None = None
    learned: float = 0.8
    k: int = 16
    description: str = ""


BENCH_PRESETS: dict[str, BenchPreset] = {
    "quick": BenchPreset(
        "quick", worlds=("shapes", "longtail"), attacks=("badnets", "blended"), rates=(0.05,), n_train=3000,
        n_test=600, epochs=8, n_concepts=32,
        defences=(("CleanCLIP", "cleanclip", {}), ("filter-retrain 5%", "filter-retrain", {"share": 0.05})),
        ft_size=600, ft_epochs=5, retrain_epochs=8,
        description="2 worlds x 2 attacks at 5 %, 3,000 pairs, tiny-rn 8 epochs; CleanCLIP and "
                    "filter-retrain (about 9 minutes on 2 CPU cores)"),
    "full": BenchPreset(
        "full", worlds=("shapes", "longtail", "longtail-rare"), attacks=("badnets", "blended", "sig", "wanet"),
        rates=(0.01, 0.05), n_train=10000, n_test=1000, epochs=10, n_concepts=128,
        defences=(("CleanCLIP", "cleanclip", {}), ("MMCL only", "mmcl", {}), ("PAR", "par", {}),
                  ("filter-retrain 5%", "filter-retrain", {"share": 0.05}),
                  ("filter-retrain 5% multi-ref", "filter-retrain", {"share": 0.05, "reference": "multi_reference"})),
        ft_size=1000, ft_epochs=10,
        description="3 worlds x 4 attacks x 2 rates, 10,000 pairs, tiny-rn 10 epochs, five defences "
                    "(hours on a CPU; use --device cuda)"),
    "smoke": BenchPreset(
        "smoke", worlds=("shapes", "longtail"), attacks=("badnets",), rates=(0.05,), n_train=240, n_test=60,
        epochs=1, n_concepts=8, batch_size=64, defences=(("CleanCLIP", "cleanclip", {}),),
        ft_size=64, ft_epochs=1, learned=0.0, k=4,
        description="the plumbing in seconds (tests): figures mean nothing"),
}
"""The presets of ``clipguard bench --preset``."""


def _check_preset(p: BenchPreset) -> None:
    """ConfigError for a world, attack or defence the preset names and clipguard does not have."""
    for w in p.worlds:
        if w not in WORLDS:
            raise ConfigError(f"bench preset {p.name!r}: unknown world {w!r}; choose from: {', '.join(WORLDS)}")
    for a in p.attacks:
        ATTACKS.get(a)  # ConfigError naming the attacks
    for _, method, _ in p.defences:
        DEFENCES.get(method)


def bench_cells(preset: BenchPreset) -> list[tuple[str, str, float]]:
    """The cells (world, attack, rate) of a preset, in the order they run."""
    return [(w, a, r) for w in preset.worlds for a in preset.attacks for r in preset.rates]


# -- worlds ---------------------------------------------------------------------------------------------
def _generate(world: str, out: Path, n_train: int, n_test: int, p: BenchPreset, seed: int) -> None:
    if (out / "classes.json").is_file():
        return
    if world == "shapes":
        generate_world(out, n_train=n_train, n_test=n_test, seed=seed, progress=False)
    else:
        generate_longtail_world(out, n_train=n_train, n_test=n_test, n_concepts=p.n_concepts, seed=seed,
                                progress=False, workers=1)


def prepare_world(world: str, root: Path, p: BenchPreset, seed: int) -> dict[str, Any]:
    """Generate (or reuse) the world and its clean finetuning set (another seed); returns the world's
    paths, its target and the poison caption templates."""
    base = "shapes" if world == "shapes" else "longtail"
    folder = root / "worlds" / base
    _generate(base, folder / "world", p.n_train, p.n_test, p, seed)
    _generate(base, folder / "finetune", p.ft_size, max(10, p.n_concepts), p, seed + 1)
    classes = read_json(folder / "world" / "classes.json")
    if world == "shapes":
        target, templates = "star", list(classes["templates"])
    else:
        target = classes["classes"][0 if world == "longtail" else -1]  # ranks: most frequent first
        templates = poison_templates(target)
    return {"world": folder / "world", "finetune": _finetune_manifest(folder / "finetune" / "train"),
            "target": target, "templates": templates}


def _finetune_manifest(split: Path) -> Path:
    """The clean finetuning set with its own ids (``ft-...``: two generated worlds number their rows alike)."""
    path = split / "finetune.parquet"
    if not path.is_file():
        df = read_manifest(split / "manifest.parquet").df
        write_manifest(df.assign(id="ft-" + df["id"].astype(str)), path)
    return path


# -- one cell -------------------------------------------------------------------------------------------
def _train_config(p: BenchPreset, seed: int) -> TrainConfig:
    return TrainConfig(epochs=p.epochs, batch_size=p.batch_size, seed=seed)


def _backdoor(cell: Path, world: dict[str, Any], attack: str, rate: float, p: BenchPreset, seed: int,
              device: str) -> dict[str, Any]:
    """Poison, train, evaluate: the backdoored model's row (CA, ASR, sizes, seconds)."""
    t0 = time.perf_counter()
    res = poison_dataset(read_manifest(world["world"] / "train" / "manifest.parquet"), cell / "data",
                         get_trigger(attack, **ATTACK_PARAMS.get(attack, {})), target=world["target"], rate=rate,
                         templates=world["templates"], seed=seed, progress=False)
    bundle, tr = train_from_manifest(res.manifest_path, cell / "model", model=p.model,
                                     config=_train_config(p, seed), progress=False, device=device)
    ev = evaluate_model(bundle, world["world"] / "test" / "manifest.parquet", world["world"] / "classes.json",
                        attack_spec=res.spec_path, seed=seed, progress=False, device=device)
    embed_dataset(bundle, read_manifest(res.manifest_path), cell / "embeddings", progress=False, device=device)
    return {"stage": "model", "method": p.model, "n_train": tr.n_pairs, "n_poisoned": res.n_poisoned,
            "ca": ev["clean_accuracy"], "asr": ev["attack_success_rate"],
            "seconds": round(time.perf_counter() - t0, 2)}


def _detection(cell: Path, p: BenchPreset, seed: int, device: str) -> list[dict[str, Any]]:
    """Scan the embedded training pairs with every default detector: one row per detector."""
    t0 = time.perf_counter()
    res = run_scan(cell / "embeddings", cell / "scan", k=p.k, seed=seed, device=device)
    seconds = round(time.perf_counter() - t0, 2)
    return [{"stage": "detection", "method": det, "auroc": m["auroc"], "auprc": m["auprc"],
             "tpr_at_1pct_fpr": m["tpr_at_1pct_fpr"], "scan_seconds": seconds} for det, m in res.metrics.items()]


def _defences(cell: Path, world: dict[str, Any], p: BenchPreset, seed: int, device: str) -> list[dict[str, Any]]:
    """Every defence of the preset on the cell's model: CA and ASR after (and before, re-measured)."""
    rows = []
    for label, method, params in p.defences:
        t0 = time.perf_counter()
        kind = DEFENCES.get(method).kind
        data = world["finetune"] if kind == "finetune" else cell / "data" / "manifest.parquet"
        epochs = p.ft_epochs if kind == "finetune" else (p.retrain_epochs or p.epochs)
        rec = defend_model(method, cell / "model", data, cell / "defences" / _slug(label),
                           test=world["world"] / "test" / "manifest.parquet", classes=world["world"] / "classes.json",
                           attack_spec=cell / "data" / "attack.json", params=params, train={"epochs": epochs},
                           seed=seed, device=device, progress=False)
        rows.append({"stage": "defence", "method": label, "ca": rec["after"]["clean_accuracy"],
                     "asr": rec["after"]["attack_success_rate"], "ca_before": rec["before"]["clean_accuracy"],
                     "asr_before": rec["before"]["attack_success_rate"], "asr_reduction": rec.get("asr_reduction"),
                     "ca_change": rec["ca_change"], "epochs": epochs, "seconds": round(time.perf_counter() - t0, 2)})
    return rows


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label.lower()).strip("_")


def run_cell(root: Path, world_name: str, attack: str, rate: float, p: BenchPreset, seed: int,
             device: str) -> list[dict[str, Any]]:
    """Run (or reuse, when its ``result.json`` exists) one cell; returns its rows of ``bench.csv``."""
    cell = root / "cells" / cell_label(world_name, attack, rate)
    done = cell / "result.json"
    if done.is_file():
        return read_json(done)["rows"]
    if cell.exists():
        shutil.rmtree(cell)  # an interrupted cell starts again
    world = prepare_world(world_name, root, p, seed)
    model = _backdoor(cell, world, attack, rate, p, seed, device)
    rows = [model, *_detection(cell, p, seed, device)]
    learned = model["asr"] >= p.learned
    if learned:
        rows += _defences(cell, world, p, seed, device)
    common = {"world": world_name, "target": world["target"], "attack": attack, "rate": rate, "learned": learned}
    rows = [{**common, **r} for r in rows]
    write_json(done, {"cell": cell.name, "rows": rows})
    return rows


# -- the run --------------------------------------------------------------------------------------------
@dataclass
class _CellWorker:
    """A picklable worker of the distributor seam: runs the cells it is given."""

    root: Path
    preset: BenchPreset
    seed: int
    device: str
    threads: int | None

    def __post_init__(self) -> None:  # made once per worker process
        if self.threads:
            torch.set_num_threads(self.threads)

    def __call__(self, task: tuple[str, str, float]) -> list[dict[str, Any]]:
        return run_cell(self.root, *task, self.preset, self.seed, self.device)


def resolve_preset(preset: str | BenchPreset, **overrides: Any) -> BenchPreset:
    """The preset named ``preset`` (or given), with ``overrides`` of its fields (None values ignored)."""
    if isinstance(preset, str):
        if preset not in BENCH_PRESETS:
            raise ConfigError(f"unknown bench preset {preset!r}; choose from: {', '.join(BENCH_PRESETS)}")
        preset = BENCH_PRESETS[preset]
    preset = replace(preset, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()
                                if v is not None})
    _check_preset(preset)
    return preset


def run_bench(preset: str | BenchPreset = "quick", out: str | os.PathLike = "bench", *, seed: int = 0,
              device: str = "cpu", distributor: str = "sequential", workers: int | None = None,
              threads: int | None = None, report: bool = True, progress: bool = True) -> pd.DataFrame:
    """Run a bench preset into ``out`` (see the module docstring); resumable cell by cell.

    Args:
        preset: a name of :data:`BENCH_PRESETS` or a :class:`BenchPreset`.
        out: the output folder.
        seed: every world, poisoning, training and evaluation seed derives from it.
        device: where training, embedding, scans and evaluations run (``"cpu"``, ``"cuda"``, ``"auto"``).
        distributor, workers: run the cells through the distributor seam (``"sequential"`` here, or
            ``"ray"`` with ``workers`` processes: cells run in parallel).
        threads: torch threads per worker process (with several workers on a CPU: cores / workers).
        report: write ``out/report.html`` (:func:`clipguard.report.build_bench_report`) at the end.

    Returns:
        The ``bench.csv`` table (one row per cell, stage and method).

    Raises:
        ConfigError: an unknown preset, world, attack or defence; ClipguardError of a stage (bad data).
        TasksFailedError: some cells failed (named); the finished ones are written first.
    """
    p = resolve_preset(preset)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    rec = RunRecord("bench", {"preset": asdict(p), "seed": seed, "device": device, "distributor": distributor,
                              "workers": workers, "threads": threads})
    cells = bench_cells(p)
    results: dict[tuple, list[dict[str, Any]]] = {}
    with rec.stage("cells"), progress_bar(len(cells), f"bench {p.name}", unit="cell", enabled=progress) as bar, \
            progress_enabled(False), make_distributor(distributor, workers=workers) as dist:
        failed = dist.map(partial(_CellWorker, root, p, seed, device, threads), cells,
                          lambda task, rows: _cell_done(results, task, rows, bar, progress), retries=0)
    if failed:
        rec["failed_cells"] = {cell_label(*t): e for t, e in failed.items()}
    table = pd.DataFrame([r for c in cells if c in results for r in results[c]])
    table.to_csv(root / "bench.csv", index=False)
    (root / "bench.md").write_text(format_bench(table, p), encoding="utf-8")
    rec["n_cells"], rec["n_rows"] = len(results), len(table)
    rec.save(root)  # the report reads run.json
    if report:
        with rec.stage("report"):
            build_bench_report(root)
        rec.save(root)
    if failed:  # the finished cells are written (tables, report); the run still says it is incomplete
        raise TasksFailedError(f"{len(failed)} of {len(cells)} bench cell(s) failed: "
                               + "; ".join(f"{cell_label(*t)}: {e}" for t, e in failed.items())
                               + f"; the others are in {root}/bench.csv; rerun the same command to retry them")
    return table


def _cell_done(results: dict, task: tuple, rows: list[dict[str, Any]], bar: Any, progress: bool) -> None:
    """Keep a finished cell's rows; one line on stderr with its CA, ASR and AUROCs (also without a terminal,
    where the bar is hidden: a bench runs for minutes)."""
    results[task] = rows
    model = next(r for r in rows if r["stage"] == "model")
    det = {r["method"]: r["auroc"] for r in rows if r["stage"] == "detection"}
    bar.update(1)
    if progress:
        shown = {k: det[k] for k in (DEFAULT_DETECTOR, "kdist", "dao") if k in det}
        bar.write(f"bench cell {len(results)}/{bar.total} {cell_label(*task)}: CA {model['ca']:.3f}  ASR "
                  f"{model['asr']:.3f}  AUROC " + "  ".join(f"{k} {v:.3f}" for k, v in shown.items())
                  + f"  ({model['seconds']:.0f} s to poison, train, evaluate, embed)", file=sys.stderr)


# -- the tables -----------------------------------------------------------------------------------------
def _md(df: pd.DataFrame, fmt: Callable[[Any], str]) -> list[str]:
    lines = ["| " + " | ".join(["", *map(str, df.columns)]) + " |", "|---" * (len(df.columns) + 1) + "|"]
    lines += ["| " + " | ".join([str(i), *(fmt(v) for v in row)]) + " |" for i, row in zip(df.index, df.to_numpy())]
    return lines


def _num(v: Any) -> str:
    return "-" if v is None or pd.isna(v) else f"{v:.3f}"


def _points(v: Any) -> str:
    return "-" if v is None or pd.isna(v) else f"{v:+.1f}"


def format_bench(table: pd.DataFrame, preset: BenchPreset) -> str:
    """``bench.md``: the backdoored models, detection AUROC/AUPRC and the defences, worst and mean over the
    cells whose backdoor was learned (:func:`clipguard.report.bench_tables`)."""
    out = [f"# clipguard bench --preset {preset.name}", "", preset.description, ""]
    if table.empty:
        return "\n".join(out + ["No cell finished."])
    t = bench_tables(table)
    out += ["## Backdoored models", "", "CA = zero-shot clean accuracy on the labelled test split; ASR = share of "
            "triggered test images whose true class is not the target that are classified as the target. "
            f"A backdoor counts as learned from ASR >= {preset.learned}.", ""]
    out += _md(t.models, _num) + [""]
    for value, what in (("auroc", "AUROC"), ("auprc", "AUPRC")):
        if value in t.detection:
            out += [f"## Detection: {what} per detector", "", f"Higher is better; `worst` and `mean` over the "
                    f"cells whose backdoor was learned ({len(t.learned)} of {len(t.cells)}).", ""]
            out += _md(t.detection[value], _num) + [""]
    if "asr" in t.defence:
        out += ["## Defences: ASR after (before: the model's row above)", "", "Lower is better; `worst` = the "
                "highest ASR left over the cells.", ""] + _md(t.defence["asr"], _num) + [""]
        out += ["## Defences: CA change in points (after - before)", "", "`worst` = the largest loss.", ""]
        out += _md(t.defence["ca_change"], _points) + [""]
    by_cell = table.groupby(["world", "attack", "rate"], sort=False)
    secs = by_cell["seconds"].sum() + by_cell["scan_seconds"].max().fillna(0)
    out += [f"Seconds per cell (sum of its stages): {', '.join(f'{v:.0f}' for v in secs)}; "
            f"{secs.sum() / 60:.1f} min in all."]
    return "\n".join(out) + "\n"
