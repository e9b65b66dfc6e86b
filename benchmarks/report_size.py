"""Size and render time of the scan report at scale (issue 14: under 20 MB and under 60 s for 1M rows).

Generates (or reuses) a clustered embedding folder of N rows with ``scale.py``'s generator (float16, d = 512,
integer ids, no images: the thumbnail grid shows "no image"; captions absent), scans it with the per-batch DAO
(the paper's reference), then times :func:`clipguard.report.build_scan_report` (histograms, the PCA map as a
density raster beyond 100,000 points, the suspect grid) and records the page's size.

Usage::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/report_size.py --n 1000000 --work /tmp/report_size

Writes ``report_size.md`` / ``report_size.json`` to ``--out`` (default benchmarks/results).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from scale import generate  # benchmarks/ is on sys.path when a script runs

from clipguard.detect import run_scan
from clipguard.report import build_scan_report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--work", type=Path, default=Path("/tmp/report_size"))
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    a = p.parse_args()
    emb = generate(a.work / f"emb_{a.n}", a.n, 512)
    scan = a.work / f"scan_{a.n}"
    t0 = time.perf_counter()
    if not (scan / "run.json").is_file():
        run_scan(emb, scan, detectors=["dao"], reference="batch", batch_size=2048, k=16, device="cpu")
    scan_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    page = build_scan_report(scan, scan / "report.html")
    seconds = time.perf_counter() - t0
    res = {"n": a.n, "report_seconds": round(seconds, 1), "report_mb": round(page.stat().st_size / 1e6, 3),
           "scan_seconds": round(scan_s, 1), "detectors": ["dao"], "reference": "batch"}
    print(json.dumps(res))
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "report_size.json").write_text(json.dumps(res, indent=1))
    (a.out / "report_size.md").write_text(
        f"# Scan report at scale (`benchmarks/report_size.py --n {a.n}`)\n\n"
        f"{a.n:,} rows (clustered float16 embeddings, d = 512, no images), scan: per-batch DAO "
        f"({res['scan_seconds']} s). The report: **{res['report_seconds']} s** to build, **{res['report_mb']} MB** "
        "(targets: < 60 s, < 20 MB). Two CPU cores.\n")


if __name__ == "__main__":
    main()
