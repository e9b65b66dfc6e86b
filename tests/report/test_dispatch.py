"""``build_report`` / ``clipguard report``: the page follows run.json's command; unknown kinds, missing folders
and scan-only options are one-line errors; a new kind plugs in with one REPORT_BUILDERS entry."""
from __future__ import annotations

import json

import pytest

from clipguard.errors import ConfigError
from clipguard.report import REPORT_BUILDERS, build_report, report_kind
from tests_helpers import assert_one_line_error, run_cli

KINDS = ("defend", "audit", "heads analyze", "heads repair", "heads filter")


def test_every_pipeline_run_gets_its_page(model_runs, scanned, tmp_path):
    for kind in KINDS:
        run_dir = model_runs[kind]
        assert json.loads((run_dir / "run.json").read_text())["command"] == kind  # what the pipelines write
        assert report_kind(run_dir) == kind
        html = build_report(run_dir, tmp_path / f"{kind}.html").read_text()
        assert f"<h1>clipguard {kind} report</h1>" in html
    html = build_report(scanned[0], tmp_path / "scan.html", top=5).read_text()
    assert "<h1>clipguard scan report</h1>" in html and "Top 5 suspects" in html


def test_unknown_kinds_missing_runs_and_scan_options_are_one_line_errors(model_runs, tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "run.json").write_text(json.dumps({"command": "train", "config": {}}))
    with pytest.raises(ConfigError, match="written by `clipguard train`, which has no report page") as err:
        build_report(tmp_path / "t")
    assert str(tmp_path / "t") in str(err.value) and all(f"`clipguard {k}`" in str(err.value) for k in REPORT_BUILDERS)
    assert_one_line_error(run_cli("report", tmp_path / "nothing"), "no run.json", "clipguard scan", "clipguard audit")
    assert_one_line_error(run_cli("report", model_runs["audit"], "--top", "3"),
                          "takes no option top (only scan reports do)")
    with pytest.raises(ConfigError, match="was written by `clipguard audit`, not `clipguard defend`"):
        REPORT_BUILDERS["defend"](model_runs["audit"])


def test_a_new_kind_plugs_in_with_one_entry(monkeypatch, tmp_path):
    calls = []

    def build_probe_report(run_dir, out=None):
        calls.append((run_dir, out))
        path = out or run_dir / "report.html"
        path.write_text("<html>probe</html>")
        return path

    monkeypatch.setitem(REPORT_BUILDERS, "probe", build_probe_report)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "run.json").write_text(json.dumps({"command": "probe"}))
    res = run_cli("report", tmp_path / "b")
    assert res.returncode == 0, res.stderr
    assert calls == [(tmp_path / "b", None)] and (tmp_path / "b" / "report.html").read_text() == "<html>probe</html>"


def test_cli_writes_an_audit_report(model_runs, tmp_path):
    res = run_cli("report", model_runs["audit"], "--out", tmp_path / "audit.html")
    assert res.returncode == 0, res.stderr
    assert "report ->" in res.stdout and "clipguard audit report" in (tmp_path / "audit.html").read_text()
