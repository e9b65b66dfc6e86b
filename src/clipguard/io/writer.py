"""Writing shards of the clip-retrieval layout (:mod:`clipguard.io.layout`) atomically.

An embedding shard is complete once its metadata file exists: it is written last, and every file
appears only once complete, so a killed job never leaves a shard that looks finished
(:func:`embedding_shard_complete`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from clipguard.io.layout import shard_path
from clipguard.utils.io import atomic_path, save_npy

__all__ = ["write_embedding_shard", "embedding_shard_complete", "write_scores_shard"]


def write_embedding_shard(root: str | Path, i: int, image: np.ndarray, metadata: pd.DataFrame,
                          text: np.ndarray | None = None) -> None:
    """Write shard ``i`` under ``root``: ``img_emb_{i}.npy``, ``text_emb_{i}.npy`` (when ``text`` is
    given) and, last, ``metadata_{i}.parquet``.

    Args:
        root: the embedding folder.
        i: shard index.
        image: (n_i, d) float32 image embeddings.
        metadata: n_i rows, row-aligned with ``image`` (written without its index).
        text: (n_i, d_t) float32 caption embeddings, or None.
    """
    save_npy(shard_path(root, "img", i), image)
    if text is not None:
        save_npy(shard_path(root, "text", i), text)
    with atomic_path(shard_path(root, "meta", i)) as tmp:
        metadata.reset_index(drop=True).to_parquet(tmp, index=False)


def embedding_shard_complete(root: str | Path, i: int, *, text: bool) -> bool:
    """True when shard ``i`` has its metadata and image files (and its text file if ``text``)."""
    return (shard_path(root, "meta", i).is_file() and shard_path(root, "img", i).is_file()
            and (not text or shard_path(root, "text", i).is_file()))


def write_scores_shard(root: str | Path, i: int, scores: pd.DataFrame) -> Path:
    """Write ``scores/scores_{i}.parquet`` under ``root`` atomically (without the index); its path."""
    path = shard_path(root, "scores", i)
    with atomic_path(path) as tmp:
        scores.to_parquet(tmp, index=False)
    return path
