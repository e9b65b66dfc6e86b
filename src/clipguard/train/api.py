"""``clipguard train`` as a function: manifest in, trained model folder out."""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch

from clipguard.data.dataset import SkipLog
from clipguard.data.manifest import Manifest, read_manifest
from clipguard.errors import ConfigError
from clipguard.models.factory import ClipBundle, create_model, save_model
from clipguard.train.losses.clip import ExtraLoss
from clipguard.train.losses.density_evasion import density_evasion_loss
from clipguard.train.data import CACHE_MODES, PairData
from clipguard.train.trainer import TrainConfig, TrainResult, train_clip
from clipguard.utils.device import DEFAULT_DEVICE, resolve_device
from clipguard.utils.runrecord import RunRecord, fingerprint_files
from clipguard.utils.validate import check_choice, check_int, check_real

__all__ = ["train_from_manifest"]


def _extra_loss(manifest: Manifest, adaptive_density: float, adaptive_k: int) -> ExtraLoss | None:
    """The density-evasion term of the adaptive attacker when ``adaptive_density > 0``, else None."""
    if adaptive_density == 0:
        return None
    if "poisoned" not in manifest.df.columns:
        raise ConfigError(f"{manifest.path}: --adaptive-density needs the ground-truth 'poisoned' column "
                          "(a manifest written by `clipguard poison`)")
    return density_evasion_loss(manifest.df["poisoned"].astype(bool).to_numpy(), k=adaptive_k,
                                weight=adaptive_density)


def train_from_manifest(manifest_path: str | os.PathLike, out_dir: str | os.PathLike, *, model: str = "tiny-rn",
                        config: TrainConfig = TrainConfig(), weights: str | os.PathLike | None = None,
                        resume: bool = True, progress: bool = True,
                        adaptive_density: float = 0.0, adaptive_k: int = 8, workers: int = 0,
                        cache: str = "auto", device: str | None = DEFAULT_DEVICE) -> tuple[ClipBundle, TrainResult]:
    """Train architecture ``model`` (random init, or ``weights``) on a manifest; save it to ``out_dir``.

    Writes ``model.safetensors``, ``model.json``, ``checkpoints/state.pt``, ``skipped.csv`` (rows
    left out, with reasons) and ``run.json`` (config, versions, timings, data fingerprint, history);
    with ``config.record_epochs > 0`` also ``dynamics.parquet``, every pair's image-caption cosine
    at the end of each of the first ``record_epochs`` epochs (:func:`clipguard.train.read_dynamics`).

    ``adaptive_density > 0`` trains as the density-evading attacker: the mean batch SLOF of the
    manifest's ``poisoned`` rows (``adaptive_k`` neighbours), times this weight, is added to the loss
    (:func:`clipguard.train.losses.density_evasion_loss`).

    ``workers``: DataLoader worker processes decoding the images (0: in this process); ``cache``:
    ``"memory"`` decodes every pair once, ``"stream"`` decodes per batch, ``"auto"`` (default) keeps
    the decoded set in memory when it fits 2 GiB (:class:`clipguard.train.PairData`). Neither changes
    the weights, nor blocks a resume.

    ``device``: where to train (default ``DEFAULT_DEVICE``, "auto": the GPU if torch sees one, else
    the CPU; ``None`` or "cpu": the CPU; "cuda").

    Raises:
        ConfigError: a setting out of range, or ``adaptive_density`` without a ``poisoned`` column.
        ManifestError: the manifest cannot be read, or every row is skipped.
    """
    config.check()
    check_real("adaptive_density", adaptive_density, low=0)
    check_int("adaptive_k", adaptive_k, minimum=1)
    check_int("workers", workers, minimum=0)
    check_choice("cache", cache, CACHE_MODES)
    dev = resolve_device(device)
    manifest = read_manifest(manifest_path)
    extra = _extra_loss(manifest, adaptive_density, adaptive_k)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rec = RunRecord("train", {"manifest": str(manifest_path), "model": model, "weights": str(weights) if weights else None,
                              "adaptive_density": adaptive_density, "adaptive_k": adaptive_k, "workers": workers,
                              "cache": cache, **asdict(config)})
    rec["device"] = str(dev)
    rec["data_fingerprint"] = fingerprint_files([manifest.path])
    bundle = create_model(model, weights=weights, seed=config.seed)
    data, result = _train(manifest, bundle, config, out, rec, resume=resume, progress=progress, extra=extra,
                          workers=workers, cache=cache, device=dev)
    result.n_skipped = len(data.skip_log)
    save_model(bundle, out, extra={"trained_on": str(manifest.path), "train_config": asdict(config)})
    bundle.trained_on = str(manifest.path) if manifest.path is not None else None  # as load_model(out) says
    rec["n_rows"], rec["n_pairs"], rec["n_skipped"] = len(manifest), result.n_pairs, result.n_skipped
    rec["cache_used"] = data.cache
    rec["skip_counts"] = data.skip_log.counts()
    rec.data.update(manifest.read_counts())
    rec["history"] = result.history
    rec.save(out)
    return bundle, result


def _train(manifest: Manifest, bundle: ClipBundle, config: TrainConfig, out: Path, rec: RunRecord, *, resume: bool,
           progress: bool, extra: ExtraLoss | None, workers: int, cache: str,
           device: torch.device) -> tuple[PairData, TrainResult]:
    """Build the pairs (stage "decode") and train (stage "train"); ``skipped.csv`` is written whatever
    happens (a streamed run finds unreadable images while it trains)."""
    skip_log = SkipLog()
    try:
        with rec.stage("decode"):
            data = PairData(manifest, bundle, seed=config.seed, cache=cache, progress=progress, skip_log=skip_log)
        with rec.stage("train"):
            result = train_clip(bundle, data, config, out, resume=resume, progress=progress, extra_loss=extra,
                                workers=workers, device=device)
    finally:
        skip_log.save(out / "skipped.csv")
    return data, result
