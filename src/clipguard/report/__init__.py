"""Reports people look at: one self-contained HTML page per run (no CDN, no script, images inlined).

:func:`build_report` picks the page from the run folder's ``run.json`` (``command``) through
:data:`REPORT_BUILDERS`; each kind also has its own builder: :func:`build_scan_report`,
:func:`build_defend_report`, :func:`build_audit_report`, :func:`build_heads_report` (analyze, repair,
filter), :func:`build_bench_report`. To add a kind, see :mod:`clipguard.report.dispatch`.
"""
from clipguard.report.audit_page import build_audit_report
from clipguard.report.bench_page import build_bench_report
from clipguard.report.defend_page import build_defend_report
from clipguard.report.dispatch import REPORT_BUILDERS, build_report, report_kind
from clipguard.report.heads_page import build_heads_report
from clipguard.report.page import Suspect, build_scan_report

__all__ = ["build_report", "REPORT_BUILDERS", "report_kind", "build_scan_report", "build_defend_report",
           "build_audit_report", "build_heads_report", "build_bench_report", "Suspect"]
