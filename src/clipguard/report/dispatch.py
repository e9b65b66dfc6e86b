"""One entry point for every report page: :func:`build_report` reads ``run.json``'s ``command`` (the name
each pipeline gives its :class:`~clipguard.utils.runrecord.RunRecord`) and calls the builder registered for it.

Adding a page kind: write ``report/<kind>_page.py`` with a builder
``build_<kind>_report(run_dir, out=None, **options) -> Path`` (its template extends ``base.html.j2``),
import it here and add one entry to :data:`REPORT_BUILDERS`, keyed by the ``command`` its run writes::

    from clipguard.report.bench_page import build_bench_report
    REPORT_BUILDERS["bench"] = build_bench_report     # or one line in the dict below

Example::

    from clipguard.report import build_report

    build_report("audit_out")          # -> audit_out/report.html, the audit page
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Callable

from clipguard.errors import ConfigError
from clipguard.report.audit_page import build_audit_report
from clipguard.report.bench_page import build_bench_report
from clipguard.report.common import read_run
from clipguard.report.defend_page import build_defend_report
from clipguard.report.heads_page import build_heads_report
from clipguard.report.page import build_scan_report

__all__ = ["REPORT_BUILDERS", "build_report", "report_kind"]

REPORT_BUILDERS: dict[str, Callable[..., Path]] = {
    "scan": build_scan_report,
    "defend": build_defend_report,
    "audit": build_audit_report,
    "heads analyze": build_heads_report,
    "heads repair": build_heads_report,
    "heads filter": build_heads_report,
    "bench": build_bench_report,
}
"""``run.json`` command -> builder ``(run_dir, out=None, **options) -> Path`` of its page."""


def report_kind(run_dir: str | os.PathLike) -> str:
    """The ``command`` of ``run_dir/run.json``, checked against :data:`REPORT_BUILDERS`.

    Raises:
        ConfigError: no ``run.json``, or a command without a report page (the message names the folder
            and the kinds there are).
    """
    kinds = ", ".join(f"`clipguard {k}`" for k in REPORT_BUILDERS)
    run = read_run(run_dir, f"a command with a report page ({kinds})")
    kind = run.get("command")
    if kind not in REPORT_BUILDERS:
        raise ConfigError(f"{run_dir}: run.json was written by `clipguard {kind}`, which has no report page; "
                          f"pass the output folder of one of: {kinds}")
    return str(kind)


def build_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, **options: Any) -> Path:
    """Write the HTML report of any run folder whose kind has a page (``run_dir/report.html`` by default).

    Args:
        run_dir: the output folder of ``clipguard scan``, ``defend``, ``audit``, ``heads analyze | repair |
            filter`` (any command in :data:`REPORT_BUILDERS`).
        out: the HTML file (default ``run_dir/report.html``).
        options: passed to the kind's builder; ``None`` values are dropped (the builder's default holds).
            Scans take ``detector``, ``top``, ``max_map_points``, ``seed`` (:func:`build_scan_report`).

    Returns:
        The path of the page.

    Raises:
        ConfigError: see :func:`report_kind`; an option the kind's page does not take.
    """
    kind = report_kind(run_dir)
    builder = REPORT_BUILDERS[kind]
    given = {k: v for k, v in options.items() if v is not None}
    extra = [k for k in given if not _takes(builder, k)]
    if extra:
        others = sorted({k for k, b in REPORT_BUILDERS.items() if all(_takes(b, x) for x in extra)})
        only = f" (only {', '.join(others)} reports do)" if others else ""
        raise ConfigError(f"{run_dir} is a `clipguard {kind}` run: its report takes no option "
                          f"{', '.join(sorted(extra))}{only}; drop it")
    return builder(Path(run_dir), out, **given)


def _takes(builder: Callable[..., Path], option: str) -> bool:
    """Whether ``builder`` accepts the keyword ``option``."""
    params = inspect.signature(builder).parameters.values()
    return any(p.name == option and p.kind is not inspect.Parameter.POSITIONAL_ONLY
               or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
