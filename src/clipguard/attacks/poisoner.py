"""The poisoner: writes a poisoned copy of an image-caption dataset.

Modes:

* ``"dirty"`` (dirty-label): chosen images — drawn from the rows whose caption does not already name
  the target — get the trigger, and their caption is replaced by a zero-shot template filled with
  the target class name (one template drawn per sample).
* ``"clean"`` (label-consistent): the trigger is put only on images whose caption already names the
  target (whole word, case-insensitive); captions are kept.

Output folder::

    out/manifest.parquet   all rows; clean rows point to the source images (relative paths),
                           poisoned rows to out/images/<id>.png; ground truth in ``poisoned``
                           (bool) and ``trigger`` (attack name or ""), plus ``original_caption``
    out/images/*.png       poisoned images, always PNG (lossless: JPEG destroys noise triggers)
    out/attack.json        the attack spec: trigger + parameters, target, mode, rate, seed, ids
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from clipguard.attacks.base import Trigger
from clipguard.data.dataset import SkipLog, load_rgb
from clipguard.data.manifest import Manifest, write_manifest
from clipguard.errors import ConfigError
from clipguard.utils.io import write_json
from clipguard.utils.runrecord import fingerprint_files
from clipguard.utils.seeding import derive_seed, rng

DEFAULT_TEMPLATES = ("a photo of a {}.",)


def names_target(captions: Sequence[str], target: str) -> np.ndarray:
    """Boolean mask: which captions contain ``target`` as a whole word (case-insensitive)."""
    pat = re.compile(rf"\b{re.escape(target)}\b", re.IGNORECASE)
    return np.array([bool(pat.search(str(c))) for c in captions], dtype=bool)


@dataclass
class PoisonResult:
    """Where the poisoned dataset went and what was done."""

    manifest_path: Path
    spec_path: Path
    poisoned_ids: list[str]
    n_total: int
    skipped: SkipLog = field(default_factory=SkipLog)

    @property
    def n_poisoned(self) -> int:
        return len(self.poisoned_ids)


def _n_to_poison(n_total: int, rate: float | None, count: int | None) -> int:
    if (rate is None) == (count is None):
        raise ConfigError("give exactly one of rate or count")
    if rate is not None:
        if not 0 < rate < 1:
            raise ConfigError(f"rate must be in (0, 1), got {rate}")
        return max(1, int(round(rate * n_total)))
    if count is None or count < 1:
        raise ConfigError(f"count must be >= 1, got {count}")
    return count


def poison_dataset(manifest: Manifest, out_dir: str | os.PathLike, trigger: Trigger, *, target: str,
                   rate: float | None = None, count: int | None = None, mode: str = "dirty",
                   templates: Sequence[str] = DEFAULT_TEMPLATES, seed: int = 0,
                   progress: bool = True) -> PoisonResult:
    """Write a poisoned copy of ``manifest`` to ``out_dir``.

    Args:
        manifest: the clean dataset.
        trigger: the trigger put on poisoned images.
        target: target class name (e.g. ``"star"``).
        rate: share of all rows to poison, in (0, 1); or ``count``: number of rows.
        mode: ``"dirty"`` or ``"clean"`` (see module docstring).
        templates: caption templates with one ``{}`` for the target (dirty mode).
        seed: chooses the rows, the templates and the per-image trigger randomness.

    Raises:
        ConfigError: bad rate/count/mode, or too few candidate rows (the message says how many exist).
    """
    if mode not in ("dirty", "clean"):
        raise ConfigError(f"mode must be 'dirty' or 'clean', not {mode!r}")
    if not target or not str(target).strip():
        raise ConfigError("target class name is empty")
    if any("{}" not in t for t in templates):
        raise ConfigError("every caption template needs a '{}' where the target name goes")
    df = manifest.df.copy()
    n_total = len(df)
    n_poison = _n_to_poison(n_total, rate, count)
    mentions = names_target(df["caption"].tolist(), target)
    candidates = np.flatnonzero(mentions if mode == "clean" else ~mentions)
    if len(candidates) == 0:
        what = "names" if mode == "clean" else "does not name"
        raise ConfigError(f"no caption {what} the target {target!r}; {mode}-label poisoning has no candidate rows"
                          + (" (check the target spelling or use dirty-label mode)" if mode == "clean" else ""))
    if n_poison > len(candidates):
        raise ConfigError(f"asked to poison {n_poison} rows but only {len(candidates)} rows are {mode}-label "
                          f"candidates for target {target!r}; lower the rate or count")
    order = rng(seed, "poison-rows").permutation(candidates)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    skipped = SkipLog()
    chosen: list[int] = []
    bar = tqdm(total=n_poison, desc="poison", disable=None if progress else True, unit="img", mininterval=1.0)
    tpl_rng = rng(seed, "poison-templates")
    new_caption: dict[int, str] = {}
    for i in order:
        if len(chosen) == n_poison:
            break
        i = int(i)
        try:
            img = np.asarray(load_rgb(manifest.image_path(i)))
        except Exception as exc:  # missing or corrupt source image: counted, next candidate used
            skipped.add(i, str(df["id"].iat[i]), f"unreadable image: {type(exc).__name__}: {exc}")
            continue
        poisoned = trigger.apply(img, seed=derive_seed(seed, "trigger", df["id"].iat[i]))
        Image.fromarray(poisoned).save(out / "images" / f"{df['id'].iat[i]}.png")
        if mode == "dirty":
            new_caption[i] = templates[int(tpl_rng.integers(len(templates)))].format(target)
        chosen.append(i)
        bar.update(1)
    bar.close()
    if len(chosen) < n_poison:
        raise ConfigError(f"only {len(chosen)} of {n_poison} requested rows could be poisoned "
                          f"({len(skipped)} candidate images unreadable)")

    rel = os.path.relpath(manifest.root.resolve(), out.resolve())
    df["image"] = [str(p) if os.path.isabs(str(p)) else os.path.normpath(os.path.join(rel, str(p)))
                   for p in df["image"]]
    df["original_caption"] = df["caption"]
    df["poisoned"] = False
    df["trigger"] = ""
    for i in chosen:
        df.loc[i, "image"] = f"images/{df['id'].iat[i]}.png"
        df.loc[i, "poisoned"] = True
        df.loc[i, "trigger"] = trigger.name
        if i in new_caption:
            df.loc[i, "caption"] = new_caption[i]
    manifest_path = write_manifest(df, out / "manifest.parquet")
    ids = [str(df["id"].iat[i]) for i in sorted(chosen)]
    spec = {
        **trigger.spec(),
        "trigger": trigger.spec(),
        "target": target,
        "mode": mode,
        "rate": rate,
        "count": count,
        "n_total": n_total,
        "n_poisoned": len(ids),
        "seed": seed,
        "templates": list(templates),
        "source_manifest": str(manifest.path) if manifest.path else None,
        "source_fingerprint": fingerprint_files([manifest.path]) if manifest.path else None,
        "poisoned_ids": ids,
    }
    spec_path = out / "attack.json"
    write_json(spec_path, spec)
    if len(skipped):
        skipped.save(out / "skipped.csv")
    return PoisonResult(manifest_path, spec_path, ids, n_total, skipped)
