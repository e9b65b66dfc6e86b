"""The audit report: the verdict in words, the reversed trigger inlined pixel for pixel, every candidate."""
from __future__ import annotations

import base64
import io
import json
import re
import shutil

import numpy as np
import pandas as pd
from PIL import Image

from clipguard.report import build_audit_report


def _pixels(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def test_the_page_of_a_real_audit(model_runs, check_page, tmp_path):
    run_dir = model_runs["audit"]
    assert not (run_dir / "report.html").exists()  # `clipguard audit --no-report`
    verdict = json.loads((run_dir / "verdict.json").read_text())
    cands = pd.read_csv(run_dir / "candidates.csv")
    # the candidates include the target, whose "$\nomacro$" would break matplotlib's mathtext if drawn as is
    html = build_audit_report(run_dir, tmp_path / "r.html").read_text()
    check_page(html)
    words = "No backdoor found" if verdict["verdict"] == "clean" else "The model looks <b>backdoored</b>"
    assert words in html
    assert re.search(rf"anomaly index\s+<b>{re.escape(format(verdict['anomaly_index'], '.3g'))}</b>", html)
    assert f"threshold <b>{verdict['threshold']:.3g}</b>" in html and "<b>not calibrated</b>" in html
    assert f"<b>{100 * verdict['attack_success_rate']:.1f}%</b> of the clean verification images" in html
    srcs = re.findall(r'<img src="([^"]+)" alt="reversed trigger (pattern|mask)"', html)
    assert len(srcs) == 2
    for uri, name in srcs:  # the closest target's trigger and mask, exactly the files' pixels
        file = run_dir / verdict[{"pattern": "trigger", "mask": "mask"}[name]]
        assert np.array_equal(_pixels(uri), np.asarray(Image.open(file)))
    # one table row per candidate with its trigger and mask thumbnails, highest anomaly index first
    rows = re.findall(r'<tr( class="closest")?><td class="num">(\d\d)</td>', html)
    assert [int(n) for _, n in rows] == list(cands.sort_values("anomaly_index", ascending=False, kind="stable").index)
    assert rows[0][0] and html.count('class="thumb"') == 2 * len(cands)
    assert html.count("<img ") == 3 + 1 + 2 * len(cands)  # pattern, mask, stamped; the bars; the thumbnails
    for l1 in cands["mask_l1"]:
        assert f'<td class="num">{100 * l1:.2f}%</td>' in html
    escaped = "&lt;script&gt;document.documentElement.setAttribute(&#39;data-pwned&#39;, &#39;1&#39;)&lt;/script&gt;"
    assert f"<td>{escaped} $\\nomacro$ star</td>" in html


def test_a_backdoored_calibrated_verdict_and_a_trigger_path_outside_the_folder(model_runs, check_page, tmp_path):
    run_dir = tmp_path / "a"
    shutil.copytree(model_runs["audit"], run_dir)
    verdict = json.loads((run_dir / "verdict.json").read_text())
    verdict.update(verdict="backdoored", target=model_runs["target"], closest_target=model_runs["target"],
                   calibrated=True, per_target_reference=True, threshold=2.5, mask="../outside.png")
    Image.new("L", (8, 8), 255).save(tmp_path / "outside.png")
    (run_dir / "verdict.json").write_text(json.dumps(verdict))
    html = build_audit_report(run_dir).read_text()
    check_page(html)
    assert "The model looks <b>backdoored</b>, towards <b>“&lt;script&gt;document.documentElement" in html
    assert "is <b>calibrated</b> on audits of clean models" in html and "with a per-target reference" in html
    assert 'alt="reversed trigger mask"' not in html  # a path leaving the audit folder is not read
    assert html.count('<div class="noimg big">no image</div>') == 2  # the mask and the stamped trigger
