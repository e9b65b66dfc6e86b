"""A fork server for the fault tests: ``python cli_server.py`` imports clipguard's command line once,
then runs every command it is sent in a forked child process, as ``python -m clipguard ARGS`` runs it.

Why: a fresh ``python -m clipguard`` spends 8-15 s importing torch, open_clip and scikit-learn on a
2-core machine; the fault tests run about thirty commands and kill five of them. A child forked from
this server is a real process running the real entry point (``runpy`` of ``clipguard.__main__``,
which calls ``clipguard.cli.main()`` on ``sys.argv``) that a test can ``SIGKILL`` by its pid; only the
imports are shared. The server itself runs no torch operation before forking, so no OpenMP thread
pool exists yet and each child starts its own, as a fresh interpreter would.

Protocol, one JSON object per line: the server says ``{"ready": true}`` once its imports are done;
the test writes ``{"argv": [...], "log": path}`` on stdin; the server answers ``{"pid": n}`` as soon
as the child runs, then ``{"code": c}`` once it ended (``c`` as :func:`os.waitstatus_to_exitcode`:
``-9`` for a child killed by ``SIGKILL``). The child's stdout and stderr go to ``log``. End of stdin
ends the server.
"""
from __future__ import annotations

import importlib
import json
import os
import runpy
import sys

#: Imported before the first fork: every command module, and what the library imports lazily inside
#: functions while scanning and scoring (scikit-learn alone takes 4 s to import here).
PRELOAD = ("clipguard.cli.data", "clipguard.cli.train", "clipguard.cli.embed", "clipguard.cli.scan",
           "clipguard.cli.defend", "pyarrow.dataset", "pyarrow.parquet", "faiss", "scipy.stats",
           "scipy.cluster.hierarchy", "sklearn.cluster", "sklearn.ensemble", "sklearn.metrics")


def _child(argv: list[str], log: str) -> None:
    """Run ``clipguard ARGV`` in this (forked) process with its output in ``log``; never returns."""
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        sys.argv = ["clipguard", *argv]
        try:
            runpy.run_module("clipguard", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported in the log, like an uncaught error of a real process
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    """Answer requests until stdin ends (see the module docstring)."""
    for name in PRELOAD:
        importlib.import_module(name)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(req["argv"], req["log"])
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    serve()
