"""Shared by the benchmark scripts: write result rows as CSV into benchmarks/results/."""
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
