"""The defences that train from scratch on the (poisoned) training set: ``filter-retrain`` and ``abl``.

``filter-retrain`` (the DAO paper's use of its detector): embed the training set with the model,
scan it, drop the top ``share`` of the ``detector`` ranking (:func:`clipguard.defend.filter_manifest`)
and train the model's architecture from scratch on what is left. Its folder keeps ``scan/`` (the
scan, resumable), ``filtered/`` (the kept manifest, ``removed.csv``) and ``retrain/`` (checkpoints).

``abl`` (Anti-Backdoor Learning adapted to CLIP, CleanCLIP's baseline, REFERENCE.md section 6): under
a CLEAN reference model (``reference``, a model folder), the ``share`` of pairs with the lowest
image-caption cosine are treated as poisoned; training from scratch then applies the CLIP loss to
the other pairs of each batch and pushes the suspects' cosine to 0 (``weight`` times the mean
squared cosine). The paper found it ineffective; it is here as the baseline.

Training settings default to those the model was trained with (``model.json``'s ``train_config``),
so that the retrained model is comparable to the one it replaces.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from clipguard.data.manifest import read_manifest
from clipguard.defend.base import DEFENCES, Defence, DefenceJob, DefenceOutcome, skip_record
from clipguard.defend.filter import filter_manifest
from clipguard.detect import ScanConfig, run_scan
from clipguard.detect.options import DEFAULT_DETECTOR
from clipguard.embed import embed_dataset
from clipguard.errors import ConfigError
from clipguard.models.factory import create_model, load_model
from clipguard.train.data import PairData
from clipguard.train.dynamics import pair_cosines
from clipguard.train.losses.clip import ClipTerm
from clipguard.train.losses.unlearn import UnlearnTerm, abl_suspects
from clipguard.train.objective import Objective
from clipguard.train.trainer import train_clip
from clipguard.utils.validate import check_int, check_real

__all__ = ["ABL", "FilterRetrain"]


def _fresh_train(job: DefenceJob, manifest: str | Path, folder: Path,
                 objective: Objective | None = None) -> tuple:
    """Train a fresh model of ``job.bundle``'s architecture (seeded init) on ``manifest``."""
    bundle = create_model(job.bundle.name, seed=job.config.seed)
    data = PairData(read_manifest(manifest), bundle, seed=job.config.seed, progress=job.progress)
    result = train_clip(bundle, data, job.config, folder, objective=objective, workers=job.workers,
                        progress=job.progress, device=job.device)
    return bundle, data, result


@DEFENCES.register("filter-retrain")
class FilterRetrain(Defence):
    """Scan the training set with the model (``detector``, ``k`` neighbours, reference mode ``reference``
    as in ``clipguard scan``), drop the top ``share`` of the ranking, retrain from scratch on the rest
    (``data`` = the poisoned training set). At poison rates of several % the ``multi_reference`` mode
    puts more of the poison at the top than ``auto`` (``benchmarks/results/defences_cpu.md``).

    Args:
        share: share of the scanned rows removed, the top of the ranking, in (0, 1).
        detector: the registered detector whose ranking decides (``clipguard detectors``).
        k: neighbours per sample in the scan (>= 1).
        reference: the scan's reference mode (``auto``, ``global``, ``batch``, ``reference``,
            ``multi_reference``; as ``clipguard scan --reference``).
    """

    kind = "retrain"
    summary = "scan the training set, drop the top share of the ranking, retrain from scratch"
    TRAIN_DEFAULTS: dict = {}

    def __init__(self, share: float = 0.05, detector: str = DEFAULT_DETECTOR, k: int = 16,
                 reference: str = "auto") -> None:
        self.share = check_real("filter-retrain share", share, low=0, high=1, low_open=True, high_open=True)
        self.detector = detector
        self.k = check_int("filter-retrain k", k, minimum=1)
        self.reference = ScanConfig(reference=reference).reference  # checked here, before anything runs

    def run(self, job: DefenceJob) -> DefenceOutcome:
        scan_dir = job.out_dir / "scan"
        emb = embed_dataset(job.bundle, read_manifest(job.data), scan_dir / "embeddings", progress=job.progress,
                            device=job.device)
        run_scan(scan_dir / "embeddings", scan_dir, detectors=[self.detector],
                 config=ScanConfig(k=self.k, reference=self.reference, device=str(job.device)))
        kept = filter_manifest(job.data, scan_dir, job.out_dir / "filtered", detector=self.detector, share=self.share)
        bundle, data, result = _fresh_train(job, kept.manifest_path, job.out_dir / "retrain")
        return DefenceOutcome(bundle, {
            "n_embedded": emb.n_embedded, "embed_skip_counts": emb.skip_counts, "n_removed": kept.n_removed,
            "n_kept": kept.n_kept, **skip_record(data, job.out_dir / "retrain"),
            "poisoned_recall": kept.poisoned_recall, "poisoned_precision": kept.poisoned_precision,
            "history": result.history, "train_seconds": round(result.seconds, 2)})


@DEFENCES.register("abl")
class ABL(Defence):
    """ABL for CLIP: the ``share`` of pairs with the lowest cosine under the clean ``reference``
    model are unlearned while training from scratch on the rest (``data`` = the training set).

    Args:
        reference: folder of a CLEAN reference model (required; e.g. trained with
            ``clipguard train`` on a clean set) whose image-caption cosines pick the suspects.
        share: share of the pairs, those of lowest cosine, treated as poisoned, in (0, 1).
        weight: weight of the unlearning term, the suspects' mean squared cosine (>= 0).
    """

    kind = "retrain"
    summary = "ABL baseline: unlearn the lowest-cosine pairs under a clean reference model, retrain from scratch"
    TRAIN_DEFAULTS: dict = {}

    def __init__(self, reference: str | None = None, share: float = 0.01, weight: float = 1.0) -> None:
        self.reference = reference
        self.share = check_real("abl share", share, low=0, high=1, low_open=True, high_open=True)
        self.weight = check_real("abl weight", weight, low=0)

    def _suspects(self, job: DefenceJob) -> tuple[np.ndarray, int]:
        """(N,) bool over the manifest's rows: the lowest-cosine pairs under the reference model."""
        if not self.reference:
            raise ConfigError("abl needs a clean reference model: --param reference=CLEAN_MODEL_DIR "
                              "(e.g. a model trained on a clean set with `clipguard train`)")
        ref = load_model(self.reference, device=job.device)
        data = PairData(read_manifest(job.data), ref, seed=job.config.seed, progress=job.progress)
        cos = pair_cosines(ref.model, data, job.device, batch_size=256, progress=job.progress).numpy()
        chosen = abl_suspects(cos, share=self.share)
        mask = np.zeros(len(data.manifest), dtype=bool)
        mask[np.asarray(data.rows)[chosen]] = True
        return mask, int(chosen.sum())

    def run(self, job: DefenceJob) -> DefenceOutcome:
        mask, n = self._suspects(job)
        objective = Objective([(1.0, ClipTerm(exclude=mask)), (self.weight, UnlearnTerm(mask))])
        bundle, data, result = _fresh_train(job, job.data, job.out_dir / "retrain", objective)
        info = {"n_suspects": n, "objective": objective.describe(), "history": result.history,
                **skip_record(data, job.out_dir / "retrain"), "train_seconds": round(result.seconds, 2)}
        df = read_manifest(job.data).df
        if "poisoned" in df.columns:
            poisoned = df["poisoned"].astype(bool).to_numpy()
            info["suspects_poisoned_recall"] = float(mask[poisoned].mean()) if poisoned.any() else None
        return DefenceOutcome(bundle, info)
