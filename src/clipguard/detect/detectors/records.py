"""Per-row records joined by id: the on-request inputs of a scan that no embedding folder holds.

A *record* is a parquet table with an ``id`` column written next to a model by another command; a
scan joins it to its rows BY ID and hands one value per row to the detector that reads it:

================  =====================  ===========================================  ==================
input name        file in a folder       written by                                   detector
================  =====================  ===========================================  ==================
``"dynamics"``    ``dynamics.parquet``   ``clipguard train --record-epochs N``        ``learning_speed``
``"stability"``   ``stability.parquet``  ``clipguard probe MODEL_DIR MANIFEST --out``  ``perturbation``
================  =====================  ===========================================  ==================

:data:`RECORD_KINDS` describes each kind (:class:`RecordKind`), :func:`record_kind_of` tells the kind
of a folder or parquet file, and :func:`join_record` makes the (N,) values of the scanned rows (NaN
where a row has no record: its detector scores it NaN, ranked least suspicious; counted, never
dropped). The helpers :func:`as_values`, :func:`two_sided` and :func:`two_sided_against` are shared
by the detectors of records.

Example::

    from clipguard.detect.detectors.records import join_record, record_kind_of

    kind = record_kind_of("probe")                     # "stability": probe/ holds stability.parquet
    values, info = join_record(kind, "probe", ids)     # (N,) float64, NaN = no record; info for run.json
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from clipguard.detect.detectors.base import Detector, ScoreInputs, check_is_fitted, require_input
from clipguard.detect.neighbours.stats import robust_center_scale, robust_z
from clipguard.embed.stability import STABILITY_FILE, read_stability
from clipguard.errors import ConfigError
from clipguard.train.dynamics import DYNAMICS_FILE, learning_speed, read_dynamics
from clipguard.utils.io import file_in
from clipguard.utils.validate import check_choice

__all__ = ["RecordKind", "RECORD_KINDS", "record_kind_of", "record_sources", "join_record", "noise_stability",
           "as_values", "as_records", "two_sided", "two_sided_against", "RecordDetector"]

log = logging.getLogger("clipguard")


def noise_stability(frame: pd.DataFrame) -> pd.Series:
    """The ``noise_stability`` column of a perturbation-stability record
    (:func:`~clipguard.embed.read_stability`) as a float Series indexed by ``id`` (str).

    Raises:
        ConfigError: the frame has no ``id`` or no ``noise_stability`` column (a record probed with
            blur only), is empty, or repeats an id.
    """
    missing = [c for c in ("id", "noise_stability") if c not in frame.columns]
    if missing:
        raise ConfigError(f"the perturbation-stability record has no {' or '.join(missing)} column (columns: "
                          f"{', '.join(map(str, frame.columns))}); the detector "
                          "perturbation reads the stability under noise: probe with the noise perturbation "
                          "(`clipguard probe MODEL_DIR MANIFEST --out DIR`, perturbation_stability(kinds=(\"noise\",)))")
    if frame.empty:
        raise ConfigError("the perturbation-stability record is empty; probe the scanned pairs with "
                          "`clipguard probe MODEL_DIR MANIFEST --out DIR`")
    ids = frame["id"].astype(str)
    if ids.duplicated().any():
        raise ConfigError(f"the perturbation-stability record repeats the id {ids[ids.duplicated()].iloc[0]!r}; "
                          "one row per pair is expected (probe a manifest with unique ids)")
    return pd.Series(frame["noise_stability"].to_numpy(dtype=np.float64),
                     index=pd.Index(ids.to_numpy(), name="id"), name="noise_stability")


@dataclass(frozen=True)
class RecordKind:
    """One kind of per-row record.

    Attributes:
        input: the scan input it provides (an :data:`~clipguard.detect.engine.ON_REQUEST_INPUTS` name).
        file: its file name in a folder.
        description: what it is, for messages ("the training-dynamics record").
        detector: the detector that reads it, for messages.
        value_text: what its per-row values are, for messages ("the learning speeds (dynamics)").
        read: ``folder or parquet path -> frame`` (ConfigError when absent or malformed).
        values: ``frame -> per-id Series`` of the value the detector reads (index: ``id`` as str).
    """

    input: str
    file: str
    description: str
    detector: str
    value_text: str
    read: Callable[[str | os.PathLike], pd.DataFrame]
    values: Callable[[pd.DataFrame], pd.Series]

    def path_of(self, source: str | os.PathLike) -> Path:
        """The parquet file that :attr:`read` reads for ``source`` (a folder or the file itself)."""
        return file_in(source, self.file)


RECORD_KINDS: dict[str, RecordKind] = {
    "dynamics": RecordKind("dynamics", DYNAMICS_FILE, "the training-dynamics record", "learning_speed",
                           "the learning speeds (dynamics)", read_dynamics, learning_speed),
    "stability": RecordKind("stability", STABILITY_FILE, "the perturbation-stability record", "perturbation",
                            "the noise stabilities (stability)", read_stability, noise_stability),
}
"""Every record kind by its input name."""

_HOW = ("a training-dynamics record (dynamics.parquet: `clipguard train ... --record-epochs N`) or a "
        "perturbation-stability record (stability.parquet: `clipguard probe MODEL_DIR MANIFEST --out DIR`)")


def _kind_of_columns(columns: Iterable[str], path: Path) -> str:
    cols = set(map(str, columns))
    dynamics = {"epoch", "cosine"} <= cols
    stability = any(c.endswith("_stability") for c in cols)
    if dynamics == stability:
        why = "both" if dynamics else "neither"
        raise ConfigError(f"{path}: its columns ({', '.join(sorted(cols))}) are {why} of {_HOW}")
    return "dynamics" if dynamics else "stability"


def record_kind_of(source: str | os.PathLike) -> str:
    """The kind (a key of :data:`RECORD_KINDS`) of the record in ``source``: a folder holding
    ``dynamics.parquet`` or ``stability.parquet``, or a parquet file (by its columns: ``epoch`` and
    ``cosine`` -> ``"dynamics"``, a ``*_stability`` column -> ``"stability"``).

    Raises:
        ConfigError: no such file or folder, a folder with neither file or with both (name the file),
            or a parquet file whose columns fit neither kind.
    """
    p = Path(source)
    if p.suffix == ".parquet":
        if not p.is_file():
            raise ConfigError(f"{p}: no such record file; give {_HOW}")
        return _kind_of_columns(pq.read_schema(p).names, p)
    found = [name for name, kind in RECORD_KINDS.items() if (p / kind.file).is_file()]
    if len(found) > 1:
        raise ConfigError(f"{p} holds {' and '.join(RECORD_KINDS[k].file for k in found)}; name the file of the "
                          f"record to join (e.g. {p / RECORD_KINDS[found[-1]].file})")
    if not found:
        raise ConfigError(f"{p}: no record there; give {_HOW}")
    return found[0]


def record_sources(dynamics: str | os.PathLike | None = None,
                   records: Sequence[str | os.PathLike] = ()) -> list[tuple[str, str | os.PathLike]]:
    """``[(kind, source)]`` of a scan's records: ``dynamics`` (kind ``"dynamics"``) and each of ``records``
    (kind inferred, :func:`record_kind_of`).

    Raises:
        ConfigError: a record that cannot be read (:func:`record_kind_of`), or two records of one kind.
    """
    if isinstance(records, (str, os.PathLike)):
        records = [records]
    out = ([("dynamics", dynamics)] if dynamics is not None else []) + [(record_kind_of(r), r) for r in records]
    seen: dict[str, Any] = {}
    for kind, source in out:
        if kind in seen:
            raise ConfigError(f"{RECORD_KINDS[kind].description} given twice ({seen[kind]} and {source}); "
                              "a scan joins one record of each kind")
        seen[kind] = source
    return out


def join_record(kind: str, record: str | os.PathLike | pd.DataFrame, ids: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """The value of every scanned row from a record of ``kind``, joined by id.

    Args:
        kind: a key of :data:`RECORD_KINDS` (``"dynamics"``, ``"stability"``).
        record: a folder holding the kind's file, the parquet file, or the record as a DataFrame
            (columns as its reader returns them).
        ids: (N,) the scanned rows' sample ids, compared as strings (records store the manifest ids
            as strings).

    Returns:
        ``(values, info)``: (N,) float64 values (:attr:`RecordKind.values`: the learning speed, the
        noise stability), NaN where a row's id is not in the record; ``info`` = ``{"source",
        "n_record_ids", "n_record_ids_unmatched", "n_rows", "n_rows_without_record"}`` (what
        ``run.json`` reports under the kind's name).

    Raises:
        ConfigError: an unknown kind, no record or a malformed one, or not one id of the record is
            among ``ids``.
    """
    k = RECORD_KINDS[check_choice("record kind", kind, RECORD_KINDS)]
    if isinstance(record, pd.DataFrame):
        frame, source = record, k.description
    else:
        frame, source = k.read(record), str(k.path_of(record))
    if "id" in frame.columns:
        frame = frame.assign(id=frame["id"].astype(str))
    try:
        value = k.values(frame)
    except ConfigError as exc:
        if isinstance(record, pd.DataFrame):
            raise
        raise ConfigError(f"{source}: {exc}") from None
    keys = pd.Index(pd.Series(np.asarray(ids, dtype=object)).astype(str))
    matched = int(value.index.isin(keys).sum())
    if matched == 0:
        raise ConfigError(f"{source}: none of its {len(value)} ids matches an id of the scanned rows (record "
                          f"{value.index[0]!r}, data {keys[0] if len(keys) else None!r}); was the model trained on "
                          "this dataset?")
    aligned = value.reindex(keys).to_numpy(dtype=np.float64)
    info = {"source": source, "n_record_ids": int(len(value)), "n_record_ids_unmatched": int(len(value) - matched),
            "n_rows": int(len(keys)), "n_rows_without_record": int(np.isnan(aligned).sum())}
    if info["n_rows_without_record"] or info["n_record_ids_unmatched"]:
        log.warning("%s: %d of %d scanned rows have no record (%s scores them NaN, least suspicious); %d of its "
                    "%d ids match no scanned row", source, info["n_rows_without_record"], info["n_rows"],
                    k.detector, info["n_record_ids_unmatched"], info["n_record_ids"])
    return aligned, info


def as_values(values: Any, n: int | None = None, what: str = "the record values") -> np.ndarray:
    """``values`` as a (N,) float64 array, NaN where a row has no record; ``what`` names them in errors.

    Raises:
        ConfigError: not numbers, not 1-D, not ``n`` long (when given), or holding +-inf.
    """
    try:
        s = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be numbers, one per sample (NaN: no record)") from None
    if s.ndim != 1 or (n is not None and len(s) != n):
        want = f"({n},)" if n is not None else "(N,)"
        raise ConfigError(f"{what} have shape {s.shape} but must be {want}: one per scanned row, NaN where a "
                          "row has no record")
    if np.isinf(s).any():
        raise ConfigError(f"{what} hold {int(np.isinf(s).sum())} infinite value(s); use NaN for a row without a "
                          "record")
    return s


def as_records(records: Mapping[str, Any] | None, n: int | None = None) -> dict[str, np.ndarray]:
    """``{input name: (N,) float64 values}`` of ``records`` checked (:func:`as_values`); None values are
    left out.

    Raises:
        ConfigError: a name that is not a key of :data:`RECORD_KINDS`, or bad values.
    """
    out = {}
    for name, v in (records or {}).items():
        kind = RECORD_KINDS[check_choice("record input", name, RECORD_KINDS)]
        if v is not None:
            out[name] = as_values(v, n, kind.value_text)
    return out


def two_sided(values: np.ndarray) -> np.ndarray:
    """(N,) ``|robust z|`` of ``values`` over the rows that are not NaN
    (:func:`~clipguard.detect.neighbours.stats.robust_z`: median and 1.4826 * MAD); NaN stays NaN."""
    out = np.full_like(values, np.nan)
    has = ~np.isnan(values)
    out[has] = np.abs(robust_z(values[has]))
    return out


def two_sided_against(values: np.ndarray, center: float, scale: float) -> np.ndarray:
    """(N,) ``|values - center| / scale`` (a fitted reference's median and robust scale); zeros when the
    scale is 0; NaN stays NaN."""
    return np.abs(values - center) / scale if scale > 0 else np.where(np.isnan(values), values, 0.0)


class RecordDetector(Detector):
    """Base of the detectors of a per-row record (``learning_speed``, ``perturbation``): they read one value per
    sample (the record's input :attr:`record`; NaN = no record), not the embeddings.

    A subclass sets :attr:`record`, :attr:`what` (the input, for the missing-input error), :attr:`directions`
    (its ``direction`` choices, ``"two-sided"`` among them) and :meth:`score_values`; its ``fit`` /
    ``score_samples`` take the record under its input's keyword and call :meth:`_fit_values` /
    :meth:`_score_new`. ``fit`` learns the median and robust scale of the reference values (``center_``,
    ``scale_``, ``n_reference_``), which ``score_samples`` uses for ``"two-sided"``. In a scan the detector is
    reference-free and reports in ``info_`` how many rows had no record.
    """

    record: ClassVar[str] = ""
    what: ClassVar[str] = ""
    directions: ClassVar[tuple[str, ...]] = ("two-sided",)
    reads_embeddings = False
    direction: str

    def score_values(self, values: np.ndarray) -> np.ndarray:
        """(N,) scores of (N,) record values in this detector's ``direction``; NaN stays NaN."""
        raise NotImplementedError

    def _values(self, values: Any, n: int | None = None) -> np.ndarray:
        return as_values(require_input(values, self.what, self.name), n, RECORD_KINDS[self.record].value_text)

    def _fit_values(self, values: Any) -> "RecordDetector":
        check_choice(f"direction of {self.name}", self.direction, self.directions)
        s = self._values(values)
        finite = s[~np.isnan(s)]
        self.center_, self.scale_ = robust_center_scale(finite)
        self.n_reference_ = int(finite.size)
        return self

    def _score_new(self, values: Any) -> np.ndarray:
        check_is_fitted(self, "center_")
        s = self._values(values)
        if self.direction != "two-sided":
            return self.score_values(s)
        return two_sided_against(s, self.center_, self.scale_)

    def reference_free(self, inputs: ScoreInputs) -> bool:  # noqa: D102
        return True

    def score_draw(self, inputs: ScoreInputs) -> np.ndarray:  # noqa: D102
        s = self._values(inputs.records.get(self.record), len(inputs.image))
        n_missing = int(np.isnan(s).sum())
        self.info_ = {"direction": self.direction, "n_scored": int(len(s) - n_missing),
                      "n_rows_without_record": n_missing}
        return self.score_values(s)
