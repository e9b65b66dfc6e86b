"""The scan report: one self-contained page with every section, untrusted captions escaped."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import sys
import types

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


class _FakeUMAP:
    """Stands for umap.UMAP (not installed by `make test`): records its fit, projects on 2 coordinates."""

    fitted: list = []

    def __init__(self, n_components, metric, random_state):
        assert (n_components, metric) == (2, "cosine")

    def fit(self, x):
        _FakeUMAP.fitted.append(x.shape)
        return self

    def transform(self, x):
        return x[:, :2] * 10


def test_umap_map_when_installed_and_a_one_line_hint_when_not(scanned, tmp_path, monkeypatch):
    scan_dir, _ = scanned
    if importlib.util.find_spec("umap") is None:  # as after `make test`: the hint, before any work
        with pytest.raises(ConfigError, match=r"pip install 'clipguard\[umap\]'"):
            build_scan_report(scan_dir, tmp_path / "u.html", projection="umap")
    fake = types.ModuleType("umap")
    fake.__spec__ = importlib.machinery.ModuleSpec("umap", None)
    fake.UMAP = _FakeUMAP
    monkeypatch.setitem(sys.modules, "umap", fake)
    html = build_scan_report(scan_dir, tmp_path / "u.html", projection="umap").read_text()
    assert _FakeUMAP.fitted == [(400, 16)]  # fitted on the (unit) image embeddings of every row
    assert 'alt="UMAP map of the image embeddings"' in html and "laid out in 2-D by UMAP" in html
    with pytest.raises(ConfigError, match="unknown map projection 'tsne'; choose from: pca, umap"):
        build_scan_report(scan_dir, tmp_path / "t.html", projection="tsne")
