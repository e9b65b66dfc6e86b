"""The report in a real browser (headless Chromium, Debian's `chromium`): it renders, every image loads,
nothing logs to the console, and a caption holding <script> is shown as text, not run.

On CI (`CI` set) Chromium must be there (`.ci/run` installs it): the test fails instead of skipping.
The screenshot is kept in ``test-artifacts/report.png`` (git-ignored).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from clipguard.report import build_audit_report, build_scan_report
from clipguard.utils.roots import allow_roots

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
_CHECK = """<script>window.addEventListener('load', () => { const im = [...document.images];
document.documentElement.setAttribute('data-images', im.length + '/' + im.filter(i => !(i.complete && i.naturalWidth > 0)).length);
});</script>"""


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing on CI; .ci/run installs it with apt-get install -y chromium")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return exe


def _render(page: Path, *extra: str) -> tuple[str, str]:
    """``(dumped DOM, console lines)`` of ``page`` (with the image check appended) in headless Chromium."""
    checked = page.with_name(page.stem + ".checked.html")
    checked.write_text(page.read_text().replace("</body>", _CHECK + "</body>"))
    res = subprocess.run([_chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", *extra,
                          "--dump-dom", checked.as_uri()], capture_output=True, text=True, timeout=120)
    console = [ln for ln in res.stderr.splitlines() if ":CONSOLE" in ln]
    return res.stdout, "\n".join(console)


def test_broken_pages_are_caught(tmp_path):
    """The checks can fail: a broken image and a script error are seen."""
    page = tmp_path / "bad.html"
    page.write_text('<html><body><img src="data:image/png;base64,iVBORw0KGgo="><script>nope();</script></body></html>')
    dom, console = _render(page)
    assert 'data-images="1/1"' in dom and "Uncaught ReferenceError" in console


def test_report_renders_in_chromium(scanned, tmp_path):
    scan_dir, _ = scanned
    with allow_roots([scan_dir.parent / "img"]):  # the images lie beside the embedding, under no manifest's folder
        page = build_scan_report(scan_dir, tmp_path / "report.html", top=30)
    dom, console = _render(page)
    m = re.search(r'data-images="(\d+)/(\d+)"', dom)
    assert m, "the page did not finish loading"
    assert int(m.group(1)) == 30 + 4 and int(m.group(2)) == 0  # 30 thumbnails and 4 figures (the trade-off too), all loaded
    assert console == ""  # no console message, no error
    assert "data-pwned" not in dom.split("<body", 1)[0]  # the caption's script did not run ...
    assert "&lt;script&gt;document.documentElement.setAttribute" in dom  # ... it is shown as text
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    subprocess.run([_chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1280,2000", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 20_000


def test_audit_report_renders_in_chromium(model_runs, tmp_path):
    """A model-level page too: the trigger, mask, bars and every thumbnail load; the target's markup stays text."""
    page = build_audit_report(model_runs["audit"], tmp_path / "audit.html")
    n = sum(1 for _ in (model_runs["audit"] / "triggers").glob("*_trigger.png"))
    dom, console = _render(page)
    m = re.search(r'data-images="(\d+)/(\d+)"', dom)
    assert m, "the page did not finish loading"
    assert int(m.group(1)) == 3 + 1 + 2 * n and int(m.group(2)) == 0  # trigger, mask, stamped; bars; thumbnails
    assert console == ""
    assert "data-pwned" not in dom.split("<body", 1)[0]
    assert "&lt;script&gt;document.documentElement.setAttribute" in dom
