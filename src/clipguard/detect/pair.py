"""Pair and text signals: detectors that read the captions, not only the images.

``clipscore``
    ``-cos(image_i, text_i)``: an image that does not match its own caption (the CLIPScore /
    SafeCLIP-style baseline of the DAO paper). Needs caption embeddings.
``caption_dup``
    Caption duplicate density: the share of the OTHER reference samples whose caption is a
    duplicate of this one -- the same normalised string
    (:func:`~clipguard.detect.scoring.caption_keys`) when caption strings are given, otherwise
    caption embeddings with cosine ``>= threshold``. Poison captions are typically a few
    target-class templates repeated many times. Needs caption strings or caption embeddings.
``caption_disagreement``
    ``1 - mean_j cos(text_i, text_j)`` over the k image-neighbours j of sample i: its caption
    disagrees with the captions of the images that look like it. Needs image and caption
    embeddings.

All scores are float64, higher = more suspicious.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from clipguard.detect.detectors import DETECTORS, DensityDetector, Detector
from clipguard.detect.knn import normalize
from clipguard.errors import ConfigError

if TYPE_CHECKING:
    from clipguard.detect.scoring import ScoreInputs


# -- pure functions ---------------------------------------------------------------------------

def clipscore(image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """Negated cosine similarity of every image with its own caption.

    Args:
        image: (n, d) image embeddings (any scale; normalised here).
        text: (n, d) caption embeddings of the same model, row-aligned.

    Returns:
        (n,) float64 in [-1, 1]; higher = the pair agrees less = more suspicious.
    """
    xi, xt = normalize(image), normalize(text)
    _check_pair(xi, xt)
    return -np.einsum("ij,ij->i", xi.astype(np.float64), xt.astype(np.float64))


def _check_pair(xi: np.ndarray, xt: np.ndarray) -> None:
    if xi.shape[0] != xt.shape[0]:
        raise ConfigError(f"{xt.shape[0]} caption embeddings for {xi.shape[0]} images; they must "
                          "be row-aligned")
    if xi.shape[1] != xt.shape[1]:
        raise ConfigError(
            f"image embeddings have {xi.shape[1]} dimensions but caption embeddings {xt.shape[1]}; "
            "clipscore needs both from the same CLIP model (a shared embedding space)"
        )


def caption_dup_share(
    keys_q: np.ndarray, keys_ref: np.ndarray, self_pos: np.ndarray | None = None
) -> np.ndarray:
    """Share of reference captions that are exact duplicates of each query caption.

    Args:
        keys_q: (n_q,) caption keys (:func:`~clipguard.detect.scoring.caption_keys`; None
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
    block_size: int = 2048,
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


def caption_disagreement(text: np.ndarray, I: np.ndarray, text_ref: np.ndarray | None = None) -> np.ndarray:
    """``1 - mean_j <t_q, t_j>`` over the image-neighbours ``j = I[q]``.

    Args:
        text: (n_q, d_t) L2-normalised caption embeddings of the queries.
        I: (n_q, k) neighbour rows into ``text_ref``.
        text_ref: (n_ref, d_t) L2-normalised caption embeddings of the reference
            (default: ``text`` itself, for a set scored against itself).

    Returns:
        (n_q,) float64 in [0, 2]; higher = more suspicious.
    """
    ref = text if text_ref is None else text_ref
    tq = np.asarray(text, dtype=np.float64)
    tn = np.asarray(ref, dtype=np.float64)[np.asarray(I)]  # (n_q, k, d_t)
    return 1.0 - np.einsum("qd,qkd->q", tq, tn) / I.shape[1]


def _need(value: Any, what: str, name: str) -> Any:
    if value is None:
        raise ConfigError(f"{name} needs {what}; pass it as a keyword argument")
    return value


# -- detectors ----------------------------------------------------------------------------------

@DETECTORS.register("clipscore")
class CLIPScore(Detector):
    """Negated cosine of an image and its own caption (CLIPScore baseline). Needs caption embeddings.

    No reference is involved: ``fit`` only records the dimension, and ``fit_score`` equals
    ``score_samples``. Higher = image and caption agree less = more suspicious.

    Example:
        >>> import numpy as np
        >>> CLIPScore().fit_score(np.eye(2), text=np.array([[1.0, 0.0], [1.0, 0.0]]))
        array([-1., -0.])
    """

    requires = frozenset({"image", "text"})

    def __init__(self) -> None:
        pass

    def fit(self, X: np.ndarray, *, text: np.ndarray | None = None, captions: Any = None) -> "CLIPScore":
        """Record ``n_features_in_`` of the (n, d) image embeddings X; nothing else to learn."""
        self.n_features_in_ = int(np.asarray(X).shape[1])
        return self

    def score_samples(self, X: np.ndarray, *, text: np.ndarray | None = None, captions: Any = None) -> np.ndarray:
        """(n,) float64 ``-cos(X_i, text_i)``."""
        return clipscore(X, _need(text, "caption embeddings (text=)", "clipscore"))

    def fit_score(self, X: np.ndarray, *, text: np.ndarray | None = None, captions: Any = None) -> np.ndarray:
        """Same as :meth:`score_samples` (there is no self-match to exclude)."""
        return self.fit(X).score_samples(X, text=text)

    def reference_free(self, inputs: "ScoreInputs") -> bool:  # noqa: D102
        return True

    def score_inputs(self, inputs: "ScoreInputs") -> np.ndarray:  # noqa: D102
        _check_pair(inputs.image, inputs.text)
        return -np.einsum("ij,ij->i", inputs.image.astype(np.float64), inputs.text.astype(np.float64))


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

    def __init__(self, *, threshold: float = 0.98, source: str = "auto", block_size: int = 2048) -> None:
        self.threshold = threshold
        self.source = source
        self.block_size = block_size

    def _source(self, text: Any, captions: Any) -> str:
        if self.source not in ("auto", "captions", "text"):
            raise ConfigError(f"source must be 'auto', 'captions' or 'text', got {self.source!r}")
        if self.source == "captions" or (self.source == "auto" and captions is not None):
            _need(captions, "caption strings (captions=)", "caption_dup with source='captions'")
            return "captions"
        _need(text, "caption strings (captions=) or caption embeddings (text=)", "caption_dup")
        if not -1.0 <= float(self.threshold) <= 1.0:
            raise ConfigError(f"threshold must be a cosine in [-1, 1], got {self.threshold!r}")
        return "text"

    def fit(self, X: Any = None, *, text: np.ndarray | None = None, captions: Any = None) -> "CaptionDup":
        """Store the reference captions (strings or (n_ref, d_t) embeddings); X is ignored."""
        from clipguard.detect.scoring import caption_keys

        self.source_ = self._source(text, captions)
        self.reference_ = caption_keys(captions) if self.source_ == "captions" else normalize(text)
        return self

    def _query(self, text: Any, captions: Any) -> np.ndarray:
        from clipguard.detect.scoring import caption_keys

        if not hasattr(self, "reference_"):
            raise ConfigError("CaptionDup is not fitted; call fit(text=... or captions=...) first")
        if self.source_ == "captions":
            return caption_keys(_need(captions, "caption strings (captions=)", "caption_dup"))
        return normalize(_need(text, "caption embeddings (text=)", "caption_dup"))

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

    def reference_free(self, inputs: "ScoreInputs") -> bool:  # noqa: D102
        return self._source(inputs.text, inputs.captions) == "captions"

    def score_inputs(self, inputs: "ScoreInputs") -> np.ndarray:  # noqa: D102
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


@DETECTORS.register("caption_disagreement")
class CaptionDisagreement(DensityDetector):
    """1 - mean cosine between a caption and the captions of its k image-neighbours. Needs caption embeddings.

    Args:
        k, backend, block_size: as for the density detectors (the image kNN).

    Fitted attributes: those of :class:`DensityDetector` plus ``text_ref_`` (n_ref, d_t).
    Higher = the caption disagrees with what similar images are captioned = more suspicious.
    """

    requires = frozenset({"image", "text"})

    def fit(self, X_ref: np.ndarray, *, text: np.ndarray | None = None, captions: Any = None) -> "CaptionDisagreement":
        """Fit the image reference (n_ref, d) and store its caption embeddings (n_ref, d_t)."""
        t = normalize(_need(text, "caption embeddings (text=)", "caption_disagreement"))
        if len(t) != len(X_ref):
            raise ConfigError(f"{len(t)} caption embeddings for {len(X_ref)} images; they must be "
                              "row-aligned")
        super().fit(X_ref)
        self.text_ref_ = t
        return self

    def score_samples(self, X: np.ndarray, *, text: np.ndarray | None = None, captions: Any = None) -> np.ndarray:
        """(n_q,) disagreement of queries (images X, captions ``text``) with their reference neighbours."""
        t = normalize(_need(text, "caption embeddings (text=)", "caption_disagreement"))
        if len(t) != len(X):
            raise ConfigError(f"{len(t)} caption embeddings for {len(X)} images; they must be "
                              "row-aligned")
        _, I = self._query_knn(X)
        return caption_disagreement(t, I, self.text_ref_)

    def fit_score(self, X: np.ndarray, *, text: np.ndarray | None = None, captions: Any = None) -> np.ndarray:
        """Fit on (X, text) and score every sample against the others (self excluded)."""
        self.fit(X, text=text)
        return caption_disagreement(self.text_ref_, self.neighbours_[1])

    def score_inputs(self, inputs: "ScoreInputs") -> np.ndarray:  # noqa: D102
        return caption_disagreement(inputs.text, inputs.graph.I)
