"""Reports people look at: one self-contained HTML page per run (:func:`build_scan_report`)."""
from clipguard.report.page import Suspect, build_scan_report

__all__ = ["build_scan_report", "Suspect"]
