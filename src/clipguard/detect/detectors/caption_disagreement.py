"""``caption_disagreement``: ``1 - mean_j cos(text_i, text_j)`` over the k image-neighbours j of
sample i -- its caption disagrees with the captions of the images that look like it. Needs image
and caption embeddings."""
from __future__ import annotations

from typing import Any

import numpy as np

from clipguard.detect.detectors.base import DensityDetector, ScoreInputs, require_input
from clipguard.detect.detectors.registry import DETECTORS
from clipguard.detect.neighbours.normalize import normalize
from clipguard.errors import ConfigError

__all__ = ["CaptionDisagreement", "caption_disagreement"]


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
        t = normalize(require_input(text, "caption embeddings (text=)", "caption_disagreement"))
        if len(t) != len(X_ref):
            raise ConfigError(f"{len(t)} caption embeddings for {len(X_ref)} images; they must be "
                              "row-aligned")
        super().fit(X_ref)
        self.text_ref_ = t
        return self

    def score_samples(self, X: np.ndarray, *, text: np.ndarray | None = None, captions: Any = None) -> np.ndarray:
        """(n_q,) disagreement of queries (images X, captions ``text``) with their reference neighbours."""
        t = normalize(require_input(text, "caption embeddings (text=)", "caption_disagreement"))
        if len(t) != len(X):
            raise ConfigError(f"{len(t)} caption embeddings for {len(X)} images; they must be "
                              "row-aligned")
        _, I = self._query_knn(X)
        return caption_disagreement(t, I, self.text_ref_)

    def fit_score(self, X: np.ndarray, *, text: np.ndarray | None = None, captions: Any = None) -> np.ndarray:
        """Fit on (X, text) and score every sample against the others (self excluded)."""
        self.fit(X, text=text)
        return caption_disagreement(self.text_ref_, self.neighbours_[1])

    def score_draw(self, inputs: ScoreInputs) -> np.ndarray:  # noqa: D102
        return caption_disagreement(inputs.text, inputs.graph.I)
