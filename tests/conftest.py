"""Shared fixtures: a tiny shapes world generated once per session."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import sys  # noqa: E402

import pytest  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "detect"))


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A 600-pair shapes world with a 200-image labelled test split (path to its folder)."""
    from clipguard.data.synth import generate_world

    out = tmp_path_factory.mktemp("world")
    generate_world(out, n_train=600, n_test=200, seed=0, progress=False, workers=1)
    return out
