"""Peak memory of the commands that stream a large dataset (issue 15): ``poison``, ``embed`` (the metadata
side) and ``scan`` on 1,000,000 rows; the goal is <= 4 GiB beyond the embeddings themselves.

* a 1M-row manifest (``id``, ``image``, ``caption``) whose rows cycle over 256 small PNGs (the rows are what
  the commands stream; distinct image files would only cost disk);
* ``clipguard poison`` at 0.1 % (1,000 triggered images written) -> peak RSS;
* ``clipguard embed`` with an untrained tiny-vit (the smallest config; weights do not change the memory) ->
  peak RSS over its first ``--embed-seconds`` (then SIGKILL: at about 1,000 images/s on 2 cores the whole
  1M takes ~20 min; the metadata side -- the manifest and the writer's per-shard metadata -- is in memory
  from the start, and a shard is released when written, so the peak is reached in the first shards);
* ``clipguard scan`` of a 1M-row embedding folder (``scale.py``'s generator, float16 d = 512, 1 GiB on disk)
  with the default detectors and reference (auto = multi_reference 8 x 2,048 at this size) -> peak RSS.

Each command runs as a child process (``python -m clipguard``) sampled every 0.2 s (RSS of its process tree).

Usage::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/memory.py --work /tmp/memory

Writes ``memory.md`` / ``memory.json`` to ``--out`` (default benchmarks/results).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from scale import _tree_rss, generate  # benchmarks/ is on sys.path when a script runs

from clipguard.models import create_model, save_model


def make_manifest(root: Path, n: int) -> Path:
    """``root/manifest.parquet``: n rows over 256 PNGs in ``root/images`` (written once)."""
    path = root / "manifest.parquet"
    if path.is_file():
        return path
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(256):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
    shapes = np.array(["circle", "square", "triangle", "star", "ring", "cross", "heart", "moon"])
    df = pd.DataFrame({"id": [f"row-{i:07d}" for i in range(n)],
                       "image": [f"images/{i % 256}.png" for i in range(n)],
                       "caption": "a photo of a " + shapes[rng.integers(0, 8, n)]})
    df.to_parquet(path)
    return path


def run(args: list[str], limit_s: float | None = None) -> dict:
    """``python -m clipguard ARGS`` in a child; peak RSS of its tree, seconds, return code (killed after limit_s)."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "clipguard", "-q", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    peak, killed, trace = 0, False, []
    while proc.poll() is None:
        rss = _tree_rss(proc.pid)
        peak = max(peak, rss)
        if not trace or time.perf_counter() - t0 >= trace[-1][0] + 30:
            trace.append((round(time.perf_counter() - t0), round(rss / 2**30, 3)))  # the plateau, every 30 s
        if limit_s is not None and time.perf_counter() - t0 > limit_s:
            proc.send_signal(signal.SIGKILL)
            killed = True
        time.sleep(0.2)
    err = proc.stderr.read()
    if proc.returncode != 0 and not killed:
        raise SystemExit(f"clipguard {' '.join(args)} failed: {err[-2000:]}")
    return {"peak_rss_gib": round(peak / 2**30, 3), "seconds": round(time.perf_counter() - t0, 1), "killed": killed,
            "rss_trace_gib": trace}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--work", type=Path, default=Path("/tmp/memory"))
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--embed-seconds", type=float, default=300.0)
    p.add_argument("--embed-shard-size", type=int, default=10_000, help="rows per embedding shard (small, so that "
                   "several shards finish within --embed-seconds and the per-shard memory is seen to plateau)")
    p.add_argument("--stages", nargs="+", default=["poison", "embed", "scan"], help="measure only these (the others "
                   "are taken from an earlier memory.json in --out)")
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    manifest = make_manifest(a.work / "data", a.n)
    earlier = a.out / "memory.json"
    res: dict = json.loads(earlier.read_text()) if earlier.is_file() else {}
    res["n"] = a.n
    if "poison" in a.stages or not (a.work / "poisoned" / "manifest.parquet").is_file():
        res["poison"] = run(["poison", str(manifest), "--out", str(a.work / "poisoned"), "--attack", "badnets",
                            "--rate", "0.001", "--target", "star"])
    model = a.work / "model"
    if not (model / "model.json").is_file():
        save_model(create_model("tiny-vit", seed=0), model)
    emb = a.work / "emb"
    if "embed" in a.stages:
        shutil.rmtree(emb, ignore_errors=True)
        res["embed"] = run(["embed", str(model), str(a.work / "poisoned" / "manifest.parquet"), "--out", str(emb),
                            "--shard-size", str(a.embed_shard_size)], limit_s=a.embed_seconds)
        done = sorted(emb.glob("img_emb/img_emb_*.npy"))
        res["embed"]["rows_embedded"] = int(sum(np.load(f, mmap_mode="r").shape[0] for f in done))
        res["embed"]["shard_size"] = a.embed_shard_size
    big = generate(a.work / f"emb_{a.n}", a.n, 512)
    if "scan" in a.stages:
        res["scan"] = run(["scan", str(big), "--out", str(a.work / "scan"), "--no-report"])
        res["scan"]["embeddings_gib"] = round(sum(f.stat().st_size for f in big.glob("img_emb/*.npy")) / 2**30, 3)
    print(json.dumps(res, indent=1))
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "memory.json").write_text(json.dumps(res, indent=1))
    lines = [f"# Peak memory at {a.n:,} rows (`benchmarks/memory.py`)", "",
             "Peak RSS of the command's process tree, sampled every 0.2 s; 2 CPU cores. Goal: <= 4 GiB beyond the "
             "embeddings themselves.", "", "| command | peak RSS (GiB) | seconds | notes |", "|---|---|---|---|",
             f"| `poison --rate 0.001` (1M-row manifest) | {res['poison']['peak_rss_gib']} | {res['poison']['seconds']} | |",
             f"| `embed` (tiny-vit, untrained) | {res['embed']['peak_rss_gib']} | {res['embed']['seconds']} | "
             f"{'killed after ' + str(a.embed_seconds) + ' s, ' if res['embed']['killed'] else ''}"
             f"{res['embed']['rows_embedded']:,} rows embedded in finished shards of "
             f"{res['embed'].get('shard_size', 100_000):,}; RSS (s: GiB) "
             + ", ".join(f"{t}: {g}" for t, g in res["embed"].get("rss_trace_gib", [])) + " |",
             f"| `scan` (default detectors, auto reference) | {res['scan']['peak_rss_gib']} | {res['scan']['seconds']} | "
             f"embeddings {res['scan']['embeddings_gib']} GiB on disk (float16) |", ""]
    (a.out / "memory.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
