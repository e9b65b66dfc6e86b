"""The training-dynamics record: how fast each training pair is learned, and a score from it.

Poisoned pairs are learned faster than clean ones: a trigger is a simple, consistent image feature
tied to one caption concept, so after an epoch or two the image embedding of a poisoned pair
already sits closer to its caption embedding than most clean pairs do. ``train_clip`` with
``TrainConfig.record_epochs = E > 0`` writes, at the end of each of the first ``E`` epochs, the
image-caption cosine of every training pair to ``OUT/dynamics.parquet`` (columns ``id`` (str),
``row`` (int, the manifest row), ``epoch`` (int, 1-based), ``cosine`` (float in [-1, 1])).
:func:`read_dynamics` reads it back; :func:`learning_speed` turns it into one score per pair
(higher = learned faster = more suspicious).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from clipguard.errors import ConfigError
from clipguard.train.data import PairData, ordered_loader
from clipguard.utils.device import autocast
from clipguard.utils.io import atomic_path, file_in
from clipguard.utils.progress import progress_bar

__all__ = ["DYNAMICS_FILE", "COLUMNS", "learning_speed", "pair_cosines", "read_dynamics", "write_epoch"]

#: The record's file name inside a model folder.
DYNAMICS_FILE = "dynamics.parquet"
#: Its columns, in order.
COLUMNS = ("id", "row", "epoch", "cosine")


def pair_cosines(model: torch.nn.Module, data: PairData, device: torch.device, *, batch_size: int,
                 bf16: bool = False, workers: int = 0, progress: bool = True, desc: str = "record") -> torch.Tensor:
    """Cosine between the image and caption embeddings of every pair of ``data``, without its views.

    Runs ``model`` in eval mode without gradients, ``batch_size`` pairs at a time (through
    :func:`~clipguard.train.data.ordered_loader` over ``data.plain()``, ``workers`` loader processes),
    and puts it back in the mode it was in. Draws from no random generator and changes no weight or
    buffer, so the training run it is called from stays bit-identical.

    Returns:
        (N,) float32 on the CPU, aligned with ``data.rows``; NaN for a streamed image that cannot be
        read (logged in ``data.skip_log``).
    """
    was_training = model.training
    model.eval()
    plain = data.plain()
    where = {row: j for j, row in enumerate(plain.rows)}
    out = torch.full((len(plain),), float("nan"))
    loader = ordered_loader(plain, batch_size=batch_size, workers=workers, pin_memory=device.type == "cuda")
    try:
        with torch.no_grad(), progress_bar(len(loader), desc, unit="batch", enabled=progress) as bar:
            for batch in loader:
                plain.record_errors(batch)
                if "image" in batch:
                    out[[where[int(r)] for r in batch["index"]]] = _cosines(model, batch, device, bf16)
                bar.update(1)
    finally:
        model.train(was_training)
    return out


def _cosines(model: torch.nn.Module, batch: dict, device: torch.device, bf16: bool) -> torch.Tensor:
    """(B,) image-caption cosines of one batch, on the CPU."""
    normalize = torch.nn.functional.normalize
    with autocast(device, bf16):
        img_f = normalize(model.encode_image(batch["image"].to(device)).float(), dim=-1)
        txt_f = normalize(model.encode_text(batch["text"].to(device)).float(), dim=-1)
    return (img_f * txt_f).sum(-1).clamp(-1.0, 1.0).cpu()


def write_epoch(path: str | os.PathLike, epoch: int, ids: Sequence[str], rows: Sequence[int],
                cosines: torch.Tensor) -> None:
    """Add epoch ``epoch``'s rows to the record at ``path`` (atomically).

    Rows of ``epoch`` and of later epochs already in the file are dropped first: they come from a
    run killed after recording but before its checkpoint, or from an earlier run in the same folder
    (a fresh run records epoch 1 first, which clears the file). Earlier epochs are kept, so a
    resumed run keeps what it had recorded.
    """
    path = Path(path)
    new = pd.DataFrame({"id": pd.Series(list(ids), dtype=str), "row": pd.Series(list(rows), dtype="int64"),
                        "epoch": pd.Series([int(epoch)] * len(rows), dtype="int64"),
                        "cosine": pd.Series(cosines.numpy(), dtype="float32")})
    if path.is_file():
        old = pd.read_parquet(path)
        new = pd.concat([old[old["epoch"] < epoch], new], ignore_index=True)
    with atomic_path(path) as tmp:
        new.to_parquet(tmp, index=False)


def read_dynamics(model_dir: str | os.PathLike) -> pd.DataFrame:
    """The training-dynamics record of a model folder (or the ``dynamics.parquet`` file itself).

    Returns:
        A DataFrame with columns ``id``, ``row``, ``epoch`` (1-based), ``cosine`` (in [-1, 1]);
        one row per training pair per recorded epoch.

    Raises:
        ConfigError: the record is absent or lacks a column.
    """
    path = file_in(model_dir, DYNAMICS_FILE)
    if not path.is_file():
        raise ConfigError(f"{path}: no training-dynamics record; train with `clipguard train ... --record-epochs N` "
                          "(TrainConfig.record_epochs > 0)")
    df = pd.read_parquet(path)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ConfigError(f"{path}: not a training-dynamics record (missing column(s) {', '.join(missing)}); "
                          "rerun `clipguard train ... --record-epochs N`")
    return df


def learning_speed(dynamics: pd.DataFrame) -> pd.Series:
    """One score per pair from a dynamics record: higher = learned faster = more suspicious.

    The score is the mean, over the recorded epochs, of the pair's within-epoch percentile rank of
    its cosine (pandas ``rank(pct=True)``, ties averaged: in (0, 1], the largest cosine of an
    epoch gets 1). Ranks rather than raw cosines: every pair's cosine drifts upwards as training
    goes on (and with the learned temperature), so raw values of different epochs are on different
    scales and a mean of them would be dominated by the latest epoch; ranks weigh each epoch
    equally, are unchanged by any monotone shift of one epoch's cosines, and measure what matters
    -- being learned *ahead of the other pairs*.

    Measured caveat: on the 600-pair shapes world with dirty-label BadNets at 5-10 % (3 epochs) the
    poisoned pairs, whose image content contradicts their caption, were fitted *later* than clean
    ones (AUROC 0.11-0.45): use the score two-sided or through a fusion that can fold it.

    Args:
        dynamics: a frame with columns ``id``, ``epoch``, ``cosine`` (:func:`read_dynamics`).

    Returns:
        A float Series indexed by ``id`` (one entry per pair, in order of first appearance), named
        ``learning_speed``.

    Raises:
        ConfigError: a column is missing or the frame is empty.
    """
    missing = [c for c in ("id", "epoch", "cosine") if c not in dynamics.columns]
    if missing or dynamics.empty:
        what = f"lacks column(s) {', '.join(missing)}" if missing else "is empty"
        raise ConfigError(f"the training-dynamics record {what}; pass the frame of read_dynamics(model_dir)")
    ranks = dynamics.groupby("epoch")["cosine"].rank(pct=True, method="average")
    speed = ranks.groupby(dynamics["id"], sort=False).mean()
    speed.index.name = "id"
    return speed.rename("learning_speed").astype(float)
