"""Is one early epoch's image-caption cosine a backdoor signal? Per-epoch AUROC on rebuilt panel cells (issue 9).

``learning_speed`` averages a pair's within-epoch cosine rank over the first recorded epochs (three in the
panel). A model early in training has learned some content but perhaps not yet the trigger, so a dirty-label
pair (a caption that does not describe its image) might have a LOW cosine there, like ``clipscore`` under a
clean model (0.977 worst over the panel's learned cells). This script rebuilds learned panel cells (the same
poisoned set and tiny-rn as ``perturbation_probe.py`` rebuilds them), records every epoch's cosines
(``TrainConfig.record_epochs`` = all epochs) and prints, per cell, the AUROC of the negated cosine at each
epoch and of the rank change from the first to the last epoch.

Usage::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/dynamics_epochs.py --panel /tmp/panel16 \\
        --cells longtail-rare_badclip_0.01 longtail-rare_badclip_0.05 longtail-rare_badnets_0.05
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pandas as pd

import panel
from _results import limit_threads, train_until_learned

from clipguard.detect.metrics import detection_metrics
from clipguard.train import read_dynamics

ROOT = Path(__file__).resolve().parents[1]


def record_cell(cell: Path, work: Path) -> pd.DataFrame:
    """Rebuild ``cell`` and return its dynamics record over every epoch (kept in ``work/<cell>``)."""
    out = work / cell.name
    if (out / "dynamics.parquet").is_file():
        return pd.read_parquet(out / "dynamics.parquet")
    shutil.rmtree(out, ignore_errors=True)
    res, r, pa = panel.repoison_cell(cell, out / "data")
    _, _, model_dir = train_until_learned(res.manifest_path, out, panel.world_dir(pa, r["world"]), res.spec_path,
                                          epochs_ladder=[r["epochs"]], learned=0.8, seed=r.get("seed", 0),
                                          device=None, record_epochs=r["epochs"])
    dyn = read_dynamics(model_dir)
    dyn.to_parquet(out / "dynamics.parquet", index=False)
    shutil.rmtree(out / "data" / "images", ignore_errors=True)
    shutil.rmtree(model_dir, ignore_errors=True)
    return dyn


def epoch_aurocs(cell: Path, dyn: pd.DataFrame) -> dict:
    y = pd.read_parquet(cell / "scores_auto.parquet").set_index("id")["poisoned"].astype(bool)
    row = {"cell": cell.name}
    for epoch, g in dyn.groupby("epoch"):
        row[f"e{epoch}"] = detection_metrics(y.loc[g["id"]].to_numpy(), -g["cosine"].to_numpy())["auroc"]
    ranks = dyn.pivot_table(index="id", columns="epoch", values="cosine").rank(pct=True)
    rise = ranks.iloc[:, -1] - ranks.iloc[:, 0]
    row["rank_rise"] = detection_metrics(y.loc[rise.index].to_numpy(), rise.to_numpy())["auroc"]
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--panel", required=True)
    p.add_argument("--cells", nargs="+", required=True, help="cell names under <panel>/cells")
    p.add_argument("--work", default=str(ROOT / "runs" / "dynamics_epochs"))
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    limit_threads(a.threads)
    rows = [epoch_aurocs(Path(a.panel) / "cells" / c, record_cell(Path(a.panel) / "cells" / c, Path(a.work)))
            for c in a.cells]
    print(pd.DataFrame(rows).set_index("cell").round(3).to_string())


if __name__ == "__main__":
    main()
