"""The bench report: model table, the AUROC heat map with worst/mean, the defences' ASR bars and tables."""
from __future__ import annotations

import base64
import io
import re

import pandas as pd
import pytest
from PIL import Image

from clipguard.errors import ConfigError
from clipguard.report import build_bench_report, build_report
from clipguard.report.bench_tables import bench_tables
from clipguard.utils.runrecord import RunRecord


def _bench_dir(tmp_path):
    rows = []
    for world, auroc, asr_after, learned in (("shapes", 0.9, 0.1, True), ("longtail", 0.6, 0.5, True),
                                             ("longtail-rare", 0.123, None, False)):
        base = {"world": world, "target": "t", "attack": "badnets", "rate": 0.05, "learned": learned}
        rows += [{**base, "stage": "model", "method": "tiny-rn", "ca": 0.8, "asr": 0.95 if learned else 0.2},
                 {**base, "stage": "detection", "method": "fused", "auroc": auroc, "auprc": 0.3, "tpr_at_1pct_fpr": 0.1},
                 {**base, "stage": "detection", "method": "kdist", "auroc": 1 - auroc, "auprc": 0.1,
                  "tpr_at_1pct_fpr": 0.0}]
        if asr_after is not None:
            rows.append({**base, "stage": "defence", "method": "CleanCLIP", "ca": 0.7, "asr": asr_after,
                         "ca_change": -10.0})
    out = tmp_path / "bench"
    out.mkdir()
    pd.DataFrame(rows).to_csv(out / "bench.csv", index=False)
    rec = RunRecord("bench", {"preset": {"name": "quick", "description": "two worlds", "model": "tiny-rn",
                                         "epochs": 8, "n_train": 3000, "learned": 0.8}})
    rec["n_cells"], rec["n_rows"] = 3, len(rows)
    rec.save(out)
    return out


def test_tables_summarise_learned_cells_only(tmp_path):
    t = bench_tables(pd.read_csv(_bench_dir(tmp_path) / "bench.csv"))
    assert t.learned == ["shapes_badnets_0.05", "longtail_badnets_0.05"] and len(t.cells) == 3
    auroc = t.detection["auroc"]
    assert auroc.loc["fused", "worst"] == pytest.approx(0.6) and auroc.loc["fused", "mean"] == pytest.approx(0.75)
    assert auroc.loc["kdist", "worst"] == pytest.approx(0.1)  # 1 - 0.9 on shapes
    assert t.defence["asr"].loc["CleanCLIP", "worst"] == pytest.approx(0.5)  # the highest ASR left


def test_page_shows_the_tables_and_inlined_figures(tmp_path, check_page):
    out = _bench_dir(tmp_path)
    html = build_report(out).read_text()  # dispatched on run.json's command
    check_page(html)
    assert "clipguard bench report" in html and "Preset <b>quick</b>" in html
    assert '<td class="num">0.750</td>' in html  # fused's mean AUROC over the learned cells
    assert '<td class="num">0.123</td>' in html  # the unlearned cell is shown
    assert '<td class="num">-10.0</td>' in html  # CleanCLIP's CA change in points
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(uris) == 2  # the heat map and the defence bars
    for u in uris:
        assert Image.open(io.BytesIO(base64.b64decode(u))).size[0] > 300


def test_page_needs_a_bench_run(tmp_path):
    out = _bench_dir(tmp_path)
    (out / "bench.csv").unlink()
    with pytest.raises(ConfigError, match="no bench.csv; rerun `clipguard bench"):
        build_bench_report(out)
