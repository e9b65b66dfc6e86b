"""The defend report: CA / ASR before and after with the ASR convention, the bar figure, the loss per epoch."""
from __future__ import annotations

import json
import shutil

from clipguard.report import build_defend_report


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def test_the_page_of_a_real_defence_shows_every_number_it_ran_on(model_runs, check_page, tmp_path):
    run_dir = model_runs["defend"]
    check_page((run_dir / "report.html").read_text())  # `clipguard defend` wrote it (no --no-report)
    run = json.loads((run_dir / "run.json").read_text())
    html = build_defend_report(run_dir, tmp_path / "r.html").read_text()
    check_page(html)
    before, after = run["before"], run["after"]
    for heading in ("clipguard defend report", "Clean accuracy and attack success rate, before and after", "Training",
                    "Overlap of the finetuning data with the training data", "What ran"):
        assert heading in html, heading
    row_ca = (f'<td class="num">{_pct(before["clean_accuracy"])}</td><td class="num">{_pct(after["clean_accuracy"])}'
              f'</td><td class="num">{100 * (after["clean_accuracy"] - before["clean_accuracy"]):+.1f} points</td>')
    assert row_ca in html
    assert _pct(before["attack_success_rate"]) in html and _pct(after["attack_success_rate"]) in html
    assert f"relative reduction {_pct(run['asr_reduction'])}" in html
    assert "ASR convention: ASR = share of triggered test images whose true class is not the target" in html
    assert f"Measured on {after['n_test']} labelled test images" in html and f"of the {after['n_asr']} whose" in html
    for epoch in run["defence"]["history"]:  # the per-epoch table, one row per epoch
        assert f'<td class="num">{epoch["epoch"]}</td><td class="num">{epoch["loss"]:.4g}</td>' in html
    assert html.count("<img ") == 2  # the before/after bars and the loss curve
    # the target is a class name (untrusted): escaped in the page, drawn literally in the figure
    assert "the target “&lt;script&gt;document.documentElement.setAttribute(&#39;data-pwned&#39;" in html
    assert run["data_fingerprint"] in html and "<code>clipguard defend</code>" in html


def test_a_retraining_defence_without_evaluation(model_runs, check_page, tmp_path):
    """No test split: the page says how to get CA/ASR; a retraining defence's counts and the overlap are labelled."""
    run_dir = tmp_path / "d"
    shutil.copytree(model_runs["defend"], run_dir)
    run = json.loads((run_dir / "run.json").read_text())
    for key in ("before", "after", "ca_change", "asr_reduction"):
        run.pop(key)
    run["kind"], run["config"]["method"] = "retrain", "filter-retrain"
    run["defence"] = {"n_removed": 120, "n_kept": 2280, "poisoned_recall": 0.875, "poisoned_precision": None,
                      "history": run["defence"]["history"]}
    run["overlap"] = {"n_rows": 500, "by_id": 3, "by_image": 4, "either": 5}
    (run_dir / "run.json").write_text(json.dumps(run))
    html = build_defend_report(run_dir).read_text()
    check_page(html)
    assert "No evaluation in this run: give --test TEST_MANIFEST --classes CLASSES_JSON" in html
    assert "retrains a fresh model from scratch" in html
    assert "<th>training pairs removed as suspects</th><td class=\"num\">120</td>" in html
    assert "<th>share of the poisoned pairs removed (ground truth)</th><td class=\"num\">87.5%</td>" in html
    assert "Of its 500 rows, 3 share an id with the training set, 4 have the" in html
    assert html.count("<img ") == 1  # the loss curve only
