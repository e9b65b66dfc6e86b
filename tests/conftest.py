"""Shared fixtures: a tiny shapes world generated once per session."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import sys  # noqa: E402

import pytest  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "detect"))
# benchmarks/: the synthetic worlds the benchmarks measure on are the ones some tests use
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))


#: the longest test files, started first: with ``pytest -n 2 --dist loadfile`` (``make test``) the two workers
#: then finish together instead of one running a long file alone at the end (measured: 499 s -> see the Makefile)
SLOW_FIRST = ("test_readme.py", "pipeline/test_end_to_end.py", "pipeline/test_heads.py",
              "pipeline/test_defend_model.py", "faults/", "docs/", "distributed/", "train/test_dynamics.py",
              "pipeline/test_demo.py", "corpus/", "report/")


def _slow_rank(item) -> int:
    path = item.nodeid.split("::")[0]
    return next((i for i, key in enumerate(SLOW_FIRST) if key in path), len(SLOW_FIRST))


def pytest_collection_modifyitems(config, items):
    """Start the slowest files first (stable otherwise); skip ``gpu`` tests where torch sees no CUDA GPU and
    ``no_gpu`` tests where it sees one."""
    import torch

    items.sort(key=_slow_rank)

    has_gpu = torch.cuda.is_available()
    for item in items:
        if item.get_closest_marker("gpu") and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (torch sees none here)"))
        if item.get_closest_marker("no_gpu") and has_gpu:
            item.add_marker(pytest.mark.skip(reason="checks the behaviour without a GPU"))


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A 600-pair shapes world with a 200-image labelled test split (path to its folder)."""
    from clipguard.data.synth import generate_world

    out = tmp_path_factory.mktemp("world")
    generate_world(out, n_train=600, n_test=200, seed=0, progress=False, workers=1)
    return out


@pytest.fixture
def memory_root():
    """A fresh ``memory://<name>`` folder, removed after the test."""
    import uuid

    import fsspec

    fs = fsspec.filesystem("memory")
    name = f"clipguard-test-{uuid.uuid4().hex[:8]}"
    yield f"memory://{name}"
    if fs.exists(f"/{name}"):
        fs.rm(f"/{name}", recursive=True)
