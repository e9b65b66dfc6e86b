"""Orchestration across stages (layer 6): what needs several stages in one call.

* :func:`scan_dataset` -- embed a dataset with a model, then scan the embeddings
  (:class:`DatasetScanResult`); ``clipguard scan --model M --data D --out O``.
* :func:`run_demo` -- the whole pipeline on the embedded world (:class:`DemoConfig`,
  :func:`format_summary`); ``clipguard demo``.

Example::

    from clipguard.pipeline import scan_dataset

    res = scan_dataset("model", "data/manifest.parquet", "scan", k=16)
    print(res.scan.metrics)
"""
from clipguard.pipeline.demo import DemoConfig, format_summary, run_demo
from clipguard.pipeline.scan_dataset import DatasetScanResult, scan_dataset

__all__ = ["DatasetScanResult", "DemoConfig", "format_summary", "run_demo", "scan_dataset"]
