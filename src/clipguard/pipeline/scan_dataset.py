"""Scan a dataset: embed it with a model, then score the embeddings (two stages, one call).

Writes into ``out_dir``::

    embeddings/    the clip-retrieval folder of the dataset (with caption embeddings; resumable:
                   a rerun reuses the finished shards)
    scores/        the score shards of :func:`clipguard.detect.run_scan`
    run.json       the scan's record

Example::

    from clipguard.pipeline import scan_dataset

    res = scan_dataset("model", "data/manifest.parquet", "scan", k=16)
    res.embed.n_embedded, res.scan.scores.head()
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipguard.data import read_source
from clipguard.detect import ScanConfig, ScanResult, run_scan
from clipguard.embed import EmbedResult, embed_dataset
from clipguard.models import load_model

__all__ = ["DatasetScanResult", "scan_dataset"]


@dataclass
class DatasetScanResult:
    """What :func:`scan_dataset` produced: the embedding run and the scan of its folder.

    Attributes:
        embed: the :class:`~clipguard.embed.EmbedResult` (shards written / reused).
        scan: the :class:`~clipguard.detect.ScanResult` of ``out_dir``.
        emb_dir: the embedding folder, ``out_dir/embeddings``.
    """

    embed: EmbedResult
    scan: ScanResult
    emb_dir: Path


def scan_dataset(
    model_dir: str | Path,
    manifest: str | Path,
    out_dir: str | Path,
    *,
    detectors: list[str] | tuple[str, ...] | None = None,
    config: ScanConfig | None = None,
    embed_batch_size: int = 256,
    progress: bool = True,
    **overrides: Any,
) -> DatasetScanResult:
    """Embed a dataset with a model, then scan the embeddings.

    Writes ``out_dir/embeddings/`` (clip-retrieval layout, with caption embeddings; resumable:
    a rerun reuses the finished shards) with :func:`~clipguard.embed.embed_dataset`, then
    ``out_dir/scores/`` and ``out_dir/run.json`` with :func:`~clipguard.detect.run_scan`. Every
    score is "higher = more suspicious".

    Args:
        model_dir: a model folder written by :func:`~clipguard.models.save_model`.
        manifest: a dataset manifest (:func:`~clipguard.data.manifest.read_manifest`) or webdataset
            tar shards (a brace pattern, :func:`~clipguard.data.webdataset.read_webdataset`).
        out_dir: output folder (created).
        detectors: detector names, as in :func:`~clipguard.detect.run_scan` (None = every
            detector whose inputs the embeddings have).
        config: the scan options (default ``ScanConfig()``).
        embed_batch_size: images per forward pass while embedding (the model runs on
            ``config.device``, like the kNN search).
        progress: show the embedding progress bar.
        **overrides: ScanConfig field names applied on top of ``config``.

    Raises:
        ConfigError: as :func:`~clipguard.detect.run_scan` (checked before anything is embedded).
        ClipguardError: the model or manifest cannot be read.
    """
    cfg = ScanConfig.resolve(config, **overrides)  # fail fast, before the expensive part
    emb_dir = Path(out_dir) / "embeddings"
    source = read_source(manifest)  # a bad manifest fails before the model is loaded
    emb = embed_dataset(load_model(model_dir, device=cfg.device), source, emb_dir,
                        batch_size=embed_batch_size, progress=progress, device=cfg.device)
    res = run_scan(emb_dir, out_dir, detectors=detectors, config=cfg)
    return DatasetScanResult(embed=emb, scan=res, emb_dir=emb_dir)
