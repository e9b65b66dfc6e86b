"""Defences: remove what a scan found (``filter_manifest``); model-side defences come later."""
from clipguard.defend.filter import FilterResult, filter_manifest

__all__ = ["FilterResult", "filter_manifest"]
