"""The scan report: one self-contained page with every section, untrusted captions escaped."""
from __future__ import annotations

import re

import pytest

from clipguard.errors import ConfigError
from clipguard.report import build_scan_report
from tests_helpers import assert_one_line_error, run_cli


def test_the_page_is_self_contained_and_has_every_section(scanned, tmp_path):
    scan_dir, _ = scanned
    html = build_scan_report(scan_dir, tmp_path / "r.html", top=30).read_text()
    for heading in ("How well the detectors separate the known poison", "Top 30 suspects by fused",
                    "Score distributions", "ROC and precision-recall", "Embedding map", "What ran"):
        assert heading in html, heading
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)  # no file or network reference
    assert not re.search(r'(src|href)="(https?:)?//', html)  # no CDN
    assert "<script" not in html.replace("&lt;script&gt;", "")  # no script at all: the payload is escaped text
    assert "&lt;script&gt;document.documentElement.setAttribute(&#39;data-pwned&#39;" in html
    assert html.count('class="tile poisoned"') >= 15  # the planted cluster leads the fused ranking


def test_unknown_detector_and_missing_scan_are_one_line_errors(scanned, tmp_path):
    scan_dir, _ = scanned
    with pytest.raises(ConfigError, match="did not run"):
        build_scan_report(scan_dir, tmp_path / "r.html", detector="spectral")
    assert_one_line_error(run_cli("report", str(tmp_path / "nothing")), "clipguard scan")


def test_cli_writes_the_report_beside_the_scan(scanned):
    scan_dir, _ = scanned
    res = run_cli("report", str(scan_dir), "--top", "10")
    assert res.returncode == 0, res.stderr
    assert (scan_dir / "report.html").is_file() and "report ->" in res.stdout
