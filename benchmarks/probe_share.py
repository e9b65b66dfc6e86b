"""The poisoned-share estimate (``clipguard.detect.share.estimate_share``) from the probe's scores and from ``fused``'s,
on panel cells probed by ``panel.py --probe`` (issue 16: does the estimate fit the default ranking of a scan with
a stability record?).

Every cell folder must hold ``stability.parquet`` (the probe record) and a score table (``scores_auto.parquet``,
else ``scores_batch.parquet``) with ``id``, ``fused_score`` and ``poisoned``. Per cell: the true share, the
envelope estimate (the default null) from the noise stability (what ``perturbation`` scores) and from
``fused_score``, and the AUROC of each.

Usage::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/probe_share.py runs/panel_variants24/cells/*/ --out benchmarks/results
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from clipguard.detect.metrics import detection_metrics
from clipguard.detect.share import estimate_share


def cell_rows(cell: Path) -> list[dict]:
    stab = pd.read_parquet(cell / "stability.parquet")
    table = next(cell / f for f in ("scores_auto.parquet", "scores_batch.parquet") if (cell / f).is_file())
    scores = pd.read_parquet(table).set_index("id").loc[stab["id"]]
    y = scores["poisoned"].to_numpy(bool)
    res = json.loads((cell / "result.json").read_text()) if (cell / "result.json").is_file() else {}
    rows = []
    for name, v in (("perturbation", stab["noise_stability"].to_numpy()), ("fused", scores["fused_score"].to_numpy())):
        est = estimate_share(v, detector=name, seed=0)
        rows.append({"cell": cell.name, "asr": res.get("attack_success_rate", float(stab["asr_here"].iat[0])),
                     "scores": table.stem, "detector": name, "true_share": float(y.mean()),
                     "estimate": est.share, "low": est.low, "high": est.high,
                     "auroc": detection_metrics(y, v)["auroc"]})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("cells", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=Path("runs/probe_share"))
    a = p.parse_args(argv)
    df = pd.DataFrame([r for c in a.cells for r in cell_rows(c)])
    a.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(a.out / "probe_share.csv", index=False, float_format="%.5g")
    lines = ["# Share estimate from the probe's scores and from fused (issue 16)", "",
             "`python benchmarks/probe_share.py " + " ".join(str(c) for c in a.cells) + "`: the envelope estimate "
             "(default null, 95 % bootstrap interval) per cell and detector.", "",
             "| cell | ASR | detector | AUROC | true share | estimate [interval] |", "|---|---|---|---|---|---|"]
    for r in df.itertuples():
        lines.append(f"| {r.cell} | {r.asr:.3f} | {r.detector} | {r.auroc:.3f} | {r.true_share:.2%} | "
                     f"{r.estimate:.2%} [{r.low:.2%}, {r.high:.2%}] |")
    (a.out / "probe_share.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
