"""The heads reports: analyze (heat maps inlined, most infected heads, filter quality), repair (CA / ASR before
and after, the MLP choice), filter (counts, metrics, histogram, top inputs)."""
from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pandas as pd
from PIL import Image

from clipguard.report import build_heads_report


def test_analyze_inlines_the_heat_maps_and_ranks_the_heads(model_runs, check_page, tmp_path):
    run_dir = model_runs["heads analyze"]
    check_page((run_dir / "report.html").read_text())  # `clipguard heads analyze` wrote it
    run = json.loads((run_dir / "run.json").read_text())
    html = build_heads_report(run_dir, tmp_path / "r.html").read_text()
    check_page(html)
    for alt, name in (("infection rate per layer and head", "heads_infection.png"),
                      ("infection rate per MLP block", "mlps_infection.png")):
        uri = re.search(rf'<img src="([^"]+)" alt="{alt}"', html).group(1)
        shown = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
        assert np.array_equal(np.asarray(shown), np.asarray(Image.open(run_dir / name)))
    heads = pd.read_csv(run_dir / "heads.csv").assign(rise=lambda t: t["triggered_rate"] - t["clean_rate"])
    top = heads.sort_values(["rise", "triggered_rate"], ascending=False).iloc[0]
    assert (f'<tr><td class="num">{int(top["layer"])}</td><td class="num">{int(top["head"])}</td>'
            f'<td class="num">{100 * top["clean_rate"]:.1f}%</td>') in html
    f = run["filter"]
    assert f'<td>AUROC, infected-head count</td><td class="num">{f["auroc_count"]:.4g}</td>' in html
    assert f'<td>clean rejected, count rule</td><td class="num">{100 * f["fpr_at_zeta"]:.1f}%</td>' in html
    assert f"Measured on {run['test']['n_clean']} clean test images and {run['test']['n_triggered']} triggered" in html
    assert "target class “&lt;script&gt;document.documentElement" in html  # the target, escaped
    assert len(re.findall(r"<tr><td class=\"num\">\d</td><td class=\"num\">[+-]", html)) == 4  # a row per layer
    assert f"{run['reconstruction_error']:.2e}" in html and run["clean"]["fingerprint"] in html


def test_repair_shows_before_after_and_the_mlp_choice(model_runs, check_page, tmp_path):
    run_dir = model_runs["heads repair"]
    run = json.loads((run_dir / "run.json").read_text())
    html = build_heads_report(run_dir, tmp_path / "r.html").read_text()
    check_page(html)
    assert "clipguard heads repair report" in html and "Which MLP blocks were replaced" in html
    b, a = run["before"], run["after"]
    ca = f'<td class="num">{100 * b["clean_accuracy"]:.1f}%</td><td class="num">{100 * a["clean_accuracy"]:.1f}%'
    assert ca in html
    assert f'<td class="num">{100 * b["attack_success_rate"]:.1f}%</td>' in html
    tried = run["mlp_choice"]["tried"]
    assert html.count("<tr><td>") >= len(tried) and f'{100 * tried[-1]["accuracy"]:.1f}%' in html
    assert html.count("<img ") == 1  # the before/after bars


def test_filter_shows_counts_metrics_and_top_inputs(model_runs, check_page, tmp_path):
    run_dir = model_runs["heads filter"]
    assert not (run_dir / "report.html").exists()  # --no-report
    run = json.loads((run_dir / "run.json").read_text())
    table = pd.read_parquet(run_dir / "scores.parquet")
    html = build_heads_report(run_dir, tmp_path / "r.html").read_text()
    check_page(html)
    assert f'<td>inputs scored</td><td class="num">{run["n_inputs"]}</td>' in html
    assert f'<td>rejected</td><td class="num">{run["n_suspects"]}</td>' in html
    m = run["metrics"]
    assert f'<td class="num">{m["auroc"]:.4f}</td><td class="num">{m["auprc"]:.4f}</td>' in html
    ids = re.findall(r'<tr><td class="num">\d+</td><td>([^<]+)</td>', html)
    assert ids == table.sort_values("heads_rank")["id"].head(30).tolist()
    assert html.count("<img ") == 1 and "poisoned against clean images" in html
    assert "The profile was read from" in html  # --profile: the analyze folder's report describes it
