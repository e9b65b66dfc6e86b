"""clipguard.pipeline.bench: presets, one real (smoke) bench run through the CLI, resume, the tables."""
from __future__ import annotations

import json

import pandas as pd
import pytest

import clipguard.pipeline.bench as bench
from clipguard.distributed import TasksFailedError
from clipguard.errors import ConfigError
from clipguard.pipeline.bench import BENCH_PRESETS, bench_cells, format_bench, resolve_preset
from tests.tests_helpers import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """``clipguard bench --preset smoke`` on the shapes world only (about 10 s)."""
    out = tmp_path_factory.mktemp("bench") / "bench"
    res = run_cli("bench", "--preset", "smoke", "--worlds", "shapes", "--out", out)
    assert res.returncode == 0, res.stderr
    return out, res


def test_bench_writes_csv_markdown_report_and_run_json(smoke):
    out, res = smoke
    table = pd.read_csv(out / "bench.csv")
    assert set(table["stage"]) == {"model", "detection", "defence"}
    model = table[table["stage"] == "model"].iloc[0]
    assert model["world"] == "shapes" and model["target"] == "star" and model["n_poisoned"] == 12
    assert 0 <= model["ca"] <= 1 and 0 <= model["asr"] <= 1
    det = table[table["stage"] == "detection"]
    assert "fused" in set(det["method"]) and det["auroc"].between(0, 1).all()
    defence = table[table["stage"] == "defence"].iloc[0]
    assert defence["method"] == "CleanCLIP" and defence["asr_before"] == pytest.approx(model["asr"])
    md = (out / "bench.md").read_text()
    assert "## Detection: AUROC per detector" in md and "| fused |" in md and "worst" in md
    assert md in res.stdout  # the CLI prints the tables
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == "bench" and run["config"]["preset"]["name"] == "smoke" and run["n_cells"] == 1
    assert (out / "report.html").is_file()


def test_bench_resumes_finished_cells(smoke, monkeypatch):
    out, _ = smoke
    before = pd.read_csv(out / "bench.csv")
    def fail(*a, **k):
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(bench, "_backdoor", fail)
    res = run_cli("bench", "--preset", "smoke", "--worlds", "shapes", "--out", out, "--no-report")
    assert res.returncode == 0, res.stderr
    pd.testing.assert_frame_equal(pd.read_csv(out / "bench.csv"), before)


def test_a_failed_cell_is_named_and_the_others_are_kept(smoke, monkeypatch):
    out, _ = smoke

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(bench, "_backdoor", boom)  # the shapes cell is finished; the longtail one fails
    with pytest.raises(TasksFailedError, match=r"1 of 2 bench cell\(s\) failed: longtail_badnets_0.05: "
                                               r"RuntimeError: boom; .*rerun the same command"):
        bench.run_bench(resolve_preset("smoke", worlds=["shapes", "longtail"]), out, progress=False, report=False)
    table = pd.read_csv(out / "bench.csv")
    assert set(table["world"]) == {"shapes"}
    assert json.loads((out / "run.json").read_text())["failed_cells"] == {"longtail_badnets_0.05": "RuntimeError: boom"}


def test_presets_and_overrides():
    quick = BENCH_PRESETS["quick"]
    assert len(quick.worlds) >= 2 and len(quick.attacks) >= 2 and quick.defences  # worst case over worlds
    p = resolve_preset("quick", worlds=["shapes"], rates=[0.01, 0.05])
    assert bench_cells(p) == [("shapes", a, r) for a in quick.attacks for r in (0.01, 0.05)]
    with pytest.raises(ConfigError, match="unknown bench preset 'fast'; choose from: quick"):
        resolve_preset("fast")
    with pytest.raises(ConfigError, match="attack"):
        resolve_preset("quick", attacks=["nope"])


def test_unknown_attack_is_one_line_error(tmp_path):
    assert_one_line_error(run_cli("bench", "--attacks", "nope", "--out", tmp_path / "b"), "nope")


def _row(world, attack, stage, method, **values):
    return {"world": world, "target": "t", "attack": attack, "rate": 0.05, "learned": True, "stage": stage,
            "method": method, **values}


def test_format_bench_reports_worst_and_mean_over_learned_cells():
    rows = []
    for world, auroc, asr_after, learned in (("shapes", 0.9, 0.1, True), ("longtail", 0.6, 0.5, True),
                                             ("longtail-rare", 0.1, 0.9, False)):
        rows += [_row(world, "badnets", "model", "tiny-rn", ca=0.8, asr=0.95 if learned else 0.2, seconds=10.0),
                 _row(world, "badnets", "detection", "fused", auroc=auroc, auprc=auroc / 2, scan_seconds=1.0),
                 _row(world, "badnets", "defence", "CleanCLIP", ca=0.7, asr=asr_after, ca_change=-10.0, seconds=5.0)]
        rows[-3]["learned"] = learned
    md = format_bench(pd.DataFrame(rows), BENCH_PRESETS["quick"])
    auroc_line = next(line for line in md.splitlines() if line.startswith("| fused |"))
    # the unlearned cell (AUROC 0.1) is shown but not part of worst/mean: worst 0.6, mean 0.75
    assert auroc_line == "| fused | 0.900 | 0.600 | 0.100 | 0.600 | 0.750 |"
    asr_line = next(line for line in md.splitlines() if line.startswith("| CleanCLIP |"))
    assert asr_line == "| CleanCLIP | 0.100 | 0.500 | 0.900 | 0.500 | 0.300 |"
    assert "(2 of 3)" in md
