"""Embedding extraction in the clip-retrieval layout."""
from clipguard.embed.extract import EmbedResult, embed_dataset

__all__ = ["EmbedResult", "embed_dataset"]
