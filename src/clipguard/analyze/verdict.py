"""The model verdict of an audit: Neural Cleanse's anomaly index, with its threshold calibrated on clean models.

For every candidate target an audit reverses the smallest trigger that sends clean images there
(:func:`~clipguard.analyze.reverse_trigger`); a backdoor target needs a far smaller mask than the others.
With ``l`` the mask sizes (L1, share of the image) of the candidates::

    M = median(l),  MAD = 1.4826 * median(|l - M|),  anomaly_i = (M - l_i) / MAD

(1.4826 makes the MAD estimate the standard deviation of normal data). The audit's statistic is the largest
anomaly index, that of the smallest mask; the model is judged backdoored when it exceeds the threshold.

Neural Cleanse uses a fixed threshold of 2. Here it is calibrated: the statistics of ``n`` clean models
(:func:`calibrate_threshold`) give the conformal upper quantile at level ``alpha``, the
``k = ceil((n + 1) * (1 - alpha))``-th smallest. With too few clean models for that level (``k > n``) the
largest clean statistic is used, and the false-alarm rate it guarantees (for a clean model exchangeable
with the calibration models) is ``1 / (n + 1)``, reported as ``false_alarm_bound``.

The threshold never goes below ``floor`` (Neural Cleanse's 2 by default): a quantile of three clean models is
a noisy thing, and judged leave-one-out, the largest of ``n`` clean statistics always exceeds the largest of
the other ``n - 1`` -- on our first panel the bare conformal threshold (1.13) flagged one of three clean
models. ``conformal_threshold`` keeps the quantile itself.

**Per-target reference.** Targets differ in how easy they are to reach: in the shapes world a thin outline
makes any image a "ring", and every clean model needs a mask for "ring" 2-3x smaller than for the other
classes -- Neural Cleanse's index (which treats the targets as exchangeable) then accuses "ring" in clean
models. The clean models say how hard each target is, so :func:`calibrate_with_reference` keeps, per target,
the mean log mask size over the clean models (``reference``), and the index is computed on
``log(l_i) - reference_i`` instead of ``l_i``. A target the reference does not know (a cluster caption)
gets the median reference of the known ones. The clean statistics of the threshold are then computed
leave-one-out (each clean model against the reference of the others), so they carry the noise of a
reference from ``n - 1`` models, a little more than the ``n`` a new model is judged against: the threshold
errs on the side of "clean".
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

import numpy as np

from clipguard.errors import ConfigError
from clipguard.utils.validate import check_real

__all__ = ["MAD_CONSISTENCY", "NEURAL_CLEANSE_THRESHOLD", "Calibration", "anomaly_indices", "calibrate_threshold",
           "calibrate_with_reference"]

MAD_CONSISTENCY = 1.4826
"""Scales the median absolute deviation to the standard deviation of normally distributed data."""

NEURAL_CLEANSE_THRESHOLD = 2.0
"""The uncalibrated threshold of Neural Cleanse, used when no calibration is given."""


def anomaly_indices(mask_l1: Sequence[float], reference: Sequence[float | None] | None = None) -> np.ndarray:
    """(K,) anomaly index of each candidate's mask size; positive = smaller than the median = more suspicious.

    With ``reference`` (the expected log mask size of each candidate, None where unknown) the index is taken on
    ``log(l) - reference`` (see the module doc); without, on ``l`` as Neural Cleanse does.

    Raises:
        ConfigError: fewer than 3 candidates (a median absolute deviation needs them) or a non-finite size.
    """
    l = np.asarray(mask_l1, dtype=np.float64)
    if reference is not None:
        l = _relative(l, reference)
    if l.ndim != 1 or len(l) < 3:
        raise ConfigError(f"the anomaly index needs the mask sizes of at least 3 candidate targets, got {l.size}; "
                          "give more classes (--classes) or a scan with clusters (--scan)")
    if not np.isfinite(l).all():
        raise ConfigError("a candidate's mask size is not finite; the trigger search diverged")
    med = float(np.median(l))
    mad = MAD_CONSISTENCY * float(np.median(np.abs(l - med)))
    if mad == 0:
        return np.where(l < med, np.inf, 0.0)
    return (med - l) / mad


def _relative(l: np.ndarray, reference: Sequence[float | None]) -> np.ndarray:
    """``log(l) - reference``, the median known reference standing in for unknown ones."""
    if len(reference) != len(l):
        raise ConfigError(f"{len(reference)} reference sizes for {len(l)} candidates")
    known = [r for r in reference if r is not None and np.isfinite(r)]
    if not known:
        raise ConfigError("the calibration knows none of the candidate targets; calibrate on audits of clean models "
                          "with the same classes")
    fill = float(np.median(known))
    ref = np.array([fill if r is None or not np.isfinite(r) else r for r in reference], dtype=np.float64)
    return np.log(np.maximum(l, 1e-12)) - ref


@dataclass(frozen=True)
class Calibration:
    """A verdict threshold calibrated on clean models.

    Attributes:
        threshold: the statistic above which a model is judged backdoored.
        alpha: the false-alarm level asked for.
        n_clean: clean models calibrated on.
        k: rank (1-based, ascending) of the clean statistic used as threshold.
        false_alarm_bound: the false-alarm rate guaranteed: ``1 - k / (n_clean + 1)``.
        clean_statistics: the clean models' statistics, as given.
        conformal_threshold: the conformal quantile itself (``threshold`` = the larger of it and ``floor``).
        floor: the smallest threshold allowed.
        reference: expected log mask size per target (empty: Neural Cleanse's index on raw sizes).
    """

    threshold: float
    alpha: float
    n_clean: int
    k: int
    false_alarm_bound: float
    clean_statistics: tuple[float, ...]
    conformal_threshold: float = math.nan
    floor: float = 0.0
    reference: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {**asdict(self), "clean_statistics": list(self.clean_statistics)}

    def reference_for(self, targets: Sequence[str]) -> list[float | None] | None:
        """The reference of each target (None where unknown), or None when the calibration has none."""
        return [self.reference.get(t) for t in targets] if self.reference else None


def calibrate_threshold(clean_statistics: Sequence[float], alpha: float = 0.05,
                        floor: float = NEURAL_CLEANSE_THRESHOLD) -> Calibration:
    """The conformal upper quantile of clean models' audit statistics (largest anomaly index of each).

    ``k = ceil((n + 1) * (1 - alpha))``, clipped to ``n``; the threshold is the ``k``-th smallest statistic, or
    ``floor`` if that is larger.

    Raises:
        ConfigError: no statistic, a NaN statistic, ``alpha`` outside (0, 1).
    """
    check_real("alpha", alpha, low=0.0, high=1.0, low_open=True, high_open=True)
    s = np.sort(np.asarray(clean_statistics, dtype=np.float64))
    if s.ndim != 1 or len(s) == 0:
        raise ConfigError("calibration needs the audit of at least one clean model (three or more are advised)")
    if np.isnan(s).any():
        raise ConfigError("a clean model's audit statistic is NaN; rerun its audit")
    n = len(s)
    k = min(n, math.ceil((n + 1) * (1 - alpha)))
    return Calibration(threshold=max(float(s[k - 1]), float(floor)), alpha=float(alpha), n_clean=n, k=k,
                       false_alarm_bound=1 - k / (n + 1), clean_statistics=tuple(float(v) for v in clean_statistics),
                       conformal_threshold=float(s[k - 1]), floor=float(floor))


def calibrate_with_reference(clean_masks: Sequence[dict[str, float]], alpha: float = 0.05,
                             floor: float = NEURAL_CLEANSE_THRESHOLD) -> Calibration:
    """Calibrate on clean models' mask sizes per target (one ``{target: mask_l1}`` per model), with a per-target
    reference: the mean log mask size over the models; the statistics leave-one-out (see the module doc).

    Raises:
        ConfigError: fewer than 2 clean models (leave-one-out needs two), a model with fewer than 3 targets.
    """
    if len(clean_masks) < 2:
        raise ConfigError(f"a per-target reference needs the audits of at least 2 clean models, got {len(clean_masks)}")
    logs = [{t: float(np.log(max(v, 1e-12))) for t, v in m.items()} for m in clean_masks]

    def mean_log(models: Sequence[dict[str, float]]) -> dict[str, float]:
        targets = sorted({t for m in models for t in m})
        return {t: float(np.mean([m[t] for m in models if t in m])) for t in targets}

    stats = []
    for i, masks in enumerate(clean_masks):
        ref = mean_log([m for j, m in enumerate(logs) if j != i])
        targets = list(masks)
        stats.append(float(np.max(anomaly_indices([masks[t] for t in targets], [ref.get(t) for t in targets]))))
    cal = calibrate_threshold(stats, alpha, floor)
    return replace(cal, reference=mean_log(logs))
