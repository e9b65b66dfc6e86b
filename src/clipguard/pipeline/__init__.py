"""Orchestration across stages (layer 6): what needs several stages in one call.

* :func:`scan_dataset` -- embed a dataset with a model, then scan the embeddings
  (:class:`DatasetScanResult`); ``clipguard scan --model M --data D --out O``.
* :func:`defend_model` -- a model defence with CA / ASR before and after and its ``run.json``;
  ``clipguard defend METHOD MODEL --data D --out O``.
* :func:`heads_analyze`, :func:`heads_repair`, :func:`heads_filter` -- a ViT's infected heads, its
  inference-time repair and the input filter; ``clipguard heads analyze|repair|filter``.
* :func:`discover_scan` -- clusters of a scan's top-scored samples; ``clipguard discover SCAN_DIR``.
* :func:`reverse_model` -- a trigger reversed towards a caption, verified; ``clipguard reverse``.
* :func:`audit_model` -- is a checkpoint backdoored, and towards what; ``clipguard audit``.
* :func:`run_demo` -- the whole pipeline on the embedded world (:class:`DemoConfig`,
  :func:`format_summary`); ``clipguard demo``.

Example::

    from clipguard.pipeline import scan_dataset

    res = scan_dataset("model", "data/manifest.parquet", "scan", k=16)
    print(res.scan.metrics)
"""
from clipguard.pipeline.audit import audit_model, calibrate_audits
from clipguard.pipeline.defend_model import defend_model
from clipguard.pipeline.demo import DemoConfig, format_summary, run_demo
from clipguard.pipeline.discover import discover_scan
from clipguard.pipeline.heads import heads_analyze, heads_filter, heads_repair
from clipguard.pipeline.reverse import reverse_model
from clipguard.pipeline.scan_dataset import DatasetScanResult, scan_dataset

__all__ = ["audit_model", "calibrate_audits", "DatasetScanResult", "defend_model", "discover_scan", "DemoConfig",
           "format_summary", "heads_analyze", "heads_filter", "heads_repair", "reverse_model", "run_demo",
           "scan_dataset"]
