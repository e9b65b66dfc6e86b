"""The :class:`Scan` facade: one object to audit an embedding set for backdoor samples.

In the spirit of cleanlab's ``Datalab``: construct it on the data, call
:meth:`Scan.find_suspects`, then read :meth:`Scan.report` and :meth:`Scan.get_suspects`, and
:meth:`Scan.save` the results (the layout of :mod:`clipguard.detect.store`, which
:func:`~clipguard.detect.api.run_scan` writes too); :meth:`Scan.load` reads them back. The class
only delegates: the engine scores (:mod:`~clipguard.detect.engine`), ``results`` tabulates,
``report`` formats, ``store`` writes and reads.

Example:
    >>> import numpy as np
    >>> from clipguard.detect import Scan
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(500, 16))
    >>> x[:, 0] += 4                               # clean data: a cone around e_0 ...
    >>> x[:5, 0] -= 8                              # ... five samples point the other way
    >>> scan = Scan(x, ground_truth=np.arange(500) < 5).find_suspects(["kdist", "dao"], k=8)
    >>> sorted(scan.get_suspects("kdist").index)   # the top 1% by default
    [0, 1, 2, 3, 4]
    >>> print(scan.report())                       # doctest: +SKIP

A per-row record joined by id adds an input and the detector that reads it: a training-dynamics
record (``clipguard train --record-epochs N``) adds ``"dynamics"`` and ``learning_speed``, a
perturbation-stability record (``clipguard probe MODEL_DIR MANIFEST --out DIR``) adds ``"stability"``
and ``perturbation``::

    scan = Scan.from_folder("emb").with_dynamics("model").find_suspects()   # + learning_speed
    scan = Scan.from_folder("emb").with_record("probe").find_suspects()     # + perturbation
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from clipguard.detect.config import ScanConfig
from clipguard.detect.detectors.records import RECORD_KINDS, join_record, record_kind_of
from clipguard.detect.engine import score_embeddings, select_detectors
from clipguard.detect.report import format_report
from clipguard.detect.results import build_score_table, detection_table, n_suspects, suspects_of
from clipguard.detect.store import (
    SavedScan,
    new_scan_record,
    read_scan,
    record_data,
    record_scoring,
    write_scan,
)
from clipguard.errors import ConfigError
from clipguard.io.reader import EmbeddingSet, load_embedding_folder
from clipguard.utils.runrecord import RunRecord, fingerprint_arrays

__all__ = ["Scan"]


def _inputs_of(text: Any, captions: Any) -> set[str]:
    return {"image"} | ({"text"} if text is not None else set()) | (
        {"captions"} if captions is not None else set())


class Scan:
    """Audit one set of CLIP training pairs for backdoor samples.

    Args:
        image_emb: (N, d) image embeddings (any float dtype; normalised when scoring).
        text_emb: (N, d_t) caption embeddings, row-aligned, or None.
        captions: N caption strings, or None.
        ids: N sample ids (default ``0..N-1``).
        ground_truth: N booleans (True = poisoned), or None; gives AUROC/AUPRC in the report.

    Attributes (after :meth:`find_suspects`, or :meth:`load`):
        scores: N-row DataFrame in dataset order: ``id``, ``shard``, ``row_in_shard``, and per
            detector ``<det>_score`` (float64, higher = more suspicious), ``<det>_rank``
            (1 = most suspicious), ``is_<det>_suspect``; ``poisoned`` with ground truth.
        detectors: the detectors that ran.
        skipped_detectors: ``{name: reason}`` of default detectors skipped for missing inputs.
        info: reference plan (mode chosen and why), per-draw kNN info (IVF recall), detector info.
        records: ``{input name: (N,) float64 values}`` of the records :meth:`with_record` joined
            (``"dynamics"``: the learning speed, ``"stability"``: the noise stability; NaN = no
            record).
        records_info: ``{input name: what was joined}`` (``source``, ``n_record_ids``,
            ``n_record_ids_unmatched``, ``n_rows``, ``n_rows_without_record``; also in ``run.json``
            under the input name).
        dynamics, dynamics_info: ``records["dynamics"]`` and ``records_info["dynamics"]``, or None.
        metrics: ``{det: {"auroc", "auprc", "tpr_at_1pct_fpr"}}`` or None.
        config: the :class:`~clipguard.detect.config.ScanConfig` of the last run.

    ``is_<det>_suspect`` marks the ``ceil(suspect_share * N)`` best-ranked samples of that
    detector (``suspect_share`` of :meth:`find_suspects`, 1% by default: the share the DAO paper
    found enough to filter for patch triggers). It is a filtering budget, not a threshold on
    the score.
    """

    def __init__(
        self,
        image_emb: np.ndarray,
        text_emb: np.ndarray | None = None,
        captions: Iterable[Any] | None = None,
        ids: Iterable[Any] | None = None,
        ground_truth: Iterable[Any] | None = None,
    ) -> None:
        image = np.asarray(image_emb)
        if image.ndim != 2:
            raise ConfigError(f"image_emb must be a 2-D array (N, d), got shape {image.shape}")
        n = image.shape[0]
        if n == 0:
            raise ConfigError("image_emb has 0 rows; nothing to scan")
        self.image: np.ndarray | None = np.asarray(image, dtype=np.float32)
        self.text = None if text_emb is None else np.asarray(text_emb, dtype=np.float32)
        if self.text is not None and (self.text.ndim != 2 or self.text.shape[0] != n):
            raise ConfigError(f"text_emb must have shape (N={n}, d_t), got {self.text.shape}")
        self.captions = None if captions is None else np.asarray(list(captions), dtype=object)
        self.ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(list(ids))
        self.ground_truth = None if ground_truth is None else np.asarray(list(ground_truth))
        for what, arr in (("captions", self.captions), ("ids", self.ids),
                          ("ground_truth", self.ground_truth)):
            if arr is not None and len(arr) != n:
                raise ConfigError(f"{what} has {len(arr)} entries but image_emb has {n} rows; "
                                  "they must be row-aligned")
        self._inputs = _inputs_of(self.text, self.captions)
        self.records: dict[str, np.ndarray] = {}
        self.records_info: dict[str, dict[str, Any]] = {}
        self._shard = np.zeros(n, dtype=np.int64)
        self._row_in_shard = np.arange(n, dtype=np.int64)
        self._shard_ids, self._skipped_shards, self._sizes = [0], [], [int(n)]
        self._ignored_files: list[str] = []
        self._source: str | None = None
        self._locate = None
        self._load_s: float | None = None
        self._rec: RunRecord | None = None
        self._table: pd.DataFrame | None = None

    # -- construction from a folder -------------------------------------------------------
    @classmethod
    def from_folder(cls, path: str | Path) -> "Scan":
        """Read a clip-retrieval embedding folder (``img_emb/``, optional ``text_emb/`` and
        ``metadata/`` with ``id``, ``caption``, ``poisoned`` columns); empty shards are skipped.

        Raises:
            EmbeddingError: the folder is malformed (see
                :func:`~clipguard.io.reader.load_embedding_folder`).
        """
        t0 = time.perf_counter()
        es: EmbeddingSet = load_embedding_folder(path)
        meta = es.metadata
        scan = cls(es.image, es.text,
                   captions=meta["caption"].to_numpy(dtype=object) if "caption" in meta.columns else None,
                   ids=meta["id"].to_numpy() if "id" in meta.columns else None,
                   ground_truth=meta["poisoned"].to_numpy() if "poisoned" in meta.columns else None)
        scan._shard = meta["shard"].to_numpy(np.int64)
        scan._row_in_shard = meta["row_in_shard"].to_numpy(np.int64)
        scan._shard_ids, scan._skipped_shards = list(es.shard_ids), list(es.skipped_shards)
        scan._ignored_files = list(es.ignored_files)
        scan._source = str(path)
        scan._locate = lambda i: f"{es.root}/{es.locate(i)}"
        scan._load_s = time.perf_counter() - t0
        scan._sizes = list(es.shard_sizes)
        return scan

    @classmethod
    def load(cls, scan_dir: str | Path) -> "Scan":
        """The scan saved in ``scan_dir`` by :meth:`save` (or ``run_scan`` / ``clipguard scan``).

        The loaded scan has the saved ``scores`` (every column, ``shard`` and ``row_in_shard``
        included), ``detectors``, ``skipped_detectors``, ``info``, ``metrics`` and ``config``;
        it holds no embeddings, so it can report, list suspects and save, not rescore.

        Raises:
            ConfigError: ``scan_dir`` holds no score files or no ``run.json``.
        """
        saved: SavedScan = read_scan(scan_dir)
        run, table = saved.run, saved.table
        scan = cls.__new__(cls)
        scan.image = scan.text = scan.captions = None
        scan.ids = table["id"].to_numpy()
        scan.ground_truth = table["poisoned"].to_numpy() if "poisoned" in table.columns else None
        scan._inputs = set(run.get("inputs") or ["image"])
        scan.records = {}
        scan.records_info = {kind: run[kind] for kind in RECORD_KINDS if isinstance(run.get(kind), dict)}
        scan._shard = table["shard"].to_numpy(np.int64)
        scan._row_in_shard = table["row_in_shard"].to_numpy(np.int64)
        scan._shard_ids = list(run.get("shard_ids") or sorted(set(scan._shard.tolist())))
        scan._skipped_shards = list(run.get("skipped_shards") or [])
        scan._ignored_files = list(run.get("ignored_files") or [])
        scan._sizes = list(run.get("shard_sizes") or [])
        scan._source, scan._locate, scan._load_s = run["config"].get("emb_dir"), None, None
        scan._rec = RunRecord("scan")
        scan._rec.data = run
        info = {key: run[key] for key in ("reference_plan", "references", "recall_at_k", "detector_info")
                if key in run}
        scan._set_results(table, run["detectors"], run.get("skipped_detectors") or {}, info,
                          run.get("detection"), ScanConfig.from_dict(run["config"]))
        scan.score_paths = saved.score_paths
        return scan

    def with_record(self, source: str | os.PathLike | pd.DataFrame, kind: str | None = None) -> "Scan":
        """Add a per-row record of these pairs, joined BY ID, as the input ``kind`` (a default scan then
        runs the detector that reads it).

        Kinds (:data:`~clipguard.detect.detectors.records.RECORD_KINDS`): ``"dynamics"``, the
        training-dynamics record of the model trained on these pairs (``clipguard train
        --record-epochs N``; ``learning_speed``), and ``"stability"``, the perturbation-stability
        record of that model (``clipguard probe MODEL_DIR MANIFEST --out DIR``; ``perturbation``).
        Rows whose id is not in the record get NaN (scored least suspicious); that count and the
        record ids that match no row are logged and kept in ``records_info`` and ``run.json``. A
        second record of a kind replaces the first.

        Args:
            source: a folder holding the record's file (``dynamics.parquet``, ``stability.parquet``),
                the parquet file, or the record as a DataFrame.
            kind: ``"dynamics"`` or ``"stability"``; None = inferred from the folder's file or the
                file's columns (:func:`~clipguard.detect.detectors.records.record_kind_of`). A
                DataFrame needs it.

        Returns:
            self, for chaining.

        Raises:
            ConfigError: no (or a malformed) record, a kind that cannot be inferred, no id of the
                record among the scan's ids (was the model trained on this dataset?), or a scan
                made by :meth:`load`.
        """
        if self.image is None:
            raise ConfigError(f"this scan was loaded from {self._source or 'a scan folder'} and holds scores, "
                              "not embeddings; add the record to Scan.from_folder(<embedding folder>)")
        if kind is None:
            if isinstance(source, pd.DataFrame):
                raise ConfigError("a record given as a DataFrame needs its kind: with_record(frame, kind=...), one "
                                  f"of {', '.join(RECORD_KINDS)}")
            kind = record_kind_of(source)
        self.records[kind], self.records_info[kind] = join_record(kind, source, self.ids)
        self._inputs.add(kind)
        return self

    def with_dynamics(self, record: str | os.PathLike | pd.DataFrame) -> "Scan":
        """Add the training-dynamics record of the model trained on these pairs as the input
        ``"dynamics"`` (which ``learning_speed`` scores): :meth:`with_record` of kind ``"dynamics"``.

        Args:
            record: the model folder, its ``dynamics.parquet``, or the record as a DataFrame
                (:func:`~clipguard.train.read_dynamics`).

        Returns:
            self, for chaining.

        Raises:
            ConfigError: as :meth:`with_record`.
        """
        return self.with_record(record, kind="dynamics")

    @property
    def dynamics(self) -> np.ndarray | None:
        """(N,) float64 learning speed per sample after :meth:`with_dynamics` (NaN = no record), else None."""
        return self.records.get("dynamics")

    @property
    def dynamics_info(self) -> dict[str, Any] | None:
        """What :meth:`with_dynamics` joined (``records_info["dynamics"]``), else None."""
        return self.records_info.get("dynamics")

    @property
    def available_inputs(self) -> set[str]:
        """``{"image"}`` plus ``"text"`` / ``"captions"`` / a record's input (``"dynamics"``,
        ``"stability"``) when present."""
        return set(self._inputs)

    def __len__(self) -> int:
        return int(len(self.ids))

    # -- the work --------------------------------------------------------------------------
    def find_suspects(
        self,
        detectors: Iterable[str] | None = None,
        *,
        config: ScanConfig | None = None,
        **overrides: Any,
    ) -> "Scan":
        """Score every sample with ``detectors`` and mark the suspects.

        Args:
            detectors: registered names; None = every registered detector whose inputs this
                data has (the others are skipped, see ``skipped_detectors``; ``learning_speed``
                and ``perturbation`` run when :meth:`with_record` gave their record). Naming a detector whose input is
                missing raises ConfigError.
            config: the scan options (:class:`~clipguard.detect.config.ScanConfig`; default
                ``ScanConfig()``).
            **overrides: ScanConfig field names applied on top of ``config``: ``k``,
                ``reference``, ``suspect_share``, ``batch_size``, ``reference_size``,
                ``n_references``, ``index``, ``nlist``, ``nprobe``, ``target_recall``,
                ``n_recall``, ``seed``, ``backend``, ``block_size``, ``device`` (torch device
                of the kNN search: "auto", "cpu", "cuda"), ``detector_params``.

        Returns:
            self, for chaining.

        Raises:
            ConfigError: an unknown option (the message lists the valid ones) or detector, an
                invalid value, k too large for the data, a device that is not available, or a
                scan made by :meth:`load` (it holds no embeddings).
        """
        if self.image is None:
            raise ConfigError(f"this scan was loaded from {self._source or 'a scan folder'} and holds "
                              "scores, not embeddings; rescore with Scan.from_folder(<embedding folder>)")
        cfg = ScanConfig.resolve(config, **overrides)
        requested, names, skipped = select_detectors(detectors, self.available_inputs)
        rec = new_scan_record(self._source, requested, cfg, self._load_s)
        n, d = self.image.shape
        with rec.stage("fingerprint"):
            rec["data_fingerprint"] = fingerprint_arrays(self.image)
        record_data(rec, n=n, d=d, inputs=self.available_inputs, detectors=names, shard_ids=self._shard_ids,
                    shard_sizes=self._sizes, skipped_shards=self._skipped_shards, ignored_files=self._ignored_files)
        with rec.stage("score"):
            raw, info = score_embeddings(self.image, names, cfg, text=self.text, captions=self.captions,
                                         records=self.records, describe_row=self._locate)
        record_scoring(rec, info, skipped)
        for kind, joined in self.records_info.items():
            rec[kind] = joined
        table = build_score_table(self._base_table(), raw, cfg.suspect_share)
        rec["n_suspects"] = n_suspects(n, cfg.suspect_share)
        with rec.stage("metrics"):
            metrics = detection_table(table, names, rec)
        rec["detection"] = metrics
        self._rec = rec
        return self._set_results(table, names, skipped, info, metrics, cfg)

    def _base_table(self) -> pd.DataFrame:
        base = pd.DataFrame({"id": self.ids, "shard": self._shard, "row_in_shard": self._row_in_shard})
        if self.ground_truth is not None:
            base["poisoned"] = self.ground_truth
        return base

    def _set_results(self, table: pd.DataFrame, detectors: list[str], skipped: dict[str, str],
                     info: dict[str, Any], metrics: dict | None, cfg: ScanConfig) -> "Scan":
        self._table = table
        self.detectors, self.skipped_detectors = list(detectors), dict(skipped)
        self.info, self.metrics = info, metrics
        self.suspect_share = cfg.suspect_share
        self.config = cfg
        return self

    # -- results ---------------------------------------------------------------------------
    def _require_run(self) -> pd.DataFrame:
        if self._table is None:
            raise ConfigError("no results yet; call find_suspects() first")
        return self._table

    @property
    def scores(self) -> pd.DataFrame:
        """The per-sample table (see the class docstring)."""
        return self._require_run()

    def get_suspects(self, detector: str, n: int | None = None) -> pd.DataFrame:
        """The suspects of one detector, most suspicious first.

        Args:
            detector: a detector of this scan.
            n: return the ``n`` best-ranked samples; None = those marked ``is_<det>_suspect``.

        Returns:
            DataFrame (index = dataset row) with ``id``, ``<det>_score``, ``<det>_rank``,
            ``is_<det>_suspect`` (and ``poisoned`` with ground truth), sorted by rank.
        """
        return suspects_of(self._require_run(), self.detectors, detector, n)

    def report(self, n: int = 5) -> str:
        """A plain-text summary: reference mode and why, per-detector score statistics and
        suspect counts, detection metrics (with ground truth), and the top ``n`` suspects of
        each detector. Print it: ``print(scan.report())``."""
        return format_report(self._require_run(), detectors=self.detectors, inputs=self.available_inputs,
                             info=self.info, metrics=self.metrics, skipped=self.skipped_detectors, n=n)

    def save(self, out_dir: str | Path) -> Path:
        """Write ``scores/scores_{i}.parquet`` per shard and ``run.json`` (the ``run_scan``
        contract; data built from arrays is one shard, 0). The score files are listed in
        ``score_paths`` afterwards; :meth:`load` reads the folder back.

        Returns:
            The path of ``run.json``.
        """
        table = self._require_run()
        assert self._rec is not None
        self._rec.data["config"]["out_dir"] = str(out_dir)
        self.score_paths, run_json = write_scan(table, self.detectors,
                                                self._shard_ids + self._skipped_shards, out_dir,
                                                self._rec)
        return run_json
