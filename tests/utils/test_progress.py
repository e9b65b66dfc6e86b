"""Progress bars: shown on a terminal, hidden elsewhere and inside progress_enabled(False)."""
import io
import sys

import numpy as np

from clipguard.detect import knn_search
from clipguard.utils.progress import progress_bar, progress_enabled


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def fake_terminal(monkeypatch) -> FakeTerminal:
    """stderr as a terminal (patched in the test body: pytest's capture resets it after fixtures)."""
    out = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", out)
    return out


def test_bar_on_a_terminal_and_not_when_switched_off(monkeypatch):
    terminal = fake_terminal(monkeypatch)
    with progress_bar(10, "kNN (exact)") as bar:
        assert not bar.disable
        bar.update(10)
    assert "kNN (exact)" in terminal.getvalue()
    with progress_enabled(False):
        assert progress_bar(10, "hidden").disable is True
    assert "hidden" not in terminal.getvalue()
    assert not progress_bar(1, "restored after the block").disable


def test_no_bar_when_stderr_is_not_a_terminal(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    assert progress_bar(10, "x").disable is True
    assert out.getvalue() == ""


def test_the_exact_search_shows_its_bar(monkeypatch):
    terminal = fake_terminal(monkeypatch)
    x = np.random.default_rng(0).normal(size=(600, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    knn_search(x, x, 5, exclude_self=True, block_size=200)
    assert "kNN (exact)" in terminal.getvalue()
    terminal.seek(0), terminal.truncate()
    with progress_enabled(False):
        knn_search(x, x, 5, exclude_self=True, block_size=200)
    assert terminal.getvalue() == ""
