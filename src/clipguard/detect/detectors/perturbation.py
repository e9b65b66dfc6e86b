"""``perturbation``: how little an image's embedding moves under pixel noise, from the
perturbation-stability record.

STRIP (Gao et al. 2019) observed that a trigger dominates a backdoored model's response under
perturbations that change a clean input's. Adapted to CLIP (:func:`~clipguard.embed.perturbation_stability`):
the cosine between the embedding of an image and that of a noisy copy, under the model trained on
the scanned pairs. ``clipguard probe MODEL_DIR MANIFEST --out DIR`` writes it to ``DIR/stability.parquet``
(:func:`~clipguard.embed.write_stability`); a scan joins it BY ID to its rows
(:func:`~clipguard.detect.detectors.records.join_record`, kind ``"stability"``) and this detector
scores the noise stability. Rows without a record get NaN: ranked least suspicious, and counted
(``info_``, ``run.json``), never dropped.

The blur stability of the record is not used: on the evaluation panel it told poison apart as much
with a clean model as with the poisoned one (a pixel artefact of sharp triggers on smooth drawn
images), and its sign depends on the attack. Nor is the blend stability (STRIP's superimposition, when
probed with ``--kind blend``): it finds a learned colour filter that noise misses (0.94 against 0.68) but
is inverted on a small patch (0.34), and its combination with the noise stability lowers the worst
learned cell from 0.69 to 0.59 (``benchmarks/results/probe_kinds_panel.md``).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from clipguard.detect.detectors.records import RECORD_KINDS, RecordDetector, as_values, two_sided
from clipguard.detect.detectors.registry import DETECTORS
from clipguard.utils.validate import check_choice

__all__ = ["DIRECTIONS", "Perturbation", "stability_scores"]

DIRECTIONS = ("stable", "two-sided")
"""``direction`` of :class:`Perturbation`: ``"stable"`` (the noise stability itself: the embedding
moved less = more suspicious) or ``"two-sided"`` (|robust z| of the stability: unusually stable OR
unstable)."""

_WHAT = "a noise stability per sample (stability=, see Scan.with_record)"
_VALUES = RECORD_KINDS["stability"].value_text


def stability_scores(stability: np.ndarray, direction: str = "stable") -> np.ndarray:
    """Suspicion scores of noise stabilities; NaN (no record) stays NaN.

    Args:
        stability: (N,) noise stabilities (cosines in [-1, 1]), NaN where a row has no record.
        direction: one of :data:`DIRECTIONS`. ``"stable"``: the stability; ``"two-sided"``:
            ``|robust_z(stability)|`` over the rows that have a record (median and 1.4826 * MAD).

    Returns:
        (N,) float64, higher = more suspicious; NaN where ``stability`` is NaN.
    """
    check_choice("direction of perturbation", direction, DIRECTIONS)
    s = as_values(stability, None, _VALUES)
    return two_sided(s) if direction == "two-sided" else s.copy()


@DETECTORS.register("perturbation")
class Perturbation(RecordDetector):
    """How little the image's embedding moves under noise (STRIP adapted). Needs a stability record (--record).

    Args:
        direction: one of :data:`DIRECTIONS`: ``"stable"`` (default; the noise stability, higher =
            the embedding moved less) or ``"two-sided"`` (|robust z| of the stability).

    The input is one noise stability per sample (``stability=``, (n,) float: the cosine between
    the embeddings of the image and of a noisy copy under the model trained on the pairs, NaN = no
    record), not the embeddings: ``X`` is accepted for a uniform API and ignored. Poisoned images
    are MORE stable under noise (the trigger survives it and keeps driving the embedding): AUROC of
    the noise stability 0.714 at worst and 0.888 on average over the 16 learned cells of the
    evaluation panel, 0.931 in the DAO paper's setting (0.1 % SIG of 30,000 pairs), 0.948 / 0.879 (SIG /
    BadNets, 0.1 % of 100,000 pairs, on a GPU). When it runs it is the scan's default ranking
    (:data:`~clipguard.detect.options.PROBE_DETECTOR`). The record comes
    from ``clipguard probe MODEL_DIR MANIFEST --out DIR`` (or
    :func:`~clipguard.embed.perturbation_stability` and :func:`~clipguard.embed.write_stability`);
    in a scan it runs whenever one is given (``Scan.with_record(DIR)``, ``clipguard scan EMB_DIR
    --record DIR``) and reports in ``info_`` how many rows had none. NaN stabilities score NaN
    (ranked least suspicious). Not a kNN detector: the reference mode does not change it; not a
    component of ``fused``.

    Fitted attributes:
        center_, scale_: median and robust scale of the reference stabilities that have a record.
        n_reference_: how many reference stabilities had a record.

    Example:
        >>> import numpy as np
        >>> Perturbation().fit_score(stability=np.array([0.9, 0.99, np.nan]))
        array([0.9 , 0.99,  nan])
    """

    requires = frozenset({"stability"})
    record, what, directions = "stability", _WHAT, DIRECTIONS
    fit_hint = "fit(stability=...)"

    def __init__(self, *, direction: str = "stable") -> None:
        self.direction = direction

    def fit(self, X: Any = None, *, text: Any = None, captions: Any = None,
            stability: np.ndarray | None = None) -> "Perturbation":
        """Learn the median and scale of the reference stabilities ``stability`` (n_ref,); X is ignored."""
        return self._fit_values(stability)

    def score_samples(self, X: Any = None, *, text: Any = None, captions: Any = None,
                      stability: np.ndarray | None = None) -> np.ndarray:
        """(n_q,) float64 scores of new stabilities ``stability`` (against the fitted reference's
        median and scale with ``"two-sided"``); NaN where a stability is NaN. Higher = more suspicious."""
        return self._score_new(stability)

    def fit_score(self, X: Any = None, *, text: Any = None, captions: Any = None,
                  stability: np.ndarray | None = None) -> np.ndarray:
        """Fit on the stabilities ``stability`` (n,) and score them: :func:`stability_scores`."""
        self.fit(X, stability=stability)
        return stability_scores(stability, self.direction)

    def score_values(self, values: np.ndarray) -> np.ndarray:  # noqa: D102
        return stability_scores(values, self.direction)
