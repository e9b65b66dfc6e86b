"""Detecting backdoor samples from embedding-space density.

kNN backends (``knn``), density scores (``density``), registered detectors and the
all-in-one scorer (``detectors``), the clip-retrieval folder reader (``layout``), and the
scan that writes per-shard score files (``scan``). Every score is "higher = more suspicious".
"""
from clipguard.detect.density import (
    EPS,
    LID_MAX,
    NeighbourStats,
    dao,
    kdistance,
    lid_mle,
    neighbour_stats,
    slof,
)
from clipguard.detect.detectors import (
    DAO,
    DETECTORS,
    LID,
    SLOF,
    DensityDetector,
    KDistance,
    batch_partition,
    score_all,
    self_knn,
)
from clipguard.detect.knn import knn_bruteforce, knn_search, normalize
from clipguard.detect.layout import EmbeddingSet, load_embedding_folder
from clipguard.detect.scan import ScanResult, rank_desc, run_scan, top_suspects

__all__ = [
    "EPS", "LID_MAX", "NeighbourStats", "dao", "kdistance", "lid_mle", "neighbour_stats", "slof",
    "DAO", "DETECTORS", "LID", "SLOF", "DensityDetector", "KDistance", "batch_partition",
    "score_all", "self_knn",
    "knn_bruteforce", "knn_search", "normalize",
    "EmbeddingSet", "load_embedding_folder",
    "ScanResult", "rank_desc", "run_scan", "top_suspects",
]
