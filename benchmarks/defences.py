"""Model defences on the embedded world: a table like CleanCLIP's Table 1 (issue 10).

Rows: no defence, MMCL only, SSL only, CleanCLIP (lambda2 = 1, 2, 4), supervised finetuning, PAR,
filter-and-retrain (1 % and 5 % of the default scan; 5 % of a ``multi_reference`` scan), ABL. Columns: CA and ASR of tiny-rn models backdoored with BadNets,
Blended, SIG, WaNet (s = 4) and BadCLIP at 5 %, and BadNets and SIG at 0.5 %. Plus a sweep of the
clean finetuning set's size (CleanCLIP) and of the learning rate (CleanCLIP, MMCL, PAR) on BadNets 5 %,
and the throughput of
a CleanCLIP step against a plain CLIP step on the same batches.

Set-up (preset ``cpu``): the shapes world (seed 0, 5,000 training pairs, 1,000 test images), tiny-rn
trained 8 epochs on each poisoned copy (dirty-label, target ``star``); the clean finetuning set is a
second shapes world drawn with another seed (``clipguard synth --seed 1``), disjoint from the training
set, of ``ft_size`` pairs; finetuning defences run ``ft_epochs`` epochs with their defaults; rows that
train from scratch (filter-and-retrain, ABL) run ``retrain_epochs`` epochs (fewer than the 8 of the
backdoored model, to fit the CPU; stated in the table), and only on the models whose backdoor was
learned (ASR >= 0.8). ABL's clean reference is a tiny-rn trained on
the clean world; it unlearns the 5 % of pairs with the lowest cosine under it.

Usage::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/defences.py --preset cpu --jobs 2 --threads 1
    python benchmarks/defences.py --preset cpu --report-only

Every job is resumable (a finished one has its ``run.json`` / ``result.json`` and is skipped).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

# benchmarks/ is on sys.path when a script runs
from _results import add_cell_options, limit_threads, share_of, spawn_workers, write_csv

ATTACKS = {
    "badnets": ("badnets", {"size": 8, "cell": 2}),
    "blended": ("blended", {"alpha": 0.2}),
    "sig": ("sig", {}),
    "wanet": ("wanet", {"k": 4, "strength": 4.0}),
    "badclip": ("badclip", {}),
}
MODELS = [("badnets", 0.05), ("blended", 0.05), ("sig", 0.05), ("wanet", 0.05), ("badclip", 0.05),
          ("badnets", 0.005), ("sig", 0.005)]
PRESETS = {
    "cpu": {"world": "shapes", "speed": True, "n_train": 5000, "n_test": 1000, "epochs": 8, "ft_size": 1000, "ft_pool": 2000, "ft_epochs": 10,
            "retrain_epochs": 4, "badclip_steps": 100, "sizes": [165, 500, 2000], "lrs": [5e-4, 5e-3],
            "par_lrs": [5e-4, 1e-4]},
    # a second world, on a GPU: the long-tailed world (128 concepts, Zipf 1.1), the most frequent concept as target
    "gpu-longtail": {"world": "longtail", "speed": False, "n_concepts": 128, "n_train": 5000, "n_test": 1000,
                     "epochs": 8, "ft_size": 1000, "ft_pool": 1000, "ft_epochs": 10, "retrain_epochs": 8,
                     "badclip_steps": 0, "sizes": [], "lrs": [], "models": [("badnets", 0.05), ("sig", 0.05)]},
    # the same on the CPU (about 30 min on 2 cores): every row, retraining 8 epochs as the models
    "cpu-longtail": {"world": "longtail", "speed": False, "n_concepts": 128, "n_train": 5000, "n_test": 1000,
                     "epochs": 8, "ft_size": 1000, "ft_pool": 1000, "ft_epochs": 10, "retrain_epochs": 8,
                     "badclip_steps": 0, "sizes": [], "lrs": [5e-4], "models": [("badnets", 0.05), ("sig", 0.05)]},
    "smoke": {"world": "shapes", "speed": True, "n_train": 600, "n_test": 100, "epochs": 1, "ft_size": 128, "ft_pool": 256, "ft_epochs": 1,
              "retrain_epochs": 1, "badclip_steps": 3, "sizes": [64], "lrs": [1e-4]},
    "smoke-longtail": {"world": "longtail", "speed": False, "n_concepts": 16, "n_train": 600, "n_test": 100,
                       "epochs": 1, "ft_size": 128, "ft_pool": 128, "ft_epochs": 1, "retrain_epochs": 1,
                       "badclip_steps": 0, "sizes": [], "lrs": [], "models": [("badnets", 0.05)]},
}
TARGET = "star"
LEARNED = 0.8  # ASR from which a backdoor counts as learned (retrain rows run on those only)


def rows(a: argparse.Namespace) -> list[tuple[str, str, dict]]:
    """The table's defence rows: (label, method, parameters)."""
    clean = str(Path(a.work) / "clean_model")
    return [("MMCL only", "mmcl", {}), ("SSL only", "ssl", {}),
            ("CleanCLIP l2=1", "cleanclip", {"lambda2": 1.0}), ("CleanCLIP l2=2", "cleanclip", {"lambda2": 2.0}),
            ("CleanCLIP l2=4", "cleanclip", {"lambda2": 4.0}), ("supervised", "supervised", {}),
            ("PAR", "par", {}), ("filter-retrain 1%", "filter-retrain", {"share": 0.01}),
            ("filter-retrain 5%", "filter-retrain", {"share": 0.05}),
            ("filter-retrain 5% multi-ref", "filter-retrain", {"share": 0.05, "reference": "multi_reference"}),
            ("ABL", "abl", {"reference": clean, "share": 0.05})]


def models_of(a: argparse.Namespace) -> list[tuple[str, float]]:
    """The backdoored models of the preset (default: :data:`MODELS`)."""
    return PRESETS[a.preset].get("models", MODELS)


def model_name(attack: str, rate: float) -> str:
    return f"{attack}_{rate:g}"


def learned(a: argparse.Namespace, model: str) -> bool:
    """Whether the backdoored model's ASR reached ``LEARNED`` (False while it is not trained yet)."""
    path = Path(a.work) / "models" / model / "result.json"
    return path.is_file() and json.loads(path.read_text())["attack_success_rate"] >= LEARNED


def slug(label: str) -> str:
    return label.lower().replace(" ", "_").replace("%", "pct").replace("=", "")


# -- stage 1: worlds, the clean model, the BadCLIP patch --------------------------------------------------
def _labels(df, world: Path) -> list[int]:
    """Class index of each row: the first-named shape (shapes world; 26 % of its rows show two shapes) or
    the concept's class (long-tailed world)."""
    classes = json.loads((world / "classes.json").read_text())["classes"]
    if "shapes" in df.columns:
        return [classes.index(s.split(",")[0]) for s in df["shapes"]]
    return [classes.index(c) for c in df["concept"]]


def target_of(a: argparse.Namespace) -> str:
    """The target class: ``star`` (shapes) or the most frequent concept (long-tailed world)."""
    if PRESETS[a.preset]["world"] == "shapes":
        return TARGET
    return json.loads((Path(a.work) / "world" / "classes.json").read_text())["classes"][0]


def templates_of(a: argparse.Namespace) -> list[str]:
    from clipguard.data.longtail import poison_templates
    from clipguard.data.templates import DEFAULT_TEMPLATES

    return list(DEFAULT_TEMPLATES) if PRESETS[a.preset]["world"] == "shapes" else poison_templates(target_of(a))


def _generate(a: argparse.Namespace, out: Path, n_train: int, n_test: int, seed: int) -> None:
    from clipguard.data.longtail import generate_longtail_world
    from clipguard.data.synth import generate_world

    pr = PRESETS[a.preset]
    if pr["world"] == "shapes":
        generate_world(out, n_train=n_train, n_test=n_test, seed=seed, progress=False)
    else:
        generate_longtail_world(out, n_train=n_train, n_test=n_test, n_concepts=pr["n_concepts"], seed=seed,
                                progress=False)

def make_worlds(a: argparse.Namespace) -> None:
    from clipguard.attacks.badclip import BadCLIPConfig, optimize_badclip_patch
    from clipguard.data.manifest import read_manifest, write_manifest
    from clipguard.train import TrainConfig, train_from_manifest

    pr, work = PRESETS[a.preset], Path(a.work)
    if not (work / "world" / "classes.json").is_file():
        _generate(a, work / "world", pr["n_train"], pr["n_test"], a.seed)
    ft = work / "finetune_world"
    if not (ft / "classes.json").is_file():
        _generate(a, ft, pr["ft_pool"], 10, a.seed + 1)
    pool = read_manifest(ft / "train" / "manifest.parquet")
    for n in {pr["ft_size"], *pr["sizes"]}:  # the first n pairs, labelled with the pool's class index
        path = ft / f"finetune_{n}.parquet"
        if not path.is_file():
            df = pool.df.iloc[:n].copy()
            df["image"] = [str(pool.image_path(i).relative_to(ft)) for i in range(n)]
            df["id"] = "ft-" + df["id"].astype(str)  # a world of another seed reuses the ids train-000000...
            df["label"] = _labels(df, ft)  # for the supervised control
            write_manifest(df, path)
    if not (work / "clean_model" / "model.json").is_file():
        train_from_manifest(work / "world" / "train" / "manifest.parquet", work / "clean_model",
                            config=TrainConfig(epochs=pr["epochs"], seed=a.seed), progress=False, device=a.device)
    if "badclip" in dict(models_of(a)) and not (work / "badclip" / "trigger.png").is_file():
        from clipguard.models import load_model

        optimize_badclip_patch(load_model(work / "clean_model"), read_manifest(work / "world" / "train" / "manifest.parquet"),
                               work / "badclip", target=target_of(a), templates=templates_of(a),
                               config=BadCLIPConfig(steps=pr["badclip_steps"], seed=a.seed), progress=False)


# -- stage 2: the backdoored models ------------------------------------------------------------------------
def train_model(attack: str, rate: float, a: argparse.Namespace) -> None:
    from clipguard.attacks import get_trigger, poison_dataset
    from clipguard.data.manifest import read_manifest
    from clipguard.evaluate.api import evaluate_model
    from clipguard.train import TrainConfig, train_from_manifest

    cell, work = Path(a.work) / "models" / model_name(attack, rate), Path(a.work)
    if (cell / "result.json").is_file():
        return
    t0 = time.perf_counter()
    name, params = ATTACKS[attack]
    if attack == "badclip":
        params = {"patch": str(work / "badclip" / "trigger.png")}
    res = poison_dataset(read_manifest(work / "world" / "train" / "manifest.parquet"), cell / "data",
                         get_trigger(name, **params), target=target_of(a), rate=rate, templates=templates_of(a),
                         seed=a.seed, progress=False)
    bundle, _ = train_from_manifest(res.manifest_path, cell / "model", progress=False, device=a.device,
                                    config=TrainConfig(epochs=PRESETS[a.preset]["epochs"], seed=a.seed))
    ev = evaluate_model(bundle, work / "world" / "test" / "manifest.parquet", work / "world" / "classes.json",
                        attack_spec=res.spec_path, seed=a.seed, progress=False)
    out = {"attack": attack, "rate": rate, "n_poisoned": res.n_poisoned, "clean_accuracy": ev["clean_accuracy"],
           "attack_success_rate": ev["attack_success_rate"], "seconds": round(time.perf_counter() - t0, 1)}
    (cell / "result.json").write_text(json.dumps(out, indent=1))
    print(f"[{cell.name}] CA {out['clean_accuracy']:.3f} ASR {out['attack_success_rate']:.3f} "
          f"({out['seconds']:.0f} s)", flush=True)


# -- stage 3: the defences and the sweeps ----------------------------------------------------------------
def defence_jobs(a: argparse.Namespace) -> list[dict]:
    """Every defence run: the table (each model x each row), then the size and learning-rate sweeps."""
    pr, work = PRESETS[a.preset], Path(a.work)
    ft = lambda n: str(work / "finetune_world" / f"finetune_{n}.parquet")  # noqa: E731
    jobs = []
    for label, method, params in rows(a):
        for attack, rate in models_of(a):
            m = model_name(attack, rate)
            retrain = method in ("filter-retrain", "abl")
            if retrain and not learned(a, m):  # retraining from scratch is the costly row: learned backdoors only
                continue
            jobs.append({"out": str(work / "defended" / m / slug(label)), "label": label, "method": method,
                         "params": params, "model": m, "sweep": "table",
                         "data": str(work / "models" / m / "data" / "manifest.parquet") if retrain else ft(pr["ft_size"]),
                         "train": {"epochs": pr["retrain_epochs"] if retrain else pr["ft_epochs"]}})
    for n in pr["sizes"]:
        jobs.append({"out": str(work / "sweep" / f"size_{n}"), "label": f"CleanCLIP size {n}", "method": "cleanclip",
                     "params": {}, "model": "badnets_0.05", "sweep": "size", "data": ft(n),
                     "train": {"epochs": pr["ft_epochs"]}})
    lrs = [(lr, m) for lr in pr["lrs"] for m in ("cleanclip", "mmcl")] + [(lr, "par") for lr in pr.get("par_lrs", [])]
    for lr, method in lrs:
        jobs.append({"out": str(work / "sweep" / f"{method}_lr_{lr:g}"), "label": f"{method} lr {lr:g}",
                     "method": method, "params": {}, "model": "badnets_0.05", "sweep": "lr",
                     "data": ft(pr["ft_size"]), "train": {"epochs": pr["ft_epochs"], "lr": lr}})
    return jobs


def run_defence_job(job: dict, a: argparse.Namespace) -> None:
    from clipguard.pipeline import defend_model

    out, work = Path(job["out"]), Path(a.work)
    if (out / "run.json").is_file():
        return
    cell = work / "models" / job["model"]
    t = time.perf_counter()
    rec = defend_model(job["method"], cell / "model", job["data"], out, test=work / "world" / "test" / "manifest.parquet",
                       classes=work / "world" / "classes.json", attack_spec=cell / "data" / "attack.json",
                       params=job["params"], train=job["train"], seed=a.seed, device=a.device, progress=False)
    for sub in ("retrain", "checkpoints", "scan"):  # keep the record and the model, not the intermediates
        shutil.rmtree(out / sub, ignore_errors=True)
    print(f"[{job['model']} / {job['label']}] CA {rec['before']['clean_accuracy']:.3f} -> "
          f"{rec['after']['clean_accuracy']:.3f}, ASR {rec['before']['attack_success_rate']:.3f} -> "
          f"{rec['after']['attack_success_rate']:.3f} ({time.perf_counter() - t:.0f} s)", flush=True)


# -- stage 4: speed --------------------------------------------------------------------------------------
def measure_speed(a: argparse.Namespace) -> dict:
    """pairs/s of one epoch of MMCL and of CleanCLIP finetuning on the same set (loader workers 1)."""
    from clipguard.pipeline import defend_model

    work, pr = Path(a.work), PRESETS[a.preset]
    path = work / "speed.json"
    if path.is_file():
        return json.loads(path.read_text())
    out = {}
    for method in ("mmcl", "cleanclip"):
        rec = defend_model(method, work / "models" / "badnets_0.05" / "model",
                           work / "finetune_world" / f"finetune_{pr['ft_size']}.parquet", work / "speed" / method,
                           train={"epochs": 2}, workers=a.loader_workers, seed=a.seed, device=a.device, progress=False)
        out[method] = rec["defence"]["history"][-1]["pairs_per_s"]
    out["ratio_step_cost"] = out["mmcl"] / out["cleanclip"]
    out["loader_workers"] = a.loader_workers
    path.write_text(json.dumps(out, indent=1))
    return out


def worker(a: argparse.Namespace) -> None:
    limit_threads(a.threads)
    if a.stage == "models":
        for attack, rate in share_of(a.part, models_of(a)):
            train_model(attack, rate, a)
    else:
        for job in share_of(a.part, defence_jobs(a)):
            run_defence_job(job, a)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=list(PRESETS), default="cpu")
    p.add_argument("--stage", choices=["models", "defences"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--loader-workers", type=int, default=1, help="data-loader workers of the speed check")
    p.add_argument("--report-only", action="store_true")
    add_cell_options(p, None)
    a = p.parse_args(argv)
    a.work = a.work or f"runs/defences_{a.preset}"
    return a


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    argv = argv if argv is not None else sys.argv[1:]
    if a.part:
        worker(a)
        return
    if not a.report_only:
        limit_threads(a.threads * a.jobs)
        make_worlds(a)
        spawn_workers(__file__, [*argv, "--stage", "models"], a.jobs)
        spawn_workers(__file__, [*argv, "--stage", "defences"], a.jobs)
        if PRESETS[a.preset]["speed"]:
            measure_speed(a)
    from defences_report import report  # benchmarks/defences_report.py: the tables

    print(f"-> {report(a, rows(a), models_of(a), defence_jobs(a), PRESETS[a.preset]['world'])}")


if __name__ == "__main__":
    main()
