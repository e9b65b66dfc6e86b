"""Fixtures of the fault and determinism tests: two CLI servers and the chain, run once per session
-- helpers in ``fault_helpers.py``, importable because this folder is put on ``sys.path`` here.

The fixtures live for the session (the chain's outputs stay on disk), but the servers, two processes
holding torch, are stopped as soon as the next test is not one of this folder (a later test here
starts them again)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from fault_helpers import CliServer, run_chain  # noqa: E402

HERE = Path(__file__).parent
_SERVERS: list[CliServer] = []


def pytest_runtest_teardown(item, nextitem):
    """Stop the CLI servers after the last test of this folder (in the order the tests run)."""
    if nextitem is None or Path(nextitem.path).parent != HERE:
        for server in _SERVERS:
            server.close()


@pytest.fixture(scope="session")
def cli_servers(tmp_path_factory):
    """Two :class:`CliServer` s with different ``PYTHONHASHSEED`` s (so that a result that depends on the
    order of a set of strings differs between them, as between two fresh processes), started together so
    that their imports overlap. CPU threads as the machine gives; ``OMP_WAIT_POLICY=PASSIVE``."""
    servers = [CliServer(tmp_path_factory.mktemp(f"cli_logs_{h}"),
                         {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONHASHSEED": h}) for h in ("1", "2")]
    _SERVERS.extend(servers)
    yield servers
    for server in servers:
        server.close()
    _SERVERS.clear()


@pytest.fixture(scope="session")
def cli(cli_servers) -> CliServer:
    """The server that runs the chain and the kill tests."""
    return cli_servers[0]


@pytest.fixture(scope="session")
def cli_other(cli_servers) -> CliServer:
    """The server that runs the chain a second time (determinism)."""
    return cli_servers[1]


@pytest.fixture(scope="session")
def chain(cli, tmp_path_factory) -> Path:
    """The chain run once, uninterrupted, with seed 0 (its root folder)."""
    return run_chain(cli, tmp_path_factory.mktemp("chain") / "a")
