"""``learning_speed``: how early training fitted each pair, from the training-dynamics record.

``clipguard train --record-epochs N`` writes ``MODEL/dynamics.parquet``; :func:`speeds_of_rows`
reads it (:func:`~clipguard.train.read_dynamics`), turns it into one learning speed per pair
(:func:`~clipguard.train.learning_speed`: the mean within-epoch percentile rank of the pair's
image-caption cosine, in (0, 1], higher = fitted earlier) and joins it BY ID to the scanned rows.
The detector then scores that speed. Rows without a record get NaN: ranked least suspicious, and
counted (``info_``, ``run.json``), never dropped.

Which direction is suspicious depends on the attack: poison that is easy to fit (a trigger tied to
a consistent caption) is learned faster, but measured on the shapes world, dirty-label poison (an
image whose content contradicts its caption) is fitted LATER (AUROC of the raw speed 0.11-0.45).
Hence the default ``direction="two-sided"``.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from clipguard.detect.detectors.registry import DETECTORS
from clipguard.detect.detectors.records import RecordDetector, as_values, join_record, two_sided
from clipguard.utils.validate import check_choice

__all__ = ["DIRECTIONS", "LearningSpeed", "as_speeds", "speed_scores", "speeds_of_rows"]

DIRECTIONS = ("two-sided", "fast", "slow")
"""``direction`` of :class:`LearningSpeed`: ``"two-sided"`` (|robust z| of the speed: fitted
unusually early OR late), ``"fast"`` (the speed itself) or ``"slow"`` (``1 - speed``)."""

_WHAT = "a learning speed per sample (dynamics=, see Scan.with_dynamics)"


def as_speeds(dynamics: Any, n: int | None = None) -> np.ndarray:
    """``dynamics`` as a (N,) float64 array of learning speeds, NaN where a row has no record.

    Raises:
        ConfigError: not 1-D, not ``n`` long (when given), or holding +-inf.
    """
    return as_values(dynamics, n, "the learning speeds (dynamics)")


def speed_scores(speed: np.ndarray, direction: str = "two-sided") -> np.ndarray:
    """Suspicion scores of learning speeds; NaN (no record) stays NaN.

    Args:
        speed: (N,) learning speeds (:func:`~clipguard.train.learning_speed`, in (0, 1]), NaN
            where a row has no record.
        direction: one of :data:`DIRECTIONS`. ``"two-sided"``: ``|robust_z(speed)|`` over the rows
            that have a record (:func:`~clipguard.detect.neighbours.stats.robust_z`: median and
            1.4826 * MAD); ``"fast"``: ``speed``; ``"slow"``: ``1 - speed``.

    Returns:
        (N,) float64, higher = more suspicious; NaN where ``speed`` is NaN.
    """
    check_choice("direction of learning_speed", direction, DIRECTIONS)
    s = as_speeds(speed)
    if direction == "two-sided":
        return two_sided(s)
    out = np.full_like(s, np.nan)
    has = ~np.isnan(s)
    out[has] = s[has] if direction == "fast" else 1.0 - s[has]
    return out


def speeds_of_rows(record: str | os.PathLike | pd.DataFrame, ids: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """The learning speed of every scanned row, joined to the training-dynamics record by id:
    :func:`~clipguard.detect.detectors.records.join_record` of kind ``"dynamics"``.

    Args:
        record: a model folder trained with ``--record-epochs``, its ``dynamics.parquet``, or a
            record frame (columns ``id``, ``epoch``, ``cosine``: :func:`~clipguard.train.read_dynamics`).
        ids: (N,) the scanned rows' sample ids; ids are compared as strings (the record stores the
            manifest ids as strings).

    Returns:
        ``(speed, info)``: (N,) float64 learning speeds in (0, 1], NaN where a row's id is not in
        the record; ``info`` = ``{"source", "n_record_ids", "n_record_ids_unmatched",
        "n_rows", "n_rows_without_record"}`` (what is reported in ``run.json``).

    Raises:
        ConfigError: no record or a malformed one, or not one id of the record is among ``ids``.
    """
    return join_record("dynamics", record, ids)


@DETECTORS.register("learning_speed")
class LearningSpeed(RecordDetector):
    """How early training fitted the pair (two-sided by default). Needs a training-dynamics record (--dynamics).

    Args:
        direction: one of :data:`DIRECTIONS`: ``"two-sided"`` (default; |robust z| of the speed),
            ``"fast"`` (higher = learned faster) or ``"slow"`` (``1 - speed``: higher = learned
            later, what dirty-label poison showed on the shapes world).

    The input is one learning speed per sample (``dynamics=``, (n,) float, NaN = no record),
    not the embeddings: ``X`` is accepted for a uniform API and ignored. ``fit`` learns the
    median and scale of the reference speeds (used by ``"two-sided"``); ``fit_score`` scores a set
    against itself. NaN speeds score NaN (ranked least suspicious). In a scan it runs whenever a
    record is given (``Scan.with_dynamics``, ``clipguard scan --dynamics MODEL_DIR``) and reports in
    ``info_`` how many rows had none. Not a kNN detector: the reference mode does not change it.

    Fitted attributes:
        center_, scale_: median and robust scale of the reference speeds that have a record.
        n_reference_: how many reference speeds had a record.

    Example:
        >>> import numpy as np
        >>> LearningSpeed(direction="slow").fit_score(dynamics=np.array([0.25, 1.0, np.nan]))
        array([0.75, 0.  ,  nan])
    """

    requires = frozenset({"dynamics"})
    record, what, directions = "dynamics", _WHAT, DIRECTIONS
    fit_hint = "fit(dynamics=...)"

    def __init__(self, *, direction: str = "two-sided") -> None:
        self.direction = direction

    def fit(self, X: Any = None, *, text: Any = None, captions: Any = None,
            dynamics: np.ndarray | None = None) -> "LearningSpeed":
        """Learn the median and scale of the reference speeds ``dynamics`` (n_ref,); X is ignored."""
        return self._fit_values(dynamics)

    def score_samples(self, X: Any = None, *, text: Any = None, captions: Any = None,
                      dynamics: np.ndarray | None = None) -> np.ndarray:
        """(n_q,) float64 scores of new speeds ``dynamics`` against the fitted reference's median and
        scale (``"two-sided"``); NaN where a speed is NaN. Higher = more suspicious."""
        return self._score_new(dynamics)

    def fit_score(self, X: Any = None, *, text: Any = None, captions: Any = None,
                  dynamics: np.ndarray | None = None) -> np.ndarray:
        """Fit on the speeds ``dynamics`` (n,) and score them: :func:`speed_scores`."""
        self.fit(X, dynamics=dynamics)
        return speed_scores(dynamics, self.direction)

    def score_values(self, values: np.ndarray) -> np.ndarray:  # noqa: D102
        return speed_scores(values, self.direction)
