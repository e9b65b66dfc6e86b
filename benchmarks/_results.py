"""Shared by the benchmark scripts: result rows as CSV, and the cell machinery of the sweeps (options,
workers in parallel, training until the backdoor is learned)."""
from __future__ import annotations

import csv
from pathlib import Path


def write_csv(path: Path, fields: list[str], rows: list[dict], float_format: str = ".4f") -> Path:
    """Write ``rows`` (dicts keyed by ``fields``) to ``path``, floats formatted with ``float_format``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: (format(v, float_format) if isinstance(v, float) else v) for k, v in r.items()})
    return path


def limit_threads(threads: int) -> None:
    """Cap torch's and FAISS's threads of this worker process (0 = leave the defaults)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
        import faiss

        faiss.omp_set_num_threads(threads)


def share_of(part: str, items: list) -> list:
    """The items of worker ``w`` of ``n`` (``part = "w/n"``): every n-th item from the w-th."""
    w, n = (int(x) for x in part.split("/"))
    return [item for i, item in enumerate(items) if i % n == w]


def spawn_workers(script: str, argv: list[str], jobs: int) -> list[int]:
    """Run ``script argv --part w/jobs`` for every worker w in parallel (OMP_WAIT_POLICY=PASSIVE);
    waits for them, prints a note when one failed, and returns their exit codes."""
    import os
    import subprocess
    import sys

    procs = [subprocess.Popen([sys.executable, script, *argv, "--part", f"{w}/{jobs}"],
                              env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}) for w in range(jobs)]
    codes = [pr.wait() for pr in procs]
    if any(codes):
        print(f"worker exit codes {codes}; finished cells are kept, rerun to continue", file=sys.stderr)
    return codes


def train_until_learned(manifest, cell, world, spec, *, epochs_ladder: list[int], learned: float, seed: int,
                        device, record_epochs: int = 0):
    """Train tiny-rn on ``manifest`` for each epoch count of the ladder, from scratch, until the zero-shot
    ASR on ``world``'s test split (trigger of ``spec``) reaches ``learned``.

    Returns ``(bundle, attempts, model_dir)`` of the last attempt; ``attempts`` lists epochs, CA, ASR
    and seconds of each.
    """
    import time

    from clipguard.evaluate.api import evaluate_model
    from clipguard.train import TrainConfig, train_from_manifest

    attempts, world = [], Path(world)
    for epochs in epochs_ladder:
        model_dir = Path(cell) / f"model_e{epochs}"
        t = time.perf_counter()
        bundle, _ = train_from_manifest(manifest, model_dir, progress=False, device=device, config=TrainConfig(
            epochs=epochs, seed=seed, record_epochs=min(record_epochs, epochs)))
        ev = evaluate_model(bundle, world / "test" / "manifest.parquet", world / "classes.json", attack_spec=spec,
                            seed=seed, progress=False)
        attempts.append({"epochs": epochs, "clean_accuracy": ev["clean_accuracy"],
                         "attack_success_rate": ev["attack_success_rate"],
                         "train_eval_seconds": round(time.perf_counter() - t, 1)})
        print(f"[{Path(cell).name}] {epochs} epochs: CA {ev['clean_accuracy']:.4f} "
              f"ASR {ev['attack_success_rate']:.4f}", flush=True)
        if ev["attack_success_rate"] >= learned:
            break
    return bundle, attempts, model_dir


def add_cell_options(p, work: str | None) -> None:
    """The options every cell benchmark takes: kNN k, seed, device, workers and threads, the
    hidden worker share, the scratch folder (default ``work``) and the results folder."""
    import argparse

    p.add_argument("--k", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="None/cpu, auto, cuda")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (cells run in parallel)")
    p.add_argument("--threads", type=int, default=0, help="torch/FAISS threads per worker (0 = default)")
    p.add_argument("--part", default=None, help=argparse.SUPPRESS)  # "w/n": the worker's share
    p.add_argument("--work", default=work, help="scratch folder (world, cells)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
