"""Embedding extraction in the clip-retrieval layout (:func:`embed_dataset`; the shard-level pieces
:func:`make_job`, :func:`embed_shard`, :func:`reuse_shard`, :func:`finish_embed` are what
:mod:`clipguard.distributed` runs on a cluster), and the perturbation stability of each image under a model
(:func:`perturbation_stability`, a STRIP-like backdoor probe; :func:`probe_dataset` runs it over a dataset as a
resumable run and writes the record that ``clipguard scan --record`` reads)."""
from clipguard.embed.extract import (
    GROUND_TRUTH_COLUMNS,
    EmbedJob,
    EmbedResult,
    ShardOutcome,
    embed_dataset,
    embed_record,
    embed_shard,
    finish_embed,
    make_job,
    reuse_shard,
    shard_bounds,
)
from clipguard.embed.probe import DEFAULT_PART_ROWS, ProbeResult, probe_dataset
from clipguard.embed.stability import (
    BLEND_WEIGHT,
    BLUR_FRACTION,
    NOISE_SD,
    PERTURBATIONS,
    STABILITY_FILE,
    PerturbedImages,
    perturb_image,
    perturbation_stability,
    read_stability,
    write_stability,
)

__all__ = ["EmbedResult", "embed_dataset", "EmbedJob", "ShardOutcome", "make_job", "embed_shard", "reuse_shard",
           "finish_embed", "embed_record", "shard_bounds", "GROUND_TRUTH_COLUMNS", "perturbation_stability",
           "perturb_image", "PERTURBATIONS", "NOISE_SD", "BLUR_FRACTION", "BLEND_WEIGHT", "STABILITY_FILE",
           "PerturbedImages", "write_stability", "read_stability", "probe_dataset", "ProbeResult", "DEFAULT_PART_ROWS"]
