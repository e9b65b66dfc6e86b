"""How much of a finetuning set also appears in the model's training set (by id or image content).

A clean finetuning set should be disjoint from the (possibly poisoned) set the model was trained
on; overlapping rows are allowed -- the defence runs -- but counted and warned about. Rows match
when their ``id`` is equal or their image files have the same bytes (SHA-1).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from clipguard.data.manifest import Manifest
from clipguard.utils.progress import progress_bar

__all__ = ["Overlap", "manifest_overlap"]

log = logging.getLogger("clipguard")


@dataclass
class Overlap:
    """Rows of the finetuning set found in the training set: by id, by image hash, and either."""

    n_rows: int
    by_id: int
    by_image: int
    either: int

    def as_dict(self) -> dict[str, int]:
        return {"n_rows": self.n_rows, "by_id": self.by_id, "by_image": self.by_image, "either": self.either}


def _image_hashes(manifest: Manifest, progress: bool, desc: str) -> list[str | None]:
    """SHA-1 of each row's image file (None where it cannot be read)."""
    out: list[str | None] = []
    with progress_bar(len(manifest), desc, unit="img", enabled=progress) as bar:
        for i in range(len(manifest)):
            try:  # a missing file, or one outside the dataset's roots (an OSError too), has no hash
                out.append(hashlib.sha1(Path(manifest.image_path(i)).read_bytes()).hexdigest())
            except OSError:
                out.append(None)
            bar.update(1)
    return out


def manifest_overlap(finetune: Manifest, train: Manifest, *, progress: bool = True) -> Overlap:
    """Count the rows of ``finetune`` whose id or image bytes also occur in ``train``."""
    train_ids = set(train.df["id"].astype(str))
    ids = finetune.df["id"].astype(str).tolist()
    id_hit = [i in train_ids for i in ids]
    train_hashes = {h for h in _image_hashes(train, progress, "hash training images") if h}
    img_hit = [h is not None and h in train_hashes for h in _image_hashes(finetune, progress, "hash finetuning images")]
    return Overlap(len(ids), sum(id_hit), sum(img_hit), sum(a or b for a, b in zip(id_hit, img_hit)))
