"""``clipscore``: ``-cos(image_i, text_i)``, an image that does not match its own caption (the
CLIPScore / SafeCLIP-style baseline of the DAO paper). Needs caption embeddings."""
from __future__ import annotations

from typing import Any

import numpy as np

from clipguard.detect.detectors.base import Detector, ScoreInputs, require_input
from clipguard.detect.detectors.registry import DETECTORS
from clipguard.detect.neighbours.normalize import normalize
from clipguard.errors import ConfigError

__all__ = ["CLIPScore", "clipscore"]


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
    row_local = True

    def __init__(self) -> None:
        pass

    def fit(self, X: np.ndarray, *, text: np.ndarray | None = None, captions: Any = None) -> "CLIPScore":
        """Record ``n_features_in_`` of the (n, d) image embeddings X; nothing else to learn."""
        self.n_features_in_ = int(np.asarray(X).shape[1])
        return self

    def score_samples(self, X: np.ndarray, *, text: np.ndarray | None = None, captions: Any = None) -> np.ndarray:
        """(n,) float64 ``-cos(X_i, text_i)``."""
        return clipscore(X, require_input(text, "caption embeddings (text=)", "clipscore"))

    def fit_score(self, X: np.ndarray, *, text: np.ndarray | None = None, captions: Any = None) -> np.ndarray:
        """Same as :meth:`score_samples` (there is no self-match to exclude)."""
        return self.fit(X).score_samples(X, text=text)

    def reference_free(self, inputs: ScoreInputs) -> bool:  # noqa: D102
        return True

    def score_draw(self, inputs: ScoreInputs) -> np.ndarray:  # noqa: D102
        _check_pair(inputs.image, inputs.text)
        return -np.einsum("ij,ij->i", inputs.image.astype(np.float64), inputs.text.astype(np.float64))
