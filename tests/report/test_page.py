"""The scan report: one self-contained page with every section, untrusted captions escaped."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import sys
import types

import pytest

from clipguard.detect.store import TRAINED_ON_THIS_SET
from clipguard.errors import ConfigError
from clipguard.report import build_scan_report
from tests_helpers import assert_one_line_error, run_cli


def test_the_page_is_self_contained_and_has_every_section(scanned, tmp_path):
    scan_dir, _ = scanned
    html = build_scan_report(scan_dir, tmp_path / "r.html", top=30).read_text()
    for heading in ("How well the detectors separate the known poison", "How much to drop", "Top 30 suspects by fused",
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


@pytest.fixture(scope="module")
def share_scan(tmp_path_factory):
    """A scan (through the library; kdist and fused) whose estimate is positive: 600 rows, 30 poisoned scattered
    far from 8 tight clusters (each an outlier on its own), ground truth in the metadata, no images."""
    import numpy as np
    import pandas as pd

    from clipguard.detect import run_scan
    from clipguard.io.writer import write_embedding_shard

    root = tmp_path_factory.mktemp("share")
    rng = np.random.default_rng(1)
    n, bad, d = 600, 30, 16
    centres = rng.normal(size=(8, d))
    lab = rng.integers(0, 8, n)
    x = (centres[lab] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)
    x[:bad] = rng.normal(size=(bad, d))
    t = (centres[lab] @ rng.normal(size=(d, d)) + 0.3 * rng.normal(size=(n, d))).astype(np.float32)
    t[:bad] = rng.normal(size=(bad, d))
    meta = pd.DataFrame({"id": [f"s{i}" for i in range(n)], "caption": [f"thing {c}" for c in lab],
                         "poisoned": np.arange(n) < bad})
    write_embedding_shard(root / "emb", 0, x, meta, t)
    run_scan(root / "emb", root / "scan", k=8, detectors=["kdist", "fused"])  # two detectors: a quick page
    return root / "scan"


def _drop_section(html: str) -> str:
    assert html.count("<h2>How much to drop</h2>") == 1
    return html.split("<h2>How much to drop</h2>", 1)[1].split("<h2>", 1)[0]


def _copy_scan(scan_dir, to, edit_run=None, edit_curve=None):
    """A copy of ``scan_dir`` in ``to`` with its run.json (a dict) and tradeoff.csv (a DataFrame) edited in place."""
    import json
    import shutil

    import pandas as pd

    shutil.copytree(scan_dir, to)
    if edit_run is not None:
        run = json.loads((to / "run.json").read_text())
        edit_run(run)
        (to / "run.json").write_text(json.dumps(run))
    if edit_curve is not None:
        curve = pd.read_csv(to / "tradeoff.csv")
        (to / "tradeoff.csv").write_text(edit_curve(curve).to_csv(index=False))
    return to


def test_how_much_to_drop_states_the_estimate_tabulates_the_curve_and_draws_it(share_scan, tmp_path, check_page):
    import json

    import pandas as pd

    est = json.loads((share_scan / "run.json").read_text())["share_estimate"]
    curve = pd.read_csv(share_scan / "tradeoff.csv")
    assert est["share"] > 0.02 and curve["is_estimate"].sum() == 1  # the data makes a positive estimate
    html = build_scan_report(share_scan, tmp_path / "r.html", top=4).read_text()
    check_page(html)
    sec = _drop_section(html)
    pct2 = "{:.2f}%".format
    assert (f"Estimated poisoned share: <b>{pct2(100 * est['share'])}</b> ({est['n_estimated']} of {est['n_rows']} "
            f"rows), 95% interval\n<b>[{pct2(100 * est['low'])}, {pct2(100 * est['high'])}]</b>") in sec
    assert "from the scores of <b>fused</b>" in sec
    assert html.index("How much to drop") < html.index("Top 4 suspects by fused")
    assert "In words: estimated poisoned share" in sec  # the recorded reason
    rows = re.findall(r"<tr(?: [^>]*)?>(.*?)</tr>", sec, flags=re.S)[1:]
    assert len(rows) == len(curve)
    for row, r in zip(rows, curve.itertuples()):  # every curve row, in order, with its numbers
        cells = re.findall(r'<td class="num">([^<]*)</td>', row)
        assert cells[0].startswith(pct2(100 * r.share_removed)) and cells[1] == str(r.n_removed)
        assert cells[2] == f"{100 * r.expected_precision:.1f}%" and cells[5] == f"{100 * r.precision:.1f}%"
    marked = re.findall(r'<tr class="estimate"[^>]*>(.*?)</tr>', sec)
    assert len(marked) == 1 and f">{est['n_estimated']}<" in marked[0] and "(estimate)" in marked[0]
    assert "<th>measured precision</th><th>measured recall</th>" in sec
    figs = re.findall(r'<img src="(data:image/png;base64,[^"]+)" alt="precision against the share', sec)
    assert len(figs) == 1 and figs[0] not in html.replace(sec, "")  # its own figure, inlined
    assert "red dashed: the measured precision" in sec and "orange line: the estimated poisoned share" in sec

    # without ground truth the curve has no measured columns: neither has the table
    blind = _copy_scan(share_scan, tmp_path / "blind", edit_curve=lambda c: c.drop(columns=["precision", "recall"]))
    sec = _drop_section(build_scan_report(blind, tmp_path / "b.html", top=4).read_text())
    assert "measured" not in sec and sec.count('class="estimate"') == 1 and "<img " in sec


def test_an_old_scan_a_skipped_estimate_or_a_lost_curve_gets_one_sentence(share_scan, tmp_path, check_page):
    old = _copy_scan(share_scan, tmp_path / "old", edit_run=lambda r: r.pop("share_estimate"))
    html = build_scan_report(old, tmp_path / "o.html", top=4).read_text()
    check_page(html)
    sec = _drop_section(html)
    assert "This scan records no estimate of the poisoned share" in sec and "rerun `clipguard scan`" in sec
    assert "<table" not in sec and "<img" not in sec and 'class="estimate"' not in html  # the stale curve is ignored

    def skip(run):
        run["share_estimate"] = {"skipped": "needs at least 20 finite scores, got 12 <i>", "detector": "fused"}
    sec = _drop_section(build_scan_report(_copy_scan(share_scan, tmp_path / "skip", edit_run=skip),
                                          tmp_path / "s.html", top=4).read_text())
    assert ("The scan did not estimate the poisoned share from fused scores: needs at least 20 finite scores, "
            "got 12 &lt;i&gt;.") in sec
    assert "<table" not in sec and "<img" not in sec

    lost = _copy_scan(share_scan, tmp_path / "lost")  # the estimate kept, its curve gone: the words, no table
    (lost / "tradeoff.csv").unlink()
    sec = _drop_section(build_scan_report(lost, tmp_path / "l.html", top=4).read_text())
    assert "Estimated poisoned share: <b>" in sec
    assert "The trade-off curve (tradeoff.csv) of this scan was not found" in sec
    assert "<table" not in sec and "<img" not in sec


def test_the_page_notes_embeddings_from_a_model_trained_on_the_scanned_set(share_scan, tmp_path, check_page):
    def trained_here(run):
        run["embedding_model"] = {"trained_on": "/d/m.parquet", "trained_on_this_set": True, "note": TRAINED_ON_THIS_SET}
    html = build_scan_report(_copy_scan(share_scan, tmp_path / "t", edit_run=trained_here), tmp_path / "t.html",
                             top=4).read_text()
    check_page(html)
    assert "<b>Note:</b> these embeddings come from a model trained on this very set" in html
    assert "<b>Note:</b>" not in build_scan_report(share_scan, tmp_path / "p.html", top=4).read_text()
