"""The distributor seam: every task runs once per success, failures are retried then named,
bad input stops the run, a dead worker is replaced; Ray missing gives the install line."""
from __future__ import annotations

import os
import sys
from functools import partial

import pytest

from clipguard.distributed import DISTRIBUTORS, make_distributor
from clipguard.distributed.ray_engine import INSTALL_HINT
from clipguard.errors import ConfigError, EmbeddingError


def _flaky_worker(marker_dir, mode):
    """task -> task ** 2; task 3 fails once ("once"), always ("always"), raises bad input ("input"),
    or kills its process once ("die")."""
    def work(task):
        marker = os.path.join(marker_dir, f"tried_{task}")
        first = not os.path.exists(marker)
        open(marker, "a").close()
        if task == 3:
            if mode == "always" or (mode == "once" and first):
                raise RuntimeError(f"transient failure of {task}")
            if mode == "input":
                raise EmbeddingError("row 7 of img_emb_0.npy holds NaN; re-export it")
            if mode == "die" and first:
                os._exit(1)
        return task ** 2
    return work


def _make(marker_dir, mode):
    return _flaky_worker(marker_dir, mode)


def test_cli_names_equal_the_registry():
    from clipguard.cli.options import DISTRIBUTOR_NAMES

    assert tuple(DISTRIBUTORS.names()) == DISTRIBUTOR_NAMES


def _run(name, tmp_path, mode, retries=2, **opts):
    got = {}
    with make_distributor(name, **opts) as dist:
        failed = dist.map(partial(_make, str(tmp_path), mode), list(range(6)),
                          lambda t, r: got.__setitem__(t, r), retries=retries)
    return got, failed


@pytest.mark.parametrize("name", ["sequential", "ray"])
def test_retry_then_success(name, tmp_path, request):
    if name == "ray":
        request.getfixturevalue("ray_cluster")
    got, failed = _run(name, tmp_path, "once")
    assert failed == {} and got == {t: t * t for t in range(6)}


@pytest.mark.parametrize("name", ["sequential", "ray"])
def test_a_task_that_keeps_failing_is_named(name, tmp_path, request):
    if name == "ray":
        request.getfixturevalue("ray_cluster")
    got, failed = _run(name, tmp_path, "always", retries=1)
    assert list(failed) == [3] and "RuntimeError: transient failure of 3" in failed[3]
    assert got == {t: t * t for t in range(6) if t != 3}


@pytest.mark.parametrize("name", ["sequential", "ray"])
def test_bad_input_stops_the_run_with_its_own_message(name, tmp_path, request):
    if name == "ray":
        request.getfixturevalue("ray_cluster")
    with pytest.raises(EmbeddingError, match="holds NaN"):
        _run(name, tmp_path, "input")


def test_ray_replaces_a_worker_that_died(tmp_path, ray_cluster):
    got, failed = _run("ray", tmp_path, "die")
    assert failed == {} and got == {t: t * t for t in range(6)}


def test_ray_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ConfigError) as e:
        make_distributor("ray")
    assert str(e.value) == INSTALL_HINT and "pip install 'clipguard[ray]'" in INSTALL_HINT


def test_unknown_distributor_and_address_without_ray():
    with pytest.raises(ConfigError, match="sequential"):
        make_distributor("spark")
    with pytest.raises(ConfigError, match="--distributor ray"):
        make_distributor("sequential", address="auto")
