"""``clipguard train`` as a function: manifest in, trained model folder out."""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

from clipguard.data.dataset import ImageCaptionDataset
from clipguard.data.manifest import Manifest, read_manifest
from clipguard.errors import ConfigError
from clipguard.models.factory import ClipBundle, create_model, save_model
from clipguard.train.losses.clip import ExtraLoss
from clipguard.train.losses.density_evasion import density_evasion_loss
from clipguard.train.trainer import TrainConfig, TrainResult, load_pairs, train_clip
from clipguard.utils.device import DEFAULT_DEVICE, resolve_device
from clipguard.utils.runrecord import RunRecord, fingerprint_files
from clipguard.utils.validate import check_int, check_real

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
                        adaptive_density: float = 0.0, adaptive_k: int = 8,
                        device: str | None = DEFAULT_DEVICE) -> tuple[ClipBundle, TrainResult]:
    """Train architecture ``model`` (random init, or ``weights``) on a manifest; save it to ``out_dir``.

    Writes ``model.safetensors``, ``model.json``, ``checkpoints/state.pt``, ``skipped.csv`` (rows
    left out, with reasons) and ``run.json`` (config, versions, timings, data fingerprint, history);
    with ``config.record_epochs > 0`` also ``dynamics.parquet``, every pair's image-caption cosine
    at the end of each of the first ``record_epochs`` epochs (:func:`clipguard.train.read_dynamics`).

    ``adaptive_density > 0`` trains as the density-evading attacker: the mean batch SLOF of the
    manifest's ``poisoned`` rows (``adaptive_k`` neighbours), times this weight, is added to the loss
    (:func:`clipguard.train.losses.density_evasion_loss`).

    ``device``: where to train (default ``DEFAULT_DEVICE``, "auto": the GPU if torch sees one, else
    the CPU; ``None`` or "cpu": the CPU; "cuda").

    Raises:
        ConfigError: a setting out of range, or ``adaptive_density`` without a ``poisoned`` column.
        ManifestError: the manifest cannot be read, or every row is skipped.
    """
    config.check()
    check_real("adaptive_density", adaptive_density, low=0)
    check_int("adaptive_k", adaptive_k, minimum=1)
    dev = resolve_device(device)
    manifest = read_manifest(manifest_path)
    extra = _extra_loss(manifest, adaptive_density, adaptive_k)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rec = RunRecord("train", {"manifest": str(manifest_path), "model": model, "weights": str(weights) if weights else None,
                              "adaptive_density": adaptive_density, "adaptive_k": adaptive_k, **asdict(config)})
    rec["device"] = str(dev)
    rec["data_fingerprint"] = fingerprint_files([manifest.path])
    bundle = create_model(model, weights=weights, seed=config.seed)
    ds = ImageCaptionDataset(manifest, bundle.preprocess, bundle.tokenizer)
    try:
        with rec.stage("decode"):
            pairs = load_pairs(ds, progress=progress)
    finally:
        ds.skip_log.save(out / "skipped.csv")
    with rec.stage("train"):
        result = train_clip(bundle, pairs, config, out, resume=resume, progress=progress, extra_loss=extra,
                            device=dev)
    result.n_skipped = len(ds.skip_log)
    save_model(bundle, out, extra={"trained_on": str(manifest.path), "train_config": asdict(config)})
    rec["n_rows"], rec["n_pairs"], rec["n_skipped"] = len(manifest), result.n_pairs, result.n_skipped
    rec["skip_counts"] = ds.skip_log.counts()
    rec["history"] = result.history
    rec.save(out)
    return bundle, result
