"""``caption_dup``: caption duplicate density, the share of the OTHER reference samples whose
caption is a duplicate of this one.

Duplicates are the same normalised string (:func:`caption_keys`) when caption strings are given,
otherwise caption embeddings with cosine ``>= threshold``. Poison captions are typically a few
target-class templates repeated many times. Needs caption strings or caption embeddings.
"""
from __future__ import annotations

import math
import re
import unicodedata
from typing import Any

import numpy as np

from clipguard.detect.detectors.base import Detector, ScoreInputs, check_is_fitted, require_input
from clipguard.detect.detectors.registry import DETECTORS
from clipguard.detect.neighbours.normalize import normalize
from clipguard.detect.options import DEFAULT_BLOCK_SIZE
from clipguard.errors import ConfigError

__all__ = ["CaptionDup", "caption_keys", "caption_dup_share", "text_dup_share"]


def caption_keys(captions: Any) -> np.ndarray:
    """Normalised caption strings for exact-duplicate matching.

    Unicode NFKC, case-folded, every run of non-alphanumeric characters replaced by one space,
    stripped: ``"A photo of a STAR."`` and ``"a photo  of a star"`` give the same key. Missing
    captions (None, NaN, or nothing left after normalisation) become None and match nothing.

    Returns:
        (n,) object array of str or None.
    """
    out = np.empty(len(captions), dtype=object)
    for i, c in enumerate(captions):
        if c is None or (isinstance(c, float) and math.isnan(c)):
            out[i] = None
            continue
        key = re.sub(r"[\W_]+", " ", unicodedata.normalize("NFKC", str(c)).casefold()).strip()
        out[i] = key or None
    return out


def caption_dup_share(
    keys_q: np.ndarray, keys_ref: np.ndarray, self_pos: np.ndarray | None = None
) -> np.ndarray:
    """Share of reference captions that are exact duplicates of each query caption.

    Args:
        keys_q: (n_q,) caption keys (:func:`caption_keys`; None
            matches nothing).
        keys_ref: (n_ref,) caption keys of the reference.
        self_pos: (n_q,) position of each query in the reference, -1 if it is not a member;
            a member is not counted as its own duplicate and is not in its own denominator.

    Returns:
        (n_q,) float64 in [0, 1]: ``#{j in ref, j != q : key_j == key_q} / #{j in ref, j != q}``.
    """
    import pandas as pd

    ref = pd.Series(keys_ref, dtype=object)
    counts = ref[ref.notna()].value_counts()
    q = pd.Series(keys_q, dtype=object)
    c = np.array(q.map(counts).fillna(0).to_numpy(np.float64), dtype=np.float64)  # writable copy
    denom = np.full(len(q), float(len(keys_ref)))
    if self_pos is not None:
        member = np.asarray(self_pos) >= 0
        c[member & q.notna().to_numpy()] -= 1
        denom[member] -= 1
    return np.divide(c, denom, out=np.zeros_like(c), where=denom > 0)


def text_dup_share(
    text_q: np.ndarray,
    text_ref: np.ndarray,
    threshold: float,
    self_pos: np.ndarray | None = None,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> np.ndarray:
    """Share of reference caption embeddings with cosine ``>= threshold`` to each query's.

    Args:
        text_q: (n_q, d) L2-normalised float32 caption embeddings.
        text_ref: (n_ref, d) L2-normalised float32 caption embeddings of the reference.
        threshold: cosine similarity from which two captions count as duplicates.
        self_pos: as in :func:`caption_dup_share` (members are excluded by index).
        block_size: tile edge of the blocked matmul (memory ``O(block_size**2)``).

    Returns:
        (n_q,) float64 in [0, 1].
    """
    import torch

    q_all = torch.from_numpy(np.ascontiguousarray(text_q, dtype=np.float32))
    b_all = torch.from_numpy(np.ascontiguousarray(text_ref, dtype=np.float32))
    nq, nb = q_all.shape[0], b_all.shape[0]
    pos = np.full(nq, -1, dtype=np.int64) if self_pos is None else np.asarray(self_pos, np.int64)
    counts = np.zeros(nq, dtype=np.float64)
    with torch.no_grad():
        for qs in range(0, nq, block_size):
            qe = min(qs + block_size, nq)
            p = pos[qs:qe]
            for bs in range(0, nb, block_size):
                be = min(bs + block_size, nb)
                s = q_all[qs:qe] @ b_all[bs:be].T
                rows = np.flatnonzero((p >= bs) & (p < be))
                if len(rows):
                    s[torch.from_numpy(rows), torch.from_numpy(p[rows] - bs)] = -torch.inf
                counts[qs:qe] += (s >= threshold).sum(dim=1).numpy()
    denom = np.full(nq, float(nb)) - (pos >= 0)
    return np.divide(counts, denom, out=np.zeros_like(counts), where=denom > 0)


@DETECTORS.register("caption_dup")
class CaptionDup(Detector):
    """Caption duplicate density: share of other samples with a duplicate caption. Needs captions or caption embeddings.

    Args:
        threshold: cosine from which two caption EMBEDDINGS are duplicates (default 0.98;
            only used when matching embeddings).
        source: ``"auto"`` (caption strings when given, else embeddings), ``"captions"``
            (exact normalised strings) or ``"text"`` (embeddings).
        block_size: tile edge of the embedding comparison.

    In a scan, caption strings are compared over the whole dataset (hashing, O(N)) whatever
    the reference mode; caption embeddings are compared with the reference set of the mode
    (all samples, the sample's batch, or the random reference: O(N*M) instead of O(N**2)).
    Higher = more duplicated = more suspicious.

    Example:
        >>> CaptionDup().fit_score(None, captions=["a star.", "A star", "a ring", None])
        array([0.33333333, 0.33333333, 0.        , 0.        ])
    """

    requires = frozenset({"captions|text"})
    reads_embeddings = False  # only the number of rows of the image embeddings
    fit_hint = "fit(text=... or captions=...)"

    def __init__(self, *, threshold: float = 0.98, source: str = "auto", block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        self.threshold = threshold
        self.source = source
        self.block_size = block_size

    def _source(self, text: Any, captions: Any) -> str:
        if self.source not in ("auto", "captions", "text"):
            raise ConfigError(f"source must be 'auto', 'captions' or 'text', got {self.source!r}")
        if self.source == "captions" or (self.source == "auto" and captions is not None):
            require_input(captions, "caption strings (captions=)", "caption_dup with source='captions'")
            return "captions"
        require_input(text, "caption strings (captions=) or caption embeddings (text=)", "caption_dup")
        if not -1.0 <= float(self.threshold) <= 1.0:
            raise ConfigError(f"threshold must be a cosine in [-1, 1], got {self.threshold!r}")
        return "text"

    def fit(self, X: Any = None, *, text: np.ndarray | None = None, captions: Any = None) -> "CaptionDup":
        """Store the reference captions (strings or (n_ref, d_t) embeddings); X is ignored."""
        self.source_ = self._source(text, captions)
        self.reference_ = caption_keys(captions) if self.source_ == "captions" else normalize(text)
        return self

    def _query(self, text: Any, captions: Any) -> np.ndarray:
        check_is_fitted(self, "reference_")
        if self.source_ == "captions":
            return caption_keys(require_input(captions, "caption strings (captions=)", "caption_dup"))
        return normalize(require_input(text, "caption embeddings (text=)", "caption_dup"))

    def _share(self, q: np.ndarray, ref: np.ndarray, self_pos: np.ndarray | None) -> np.ndarray:
        if self.source_ == "captions":
            return caption_dup_share(q, ref, self_pos)
        return text_dup_share(q, ref, float(self.threshold), self_pos, block_size=self.block_size)

    def score_samples(self, X: Any = None, *, text: np.ndarray | None = None, captions: Any = None) -> np.ndarray:
        """(n_q,) share of reference samples whose caption duplicates each query's (no self-exclusion)."""
        return self._share(self._query(text, captions), self.reference_, None)

    def fit_score(self, X: Any = None, *, text: np.ndarray | None = None, captions: Any = None) -> np.ndarray:
        """Fit on the set and score it against itself, each sample's own caption excluded."""
        self.fit(X, text=text, captions=captions)
        n = len(self.reference_)
        return self._share(self.reference_, self.reference_, np.arange(n))

    def reference_free(self, inputs: ScoreInputs) -> bool:  # noqa: D102
        return self._source(inputs.text, inputs.captions) == "captions"

    def score_draw(self, inputs: ScoreInputs) -> np.ndarray:  # noqa: D102
        self.source_ = self._source(inputs.text, inputs.captions)
        self.info_ = {"source": self.source_}
        n = len(inputs.image)
        if self.source_ == "captions":  # exact over the whole set: hashing costs O(N)
            return caption_dup_share(inputs.captions, inputs.captions, np.arange(n))
        data = inputs.text
        out = np.empty(n, dtype=np.float64)
        for q_rows, r_rows in inputs.graph.parts:
            pos = np.full(n, -1, dtype=np.int64)
            pos[r_rows] = np.arange(len(r_rows))
            out[q_rows] = self._share(data[q_rows], data[r_rows], pos[q_rows])
        return out
