"""Detecting backdoor samples from embedding-space density and caption signals.

The package reads bottom to top (each part imports only the parts above it in this list):
``options`` (defaults and choices), ``neighbours/`` (kNN search behind one backend interface),
``reference/`` (which samples each sample is compared with), ``detectors/`` (one module per
detector, the ``DETECTORS`` registry), ``config`` (:class:`ScanConfig`), ``metrics``, ``engine``
(:func:`score_embeddings`), ``results`` (the score table), ``report`` and ``store`` (the scan
folder), ``facade`` (:class:`Scan`) and ``api`` (:func:`run_scan`). Every score is "higher = more
suspicious".

Example::

    from clipguard.detect import Scan, ScanConfig

    scan = Scan.from_folder("emb")                       # a clip-retrieval embedding folder
    scan.find_suspects(["dao", "fused"], config=ScanConfig(k=16, reference="auto"))
    print(scan.report())                                 # reference mode and why, metrics, top ids
    scan.get_suspects("fused", n=20)                     # DataFrame, rank 1 first
    scan.save("scan")                                    # scores/scores_{i}.parquet + run.json
    again = Scan.load("scan")                            # the same scores, config, metrics
    scores, info = score_embeddings(x, ["dao"], k=16)    # arrays in, {name: (N,) scores} out
"""
from clipguard.detect.api import ScanResult, run_scan, top_suspects
from clipguard.detect.config import ScanConfig
from clipguard.detect.detectors import DETECTORS, Detector
from clipguard.detect.engine import score_embeddings
from clipguard.detect.facade import Scan
from clipguard.detect.neighbours.base import knn_search
from clipguard.detect.options import BACKENDS, INDEXES, REFERENCE_MODES

__all__ = ["Scan", "ScanConfig", "ScanResult", "run_scan", "top_suspects", "score_embeddings", "DETECTORS",
           "Detector", "knn_search", "REFERENCE_MODES", "INDEXES", "BACKENDS"]
