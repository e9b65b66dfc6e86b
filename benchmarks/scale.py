"""Scan cost as N grows (issue 13): throughput, peak RSS and cost per sample of the sharded scan,
sequential vs Ray, on generated clustered embeddings (memory-mapped float16, d = 512).

For every N (default 100k, 1M, 10M) an embedding folder is generated once under ``--work``
(shards of 1M rows, float16 as clip-retrieval writes them, a metadata file with integer ids;
Gaussian clusters around 1,000 random centres, within-cluster cosine about 0.8, the generator of
``detection_speed.py``). Each measurement runs ``clipguard.distributed.scan_sharded`` in its own
child process (per-batch DAO: the DAO paper's reference, B = 2,048, k = 16, detectors ``dao``
by default) while this process samples the summed RSS of the child's whole process tree (the
local Ray cluster the child starts included; shared memory is counted once per process that
maps it, so the Ray figures are upper bounds) every 0.2 s.

Reported per (N, distributor): wall seconds of the scan call, its map and reduce stages,
embeddings per second, microseconds per sample, peak RSS, and for Ray the overhead over the
sequential run of the same N ("on the same cores": the sequential scan uses both cores through
torch's threads, Ray runs one single-threaded worker per core).

Usage::

    python benchmarks/scale.py                                   # 100k, 1M (both), 10M (sequential)
    python benchmarks/scale.py --sizes 20000 --work /tmp/scale --out /tmp/scale   # a smoke run

Writes ``scale.csv``, ``scale.md`` and ``scale.json`` to ``--out`` (default benchmarks/results).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _results import write_csv  # benchmarks/ is on sys.path when a script runs

FIELDS = ["n", "distributor", "workers", "detectors", "reference", "seconds", "map_seconds", "reduce_seconds",
          "embeddings_per_s", "us_per_sample", "peak_rss_gib", "ray_overhead", "n_parts", "notes"]

_CHILD = """
import json, sys, time
from clipguard.distributed import scan_sharded
a = json.loads(sys.argv[1])
t0 = time.perf_counter()
res = scan_sharded(a["emb"], a["out"], detectors=a["detectors"], reference="batch", batch_size=a["batch"], k=a["k"],
                   distributor=a["distributor"], workers=a["workers"], object_store_mb=a["store_mb"],
                   part_rows=a["part_rows"], device="cpu")
seconds = time.perf_counter() - t0
run = json.load(open(res.run_json))
print("RESULT " + json.dumps({"seconds": seconds, "timings": run["timings_s"], "distributed": run["distributed"]}))
"""


def generate(folder: Path, n: int, d: int, *, shard_rows: int = 1_000_000, seed: int = 0) -> Path:
    """An embedding folder of ``n`` clustered unit rows (float16), written once (kept for reruns)."""
    import pandas as pd

    from clipguard.io.writer import write_embedding_shard

    done = folder / "GENERATED"
    if done.is_file():
        return folder
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    for i, s in enumerate(range(0, n, shard_rows)):
        m = min(shard_rows, n - s)
        x = np.empty((m, d), dtype=np.float16)
        for c in range(0, m, 65536):
            e = min(c + 65536, m)
            lab = rng.integers(0, len(centres), e - c)
            v = centres[lab] + (0.5 / np.sqrt(d)) * rng.normal(size=(e - c, d)).astype(np.float32)
            x[c:e] = v / np.linalg.norm(v, axis=1, keepdims=True)
        write_embedding_shard(folder, i, x, pd.DataFrame({"id": np.arange(s, s + m, dtype=np.int64)}))
        print(f"  generated shard {i} ({m} rows)", flush=True)
    done.write_text(str(n))
    return folder


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def measure(emb: Path, out: Path, distributor: str, a: argparse.Namespace) -> dict:
    """One scan in a child process; its result and the peak RSS of its process tree."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    args = {"emb": str(emb), "out": str(out), "detectors": a.detectors, "batch": a.batch, "k": a.k,
            "distributor": distributor, "workers": a.workers if distributor == "ray" else None,
            "store_mb": a.store_mb if distributor == "ray" else None, "part_rows": a.part_rows}
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(args)], stdout=subprocess.PIPE, text=True,
                            env=env)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss(proc.pid))
        time.sleep(0.2)
    text = proc.stdout.read()
    line = [x for x in text.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        raise SystemExit(f"scan failed ({distributor}, {emb}): rc {proc.returncode}\n{text[-2000:]}")
    r = json.loads(line[0][7:])
    r["peak_rss"] = peak
    return r


def row_of(n: int, distributor: str, r: dict, a: argparse.Namespace) -> dict:
    t = r["timings"]
    return {"n": n, "distributor": distributor, "workers": r["distributed"].get("workers") or 1,
            "detectors": "+".join(a.detectors), "reference": f"batch B={a.batch} k={a.k}",
            "seconds": round(r["seconds"], 2), "map_seconds": round(t.get("map", 0.0), 2),
            "reduce_seconds": round(t.get("reduce", 0.0), 2),
            "embeddings_per_s": round(n / r["seconds"], 1), "us_per_sample": round(1e6 * r["seconds"] / n, 2),
            "peak_rss_gib": round(r["peak_rss"] / 2**30, 3), "ray_overhead": "", "n_parts": r["distributed"]["n_parts"],
            "notes": ""}


def write_report(rows: list[dict], out: Path, a: argparse.Namespace) -> None:
    write_csv(out / "scale.csv", FIELDS, rows)
    (out / "scale.json").write_text(json.dumps({"rows": rows, "args": vars(a), "machine": platform.node(),
                                                "cpus": os.cpu_count()}, indent=1))
    lines = [f"# Scan scale ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, d={a.d} float16 "
             f"memory-mapped, per-batch reference B={a.batch}, k={a.k}, detectors {'+'.join(a.detectors)})", "",
             "| " + " | ".join(FIELDS) + " |", "|" + "---|" * len(FIELDS)]
    lines += ["| " + " | ".join(str(r[f]) for f in FIELDS) + " |" for r in rows]
    (out / "scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000, 10_000_000])
    p.add_argument("--ray-sizes", type=int, nargs="*", default=[100_000, 1_000_000],
                   help="sizes also scanned with --distributor ray")
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--part-rows", type=int, default=131_072)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--store-mb", type=int, default=2048)
    p.add_argument("--detectors", nargs="*", default=["dao"])
    p.add_argument("--work", default="runs/scale")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    a = p.parse_args(argv)
    work, out = Path(a.work), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for n in a.sizes:
        emb = generate(work / f"emb_{n}", n, a.d)
        seq = measure(emb, work / f"scan_{n}_sequential", "sequential", a)
        rows.append(row_of(n, "sequential", seq, a))
        write_report(rows, out, a)
        if n in a.ray_sizes:
            ray = measure(emb, work / f"scan_{n}_ray", "ray", a)
            row = row_of(n, "ray", ray, a)
            row["ray_overhead"] = round(ray["seconds"] / seq["seconds"] - 1, 3)
            rows.append(row)
            write_report(rows, out, a)


if __name__ == "__main__":
    main()
