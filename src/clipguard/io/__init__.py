"""The clip-retrieval folder layout, read and written in one place (used by embed, detect, defend).

* :mod:`~clipguard.io.layout` -- shard naming (``img_emb/img_emb_{i}.npy``,
  ``text_emb/text_emb_{i}.npy``, ``metadata/metadata_{i}.parquet``, ``scores/scores_{i}.parquet``)
  and listing shards by integer index;
* :mod:`~clipguard.io.reader` -- :func:`load_embedding_folder` -> :class:`EmbeddingSet`;
* :mod:`~clipguard.io.writer` -- atomic shard writers.

Example::

    from clipguard.io import load_embedding_folder

    es = load_embedding_folder("emb")     # es.image (N, d), es.text, es.metadata (id, shard, ...)
"""
from clipguard.io.layout import list_shards, shard_path
from clipguard.io.reader import EmbeddingSet, load_embedding_folder
from clipguard.io.writer import write_embedding_shard, write_scores_shard

__all__ = ["EmbeddingSet", "load_embedding_folder", "list_shards", "shard_path", "write_embedding_shard",
           "write_scores_shard"]
