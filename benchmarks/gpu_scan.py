"""The per-batch DAO scan on a GPU (issue 13): clipguard's on-device scan against the published
algorithm and today's engine, on the same clustered unit embeddings and the same batches.

Timed, on ``--device`` (default: the GPU when torch sees one), after a warm-up, with
``torch.cuda.synchronize()`` around every timing (the median of ``--repeats`` runs):

(a) the published algorithm done straightforwardly: per batch ``torch.cdist`` + a full
    ``torch.sort`` of every row + kdist / LID / DAO in torch (``published_batch_dao`` of
    ``detection_speed.py``), twice: from the host array (each batch gathered on the host and
    copied: the copy is INCLUDED) and from the rows already on the device (copy EXCLUDED);
(b) today's engine: ``score_embeddings(x, ["dao"], reference="batch", device=...)``
    (kNN on the device, normalisation and scores on the CPU; run once);
(c) ``batch_scores_on_device(x, batches, k, ["dao"], device=...)`` for each ``--precisions``,
    from a float32 host array, a float16 host array, and (fp32 only) from the float32 rows
    already on the device.

Reported: seconds, the speed-up of (c) over (a) with and without the copy (``goal_5x_met``
compares like with like: (c) from a host array against (a) from the host, (c) from the rows on
the device against (a) from the device), and the agreement of (c)
with (b) on the same host array: Spearman rho, max and 99.99th-percentile relative error of
DAO, the largest ``|ln DAO_c - ln DAO_b| / max(1, |ln DAO_b|)`` and the share of rows with a
relative error above 1e-3 (DAO's relative error grows with |ln DAO|: it is the error of
``LID(o) * ln(kdist(q) / kdist(o))``). The peak device memory each (c) run allocates is recorded.

Usage::

    python benchmarks/gpu_scan.py                                        # N=1M, d=512, on the GPU
    python benchmarks/gpu_scan.py --n 20000 --d 64 --device cpu --out /tmp/gpu_scan   # a smoke run

Writes ``gpu_scan.json`` and ``gpu_scan.md`` to ``--out`` (default ``benchmarks/results``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from detection_speed import clustered_embeddings, published_batch_dao  # benchmarks/ is on sys.path


def published_batch_dao_resident(xdev, batches_dev: list, k: int):
    """``published_batch_dao`` with the rows and the batch indices already on the device and the
    scores left there ((N,) float64 tensor): the same per-batch cdist + full sort + DAO."""
    import torch

    out = torch.empty(xdev.shape[0], dtype=torch.float64, device=xdev.device)
    with torch.no_grad():
        for idx in batches_dev:
            xb = xdev[idx]
            dist = torch.cdist(xb, xb)
            ds, di = torch.sort(dist, dim=1)
            ds, di = ds[:, 1:k + 1].double(), di[:, 1:k + 1]
            ds = ds.clamp_min(1e-12)
            kd = ds[:, -1]
            lid = torch.nan_to_num(-1.0 / torch.log(ds / kd[:, None]).mean(dim=1), posinf=1e12)
            z = lid[di] * (torch.log(kd)[:, None] - torch.log(kd[di]))
            out[idx] = torch.exp(torch.logsumexp(z, dim=1) - math.log(k))
    return out


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn: Callable[[], Any], dev, repeats: int) -> tuple[float, Any, float | None]:
    """Median seconds of ``repeats`` runs of ``fn`` (synchronised), its last result, and the peak
    device memory (GiB) those runs allocated on top of what was allocated before (None on the CPU)."""
    import torch

    times, out, base = [], None, 0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    for _ in range(repeats):
        _sync(dev)
        t = time.perf_counter()
        out = fn()
        _sync(dev)
        times.append(time.perf_counter() - t)
    peak = (torch.cuda.max_memory_allocated(dev) - base) / 2**30 if dev.type == "cuda" else None
    return statistics.median(times), out, peak


def agreement(c: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """How far DAO scores ``c`` are from the reference ``b`` (see the module docstring)."""
    from scipy.stats import spearmanr

    rel = np.abs(c - b) / np.abs(b)
    dlog = np.abs(np.log(c) - np.log(b)) / np.maximum(1.0, np.abs(np.log(b)))
    return {"rho_vs_engine": float(spearmanr(c, b).statistic), "max_rel_err": float(rel.max()),
            "p9999_rel_err": float(np.quantile(rel, 0.9999)), "max_log_err": float(dlog.max()),
            "share_rel_err_gt_1e-3": float(np.mean(rel > 1e-3))}


def warm_up(a: argparse.Namespace, dev, x32: np.ndarray, precisions: list[str]) -> None:
    """Imports, CUDA context, cuBLAS handles and kernels, pinned host buffers: every timed path
    once on a few batches (ours once on everything: its pinned buffers are sized by the data)."""
    import torch

    from clipguard.detect import score_embeddings
    from clipguard.detect.detectors.device_batch import batch_scores_on_device
    from clipguard.detect.reference import batch_partition

    w = min(len(x32), 4 * a.batch_size)
    small = batch_partition(w, a.batch_size, a.k, a.seed)
    published_batch_dao(x32[:w], small, a.k, str(dev))
    xs = torch.from_numpy(x32[:w]).to(dev)
    published_batch_dao_resident(xs, [torch.from_numpy(b).to(dev) for b in small], a.k)
    score_embeddings(x32[:w], ["dao"], k=a.k, reference="batch", batch_size=a.batch_size, seed=a.seed,
                     device=str(dev))
    batches = batch_partition(len(x32), a.batch_size, a.k, a.seed)
    for p in precisions:
        batch_scores_on_device(x32, batches, a.k, ["dao"], device=dev, precision=p, max_floats=a.max_floats)
    _sync(dev)


def measure(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    from clipguard.detect import score_embeddings
    from clipguard.detect.detectors.device_batch import batch_scores_on_device
    from clipguard.detect.reference import batch_partition
    from clipguard.utils.device import resolve_device

    dev = resolve_device(a.device)
    precisions = [p.strip() for p in a.precisions.split(",") if p.strip()]
    t = time.perf_counter()
    x32 = clustered_embeddings(a.n, a.d, seed=a.seed)
    x16 = x32.astype(np.float16)
    batches = batch_partition(a.n, a.batch_size, a.k, a.seed)
    print(f"data: {a.n} x {a.d} in {time.perf_counter() - t:.1f} s; device {dev}", flush=True)
    warm_up(a, dev, x32, precisions)
    rows: list[dict[str, Any]] = []

    def add(what: str, source: str, seconds: float, peak: float | None = None, **extra: Any) -> None:
        rows.append({"what": what, "input": source, "seconds": seconds, "peak_device_gib": peak, **extra})
        print(f"  {what:45s} {source:28s} {seconds:8.3f} s", flush=True)

    s_pub, pub, _ = timed(lambda: published_batch_dao(x32, batches, a.k, str(dev)), dev, a.repeats)
    add("(a) published cdist+sort", "float32 host (copy incl.)", s_pub)
    xdev = torch.from_numpy(x32).to(dev)
    bdev = [torch.from_numpy(b).to(dev) for b in batches]
    s_pub_res, _, _ = timed(lambda: published_batch_dao_resident(xdev, bdev, a.k), dev, a.repeats)
    add("(a) published cdist+sort", "float32 on device (copy excl.)", s_pub_res)
    engine = {}
    for name, x in (("float32", x32), ("float16", x16)):
        s_eng, out, _ = timed(lambda x=x: score_embeddings(x, ["dao"], k=a.k, reference="batch",
                                                           batch_size=a.batch_size, seed=a.seed,
                                                           device=str(dev))[0]["dao"], dev, 1)
        engine[name] = out
        add("(b) engine score_embeddings (today)", f"{name} host", s_eng)
    for p in precisions:
        sources = [("float32 host", x32, "float32"), ("float16 host", x16, "float16")]
        if p == precisions[0]:
            sources.append(("float32 on device (copy excl.)", xdev, "float32"))
        for source, x, ref in sources:
            s, out, peak = timed(lambda x=x: batch_scores_on_device(
                x, batches, a.k, ["dao"], device=dev, precision=p, max_floats=a.max_floats)["dao"], dev, a.repeats)
            # the goal compares like with like: from the host with (a) from the host, from the
            # device with (a) from the device
            like = s_pub_res if isinstance(x, torch.Tensor) else s_pub
            add(f"(c) batch_scores_on_device precision={p}", source, s, peak,
                speedup_vs_a_incl_copy=s_pub / s, speedup_vs_a_excl_copy=s_pub_res / s,
                goal_5x_met=bool(like / s >= 5), **agreement(out, engine[ref]))
    rho_pub = agreement(pub, engine["float32"])["rho_vs_engine"]
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    return {"when": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(), "device": name,
            "cpus": os.cpu_count(), "torch": torch.__version__, "n": a.n, "d": a.d, "k": a.k,
            "batch_size": a.batch_size, "seed": a.seed, "repeats": a.repeats, "max_floats": a.max_floats,
            "rho_published_vs_engine": rho_pub, "rows": rows}


def write(res: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_scan.json").write_text(json.dumps(res, indent=2) + "\n")
    cols = ["what", "input", "seconds", "speedup_vs_a_incl_copy", "speedup_vs_a_excl_copy", "goal_5x_met",
            "rho_vs_engine", "max_rel_err", "p9999_rel_err", "max_log_err", "share_rel_err_gt_1e-3",
            "peak_device_gib"]
    lines = [f"# Per-batch DAO scan on a device ({res['when']}, {res['device']}, torch {res['torch']})", "",
             f"N = {res['n']}, d = {res['d']}, B = {res['batch_size']}, k = {res['k']}, seed {res['seed']}; "
             f"median of {res['repeats']} runs after a warm-up (the engine: one run). Agreement columns: "
             "(c) against (b) on the same host array. Spearman rho of (a) vs (b) (Euclidean vs cosine "
             f"DAO): {res['rho_published_vs_engine']:.6f}.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in res["rows"]:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append("" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    (out / "gpu_scan.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (the GPU if torch sees one), cuda, cpu")
    p.add_argument("--precisions", default="fp32,tf32x3", help="matmul precisions of (c), comma-separated")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-floats", type=int, default=None,
                   help="similarities per stack of (c) (default: DEFAULT_MAX_FLOATS of device_batch)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    a = p.parse_args(argv)
    if a.max_floats is None:
        from clipguard.detect.detectors.device_batch import DEFAULT_MAX_FLOATS

        a.max_floats = DEFAULT_MAX_FLOATS
    from clipguard.utils.progress import progress_enabled

    with progress_enabled(False):
        res = measure(a)
    write(res, Path(a.out))
    print(f"-> {Path(a.out) / 'gpu_scan.md'}")


if __name__ == "__main__":
    main()
