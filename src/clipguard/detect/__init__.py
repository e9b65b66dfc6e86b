"""Detecting backdoor samples from embedding-space density and caption signals.

kNN backends (``knn``), density scores (``density``), reference modes and the neighbour graph
(``reference``), the detectors -- density (``detectors``), Isolation Forest (``iforest``),
pair/text signals (``pair``), the fused score (``fused``) -- all in the ``DETECTORS`` registry,
the scan options (``config``: :class:`ScanConfig`), the scoring engine (``scoring``), the clip-retrieval folder reader (``layout``), the scan that
writes per-shard score files (``scan``) and the :class:`Scan` facade (``facade``).
Every score is "higher = more suspicious".

Example::

    from clipguard.detect import Scan, ScanConfig

    scan = Scan.from_folder("emb")
    scan.find_suspects(["dao", "fused"], config=ScanConfig(k=16, reference="auto"))
    print(scan.report())
    scan.get_suspects("fused", n=20)
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
    DensityAnomaly,
    DETECTORS,
    LID,
    SLOF,
    DensityDetector,
    Detector,
    KDistance,
    batch_partition,
    score_all,
    self_knn,
)
from clipguard.detect.iforest import IForest
from clipguard.detect.pair import (
    CaptionDisagreement,
    CaptionDup,
    CLIPScore,
    caption_disagreement,
    caption_dup_share,
    clipscore,
    text_dup_share,
)
from clipguard.detect.fused import Fused, fold_two_sided, fuse_scores, percentile_rank, robust_z
from clipguard.detect.knn import knn_bruteforce, knn_search, knn_self_groups, normalize
from clipguard.detect.layout import EmbeddingSet, load_embedding_folder
from clipguard.detect.reference import (
    REFERENCE_MODES,
    NeighbourGraph,
    ReferencePlan,
    build_graph,
    plan_reference,
    sample_reference,
    search_reference,
)
from clipguard.detect.scoring import (
    ScoreInputs,
    caption_keys,
    make_detector,
    score_embeddings,
    split_by_inputs,
)
from clipguard.detect.config import ScanConfig
from clipguard.detect.scan import (
    DatasetScanResult,
    ScanResult,
    rank_desc,
    run_scan,
    scan_dataset,
    top_suspects,
)
from clipguard.detect.facade import Scan

__all__ = [
    "EPS", "LID_MAX", "NeighbourStats", "dao", "kdistance", "lid_mle", "neighbour_stats", "slof",
    "DAO", "DETECTORS", "DensityAnomaly", "LID", "SLOF", "DensityDetector", "Detector", "KDistance",
    "batch_partition", "score_all", "self_knn",
    "IForest", "CaptionDisagreement", "CaptionDup", "CLIPScore", "caption_disagreement",
    "caption_dup_share", "clipscore", "text_dup_share",
    "Fused", "fold_two_sided", "fuse_scores", "percentile_rank", "robust_z",
    "knn_bruteforce", "knn_search", "knn_self_groups", "normalize",
    "EmbeddingSet", "load_embedding_folder",
    "REFERENCE_MODES", "NeighbourGraph", "ReferencePlan", "build_graph", "plan_reference",
    "sample_reference", "search_reference",
    "ScoreInputs", "caption_keys", "make_detector", "score_embeddings", "split_by_inputs",
    "ScanConfig", "DatasetScanResult", "ScanResult", "rank_desc", "run_scan", "scan_dataset",
    "top_suspects",
    "Scan",
]
