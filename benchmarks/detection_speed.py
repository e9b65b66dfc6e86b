"""Speed of the sample detectors (issue 4), on random-but-clustered unit embeddings.

Three measurements, each in its own child process (so peak RSS is that measurement's own):

``batch``
    Per-batch DAO (the DAO paper's reference: random batches of B, k neighbours) over N rows:
    clipguard's ``score_embeddings(reference="batch")`` (stacked batched matmul + top-k) against a
    straightforward implementation of the published algorithm on the same data and the same
    batches in the same process (``torch.cdist`` + a full ``torch.sort`` of every row, per
    batch). Goal: >= 5x faster. The two DAO vectors are compared (Spearman rho; DAO is the
    same under cosine and Euclidean distance on unit vectors, since ``d_euc = sqrt(2 d_cos)``
    only rescales every LID by 2 and every log-ratio by 1/2). ``torch`` and ``faiss`` are
    imported and both implementations run once on two batches before the clock starts, so
    neither timing includes library imports or first-call set-up (before 2026-11-22 the
    clipguard timing included ``import torch``, about 2 s on the 2-CPU machine).
``reference``
    Reference mode (c): every row scored against a fixed random reference of M rows with a
    FAISS IVF (or flat) index; recall@k against exact search measured on a sample. Goal for
    N = 1M, d = 512: <= 10 min, peak RSS <= 8 GiB, recall >= 0.95.
``global``
    Exact global self-kNN of N_global rows: clipguard's ``knn_search`` (blocked torch and FAISS
    backends, self excluded) against FAISS ``IndexFlatIP``'s own self-search (add + search
    k+1). Goal: within 1.3x of FAISS.

Usage::

    python benchmarks/detection_speed.py                        # the issue's sizes (long!)
    python benchmarks/detection_speed.py --n 20000 --d 64 --global-n 20000 \\
        --reference-size 5000 --out /tmp/speed                   # a smoke run

Writes ``detection_speed.csv`` and ``detection_speed.md`` to ``--out``
(default ``benchmarks/results``). Rows of parts that were not run this time are kept from the
existing ``detection_speed.csv`` there (``--fresh`` drops them), so ``--parts batch`` updates
only the batch rows.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from _results import write_csv  # benchmarks/ is on sys.path when a script runs

import numpy as np

FIELDS = ["part", "n", "d", "k", "what", "seconds", "speedup_or_ratio", "recall_at_k",
          "peak_rss_gib", "goal", "met", "notes"]


def clustered_embeddings(n: int, d: int, *, n_clusters: int = 1000, sigma: float = 0.5,
                         seed: int = 0, chunk: int = 65536) -> np.ndarray:
    """(n, d) float32 unit vectors: Gaussian clusters around ``n_clusters`` random centres
    (within-cluster cosine ~ 1 / (1 + sigma**2)), generated in chunks to bound memory."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_clusters, d), dtype=np.float32)
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        lab = rng.integers(0, n_clusters, e - s)
        block = centers[lab] + sigma * rng.standard_normal((e - s, d), dtype=np.float32)
        out[s:e] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


# -- the published algorithm, straightforwardly ------------------------------------------------

def published_batch_dao(x: np.ndarray, batches: list[np.ndarray], k: int, device: str | None = None) -> np.ndarray:
    """DAO per batch the straightforward way: torch.cdist, full sort of every row, drop the
    first column (self), then kdist, LID (MLE) and DAO from the sorted rows (on ``device``)."""
    import torch

    dev = torch.device(device or "cpu")
    out = np.empty(len(x), dtype=np.float64)
    with torch.no_grad():
        for idx in batches:
            xb = torch.from_numpy(x[idx]).to(dev)
            dist = torch.cdist(xb, xb)  # (B, B) Euclidean
            ds, di = torch.sort(dist, dim=1)  # full sort of every row
            ds, di = ds[:, 1:k + 1].double(), di[:, 1:k + 1]  # self is the first column
            ds = ds.clamp_min(1e-12)
            kd = ds[:, -1]
            lid = -1.0 / torch.log(ds / kd[:, None]).mean(dim=1)
            lid = torch.nan_to_num(lid, posinf=1e12)
            z = lid[di] * (torch.log(kd)[:, None] - torch.log(kd[di]))
            out[idx] = torch.exp(torch.logsumexp(z, dim=1) - np.log(k)).cpu().numpy()
    return out


# -- the three measurements (each runs in a child process) ------------------------------------

def part_batch(a: argparse.Namespace) -> list[dict]:
    from scipy.stats import spearmanr

    from clipguard.detect import score_embeddings
    from clipguard.detect.reference import batch_partition

    x = clustered_embeddings(a.n, a.d, seed=a.seed)
    batches = batch_partition(a.n, a.batch_size, a.k, a.seed)
    # warm-up: imports (torch, faiss) and first-call set-up of both, outside the timings
    w = min(a.n, 2 * a.batch_size)
    score_embeddings(x[:w], ["dao"], k=a.k, reference="batch", batch_size=a.batch_size, seed=a.seed, device=a.device)
    published_batch_dao(x, batch_partition(w, a.batch_size, a.k, a.seed), a.k, a.device)
    t = time.perf_counter()
    ours = score_embeddings(x, ["dao"], k=a.k, reference="batch", batch_size=a.batch_size, seed=a.seed,
                            device=a.device)[0]["dao"]
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    pub = published_batch_dao(x, batches, a.k, a.device)
    t_pub = time.perf_counter() - t
    rho = float(spearmanr(ours, pub).statistic)
    on = f" on {a.device}" if a.device else ""
    speed = t_pub / t_ours
    rows = [
        dict(part="batch", n=a.n, d=a.d, k=a.k, what=f"published cdist+sort, B={a.batch_size}{on}",
             seconds=t_pub),
        dict(part="batch", n=a.n, d=a.d, k=a.k, what=f"clipguard batch DAO, B={a.batch_size}{on}",
             seconds=t_ours, speedup_or_ratio=speed, goal=">= 5x faster", met=speed >= 5,
             notes=f"Spearman rho vs published = {rho:.6f}"),
    ]
    for r in rows:
        r["peak_rss_gib"] = peak_rss_gib()
    return rows


def part_reference(a: argparse.Namespace) -> list[dict]:
    from clipguard.detect import score_embeddings

    x = clustered_embeddings(a.n, a.d, seed=a.seed)
    t = time.perf_counter()
    _, info = score_embeddings(x, ["dao"], k=a.k, reference="reference",
                               reference_size=a.reference_size, index=a.index, nlist=a.nlist,
                               nprobe=a.nprobe, n_recall=a.n_recall, seed=a.seed)
    sec = time.perf_counter() - t
    ref = info["references"][0]
    rss = peak_rss_gib()
    recall = info["recall_at_k"]
    met = sec <= 600 and rss <= 8 and recall >= 0.95
    extra = f"nlist={ref.get('nlist')}, nprobe={ref.get('nprobe')}" if a.index == "ivf" else "exact"
    return [dict(part="reference", n=a.n, d=a.d, k=a.k,
                 what=f"reference M={ref['reference_size']}, {a.index} index ({extra}), DAO",
                 seconds=sec, recall_at_k=recall, peak_rss_gib=rss,
                 goal="<= 600 s, <= 8 GiB, recall >= 0.95", met=met,
                 notes=f"recall on {ref.get('recall_sample', 'all')} queries; peak RSS includes "
                       f"the {a.n * a.d * 4 / 2**30:.2f} GiB input")]


def part_global(a: argparse.Namespace) -> list[dict]:
    import faiss
    import torch  # noqa: F401  (imported before the clock starts, like faiss)

    from clipguard.detect import knn_search, score_embeddings

    n = a.global_n
    x = clustered_embeddings(n, a.d, seed=a.seed)
    t = time.perf_counter()
    index = faiss.IndexFlatIP(a.d)
    index.add(x)
    index.search(x, a.k + 1)
    t_faiss = time.perf_counter() - t
    rows = [dict(part="global", n=n, d=a.d, k=a.k, what="FAISS IndexFlatIP self-search (k+1)",
                 seconds=t_faiss)]
    if a.device:
        knn_search(x[:4096], x[:4096], a.k, exclude_self=True, device=a.device)  # warm-up (CUDA context)
    for backend in ("blocked", "faiss"):
        t = time.perf_counter()
        knn_search(x, x, a.k, exclude_self=True, backend=backend, device=a.device if backend == "blocked" else None)
        sec = time.perf_counter() - t
        on = f" on {a.device}" if a.device and backend == "blocked" else ""
        rows.append(dict(part="global", n=n, d=a.d, k=a.k,
                         what=f"clipguard knn_search backend={backend} (self excluded){on}",
                         seconds=sec, speedup_or_ratio=sec / t_faiss, goal="<= 1.3x FAISS",
                         met=sec / t_faiss <= 1.3))
    t = time.perf_counter()
    score_embeddings(x, ["dao"], k=a.k, reference="global", backend="faiss")
    sec = time.perf_counter() - t
    rows.append(dict(part="global", n=n, d=a.d, k=a.k, what="clipguard global DAO (faiss backend, "
                     "incl. normalisation and scores)", seconds=sec, speedup_or_ratio=sec / t_faiss))
    for r in rows:
        r["peak_rss_gib"] = peak_rss_gib()
    return rows


PARTS = {"batch": part_batch, "reference": part_reference, "global": part_global}


def merge_rows(new: list[dict], old: list[dict]) -> list[dict]:
    """``old`` with the rows of every part present in ``new`` replaced by ``new``'s rows of
    that part (in place of the first old row of the part); parts new to the file go last."""
    fresh = {r["part"] for r in new}
    out: list[dict] = []
    placed: set[str] = set()
    for r in old:
        part = r.get("part")
        if part not in fresh:
            out.append(r)
        elif part not in placed:
            out += [n for n in new if n["part"] == part]
            placed.add(part)
    return out + [n for n in new if n["part"] not in placed]


def read_rows(path: Path) -> list[dict]:
    """Rows of an existing results CSV (values as text), or [] when there is none."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write(rows: list[dict], out: Path, a: argparse.Namespace, measured: list[str],
          kept: int = 0) -> None:
    write_csv(out / "detection_speed.csv", FIELDS, rows, ".4g")
    lines = [f"# Detection speed ({time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, "
             f"{os.cpu_count()} CPUs, torch threads {a.threads or 'default'})", ""]
    if kept:
        lines += [f"Measured in this run: {', '.join(measured)}. The other {kept} rows are kept "
                  "from the previous results file.", ""]
    lines += ["| " + " | ".join(FIELDS) + " |", "|" + "---|" * len(FIELDS)]
    for r in rows:
        lines.append("| " + " | ".join(
            f"{r.get(k):.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in FIELDS) + " |")
    (out / "detection_speed.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", default="batch,reference,global")
    p.add_argument("--n", type=int, default=1_000_000, help="rows of the batch and reference parts")
    p.add_argument("--global-n", type=int, default=100_000, help="rows of the global part")
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--reference-size", type=int, default=50_000)
    p.add_argument("--index", default="ivf", choices=["flat", "ivf"])
    p.add_argument("--nlist", type=int, default=None)
    p.add_argument("--nprobe", type=int, default=None)
    p.add_argument("--n-recall", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch/FAISS threads (0 = default)")
    p.add_argument("--device", default=None, help="torch device of our kNN and of the published "
                   "algorithm (batch part) and of the blocked backend (global part); default CPU")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--fresh", action="store_true",
                   help="write only this run's rows (default: keep the rows of the other parts "
                        "from the existing detection_speed.csv in --out)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.threads:
        import faiss
        import torch

        torch.set_num_threads(a.threads)
        faiss.omp_set_num_threads(a.threads)
    if a.child:  # one measurement; print its rows as JSON
        print(json.dumps(PARTS[a.child](a)))
        return
    rows: list[dict] = []
    args = sys.argv[1:] if argv is None else list(argv)
    for part in [s.strip() for s in a.parts.split(",") if s.strip()]:
        if part not in PARTS:
            p.error(f"unknown part {part!r}; choose from {', '.join(PARTS)}")
        print(f"== {part} ...", flush=True)
        res = subprocess.run([sys.executable, __file__, *args, "--child", part],
                             capture_output=True, text=True)
        if res.returncode != 0:
            print(res.stderr, file=sys.stderr)
            raise SystemExit(f"part {part} failed")
        part_rows = json.loads(res.stdout.strip().splitlines()[-1])
        for r in part_rows:
            print("  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in r.items() if k not in ("part",)), flush=True)
        rows += part_rows
    old = [] if a.fresh else read_rows(Path(a.out) / "detection_speed.csv")
    merged = merge_rows(rows, old)
    write(merged, Path(a.out), a, list(dict.fromkeys(r["part"] for r in rows)),
          kept=len(merged) - len(rows))
    print(f"-> {Path(a.out) / 'detection_speed.md'}")


if __name__ == "__main__":
    main()
