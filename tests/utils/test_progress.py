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


def test_a_function_can_switch_its_own_bar_off(monkeypatch):
    terminal = fake_terminal(monkeypatch)
    assert progress_bar(10, "own switch", enabled=False).disable is True
    assert not progress_bar(10, "on").disable
    with progress_enabled(False):
        assert progress_bar(10, "block wins", enabled=True).disable is True
    assert "own switch" not in terminal.getvalue()


def test_progress_lines_follow_the_same_switches(monkeypatch, capsys):
    from clipguard.utils.progress import progress_write

    progress_write("epoch 1/2: loss 1.0")
    progress_write("hidden by the function", enabled=False)
    with progress_enabled(False):
        progress_write("hidden by -q")
    out = capsys.readouterr().out
    assert "epoch 1/2" in out and "hidden" not in out
