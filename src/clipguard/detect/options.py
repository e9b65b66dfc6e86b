"""The defaults and choices of a scan: the one source every layer of ``detect`` (and the CLI) reads.

Nothing here imports the rest of ``detect``: :class:`~clipguard.detect.config.ScanConfig`, the
kNN functions, the reference planner and the detectors all take their defaults from this module.
Why ``"auto"`` picks what it picks is explained in :mod:`clipguard.detect.reference.plan`.
"""
from __future__ import annotations

__all__ = [
    "DEFAULT_K", "DEFAULT_DETECTOR", "PROBE_DETECTOR", "DEFAULT_RULE", "DEFAULT_BATCH_SIZE", "DEFAULT_BLOCK_SIZE", "DEFAULT_SUSPECT_SHARE", "DEFAULT_SEED",
    "DEFAULT_REFERENCE", "DEFAULT_INDEX", "DEFAULT_BACKEND", "DEFAULT_TARGET_RECALL", "DEFAULT_N_RECALL",
    "DEFAULT_CHUNK_SIZE", "DEFAULT_REFERENCE_SIZE", "DEFAULT_MULTI_REFERENCE_SIZE",
    "DEFAULT_N_REFERENCES", "AUTO_GLOBAL_MAX_N", "AUTO_FLAT_MAX_PAIRS", "REFERENCE_MODES", "INDEXES",
    "BACKENDS",
]

# -- choices --------------------------------------------------------------------------------------

REFERENCE_MODES = ("auto", "global", "batch", "reference", "multi_reference")
"""The reference modes (:mod:`clipguard.detect.reference`): which samples each sample is compared with."""

INDEXES = ("auto", "flat", "ivf")
"""FAISS index of the reference modes: ``"flat"`` (exact), ``"ivf"`` (approximate), ``"auto"``."""

BACKENDS = ("blocked", "faiss")
"""Exact kNN backends (:mod:`clipguard.detect.neighbours`): tiled torch matmuls, FAISS ``IndexFlatIP``."""

# -- defaults of the scan options ------------------------------------------------------------------

DEFAULT_K = 16
"""Neighbours per sample."""

DEFAULT_BATCH_SIZE = 2048
"""Batch size of the ``"batch"`` reference (the DAO paper's per-batch reference)."""

DEFAULT_BLOCK_SIZE = 2048
"""Tile edge of the blocked kNN search and of the blocked caption comparisons."""

DEFAULT_SUSPECT_SHARE = 0.01
"""``is_<det>_suspect`` marks the top 1% of the dataset by default (the DAO paper's filter share for
patch triggers)."""

DEFAULT_DETECTOR = "fused"
"""The default ranking: what ``clipguard filter`` cuts by, what ``scan --top`` prints, and what
``run.json`` names under ``default_detector`` (when the scan ran it; else its first detector) -- unless the
scan joined a perturbation-stability record (:data:`PROBE_DETECTOR`)."""

PROBE_DETECTOR = "perturbation"
"""The default ranking of a scan that joined a perturbation-stability record (``clipguard probe``, then
``scan --record``), in place of :data:`DEFAULT_DETECTOR`. The evidence (AUROC against the ground truth, the model
trained on the scanned pairs): over the 16 learned cells of the cpu evaluation panel (3 worlds x 4 attacks x
0.5-5 %) the noise stability gave worst 0.714 / mean 0.888 against ``fused``'s 0.152 / 0.731; in the DAO paper's
setting (rare target, 0.1 %) 0.931 against 0.648 at 30,000 pairs (SIG), and 0.948 / 0.879 (SIG / BadNets)
against the per-batch ``fused``'s 0.878 / 0.921 at 100,000 pairs on a GPU. Over all 22 learned cells measured
(with three trigger designs the panel never saw) its worst case is 0.684 -- a colour-filter trigger (Nashville),
where ``fused`` gave 0.980 -- and ``fused``'s is 0.152. It is not uniformly better (that BadNets cell, the
filter), but ``fused`` collapses where the probe does not. It sees only a LEARNED backdoor (chance where ASR is
near 0). ``benchmarks/results/perturbation_probe*.md``."""

DEFAULT_RULE = (f"{PROBE_DETECTOR} when the scan joined a perturbation-stability record (its worst case over the "
                f"evaluation panel beats {DEFAULT_DETECTOR}'s), else {DEFAULT_DETECTOR} when it ran, else the first "
                "detector")
"""The rule of ``default_detector`` in words (``run.json``'s ``default_rule``)."""

DEFAULT_SEED = 0
"""Seed of batches, random references, IVF and Isolation Forest."""

DEFAULT_REFERENCE = "auto"
"""Reference mode asked for by default (resolved from N by the planner)."""

DEFAULT_INDEX = "auto"
"""Index of the reference modes asked for by default."""

DEFAULT_BACKEND = "blocked"
"""Exact kNN backend of the ``"global"`` reference."""

DEFAULT_TARGET_RECALL = 0.95
"""recall@k the IVF ``nprobe`` tuning aims for."""

DEFAULT_N_RECALL = 1000
"""Queries sampled to tune ``nprobe`` and to measure the IVF recall@k."""

DEFAULT_CHUNK_SIZE = 65536
"""Query rows per search call against a reference (the queries may be a memory map)."""

# -- sizes of the reference modes and the rule of "auto" ------------------------------------------

DEFAULT_REFERENCE_SIZE = 50_000
"""Default M of ``"reference"`` (one fixed reference: large, for stable estimates)."""

DEFAULT_MULTI_REFERENCE_SIZE = 2048
"""Default M of ``"multi_reference"`` and of ``"auto"`` (small references, averaged)."""

DEFAULT_N_REFERENCES = 8
"""Default R of ``"multi_reference"``."""

AUTO_GLOBAL_MAX_N = 100_000
"""``"auto"`` uses exact global kNN up to this many samples (:mod:`clipguard.detect.reference.plan`
says why)."""

AUTO_FLAT_MAX_PAIRS = 1e11
"""``index="auto"`` uses the exact flat index while N * M stays below this, IVF beyond."""
