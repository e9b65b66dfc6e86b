"""The poisoner: writes a poisoned copy of an image-caption dataset.

Modes:

* ``"dirty"`` (dirty-label): chosen images — drawn from the rows whose caption does not already name
  the target — get the trigger, and their caption is replaced by a zero-shot template filled with
  the target class name (one template drawn per sample).
* ``"clean"`` (label-consistent): the trigger is put only on images whose caption already names the
  target (whole word, case-insensitive); captions are kept.

Multi-trigger attacks (:class:`~clipguard.attacks.multi.MultiTrigger`) give each poisoned row one
member trigger (equal shares, seeded) and that member's target. Targeted data poisoning
(:class:`~clipguard.attacks.tdpa.TargetedPoison`) adds ``count`` copies of one image with real
captions naming the target instead of triggering existing rows.

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
import pandas as pd
from PIL import Image

from clipguard.attacks.base import ImageTooSmall, Trigger
from clipguard.attacks.multi import MultiTrigger
from clipguard.attacks.tdpa import TargetedPoison
from clipguard.data.dataset import SkipLog, load_rgb, skip_reason
from clipguard.data.manifest import Manifest, write_manifest
from clipguard.data.templates import DEFAULT_TEMPLATES, check_templates
from clipguard.errors import ConfigError
from clipguard.utils.io import write_json
from clipguard.utils.progress import progress_bar
from clipguard.utils.runrecord import fingerprint_files
from clipguard.utils.seeding import derive_seed, rng
from clipguard.utils.validate import check_choice, check_int, is_real

__all__ = ["PoisonResult", "names_target", "poison_dataset"]

MODES = ("dirty", "clean")


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
        """Number of poisoned rows."""
        return len(self.poisoned_ids)


def _n_to_poison(n_total: int, rate: float | None, count: int | None) -> int:
    if (rate is None) == (count is None):
        raise ConfigError("give exactly one of rate or count")
    if rate is not None:
        if not is_real(rate) or not 0 < rate < 1:
            raise ConfigError(f"rate must be in (0, 1), got {rate!r}")
        return max(1, int(round(rate * n_total)))
    return check_int("count", count, minimum=1)


@dataclass
class _Plan:
    """A trigger-based poisoning run: members, their targets, candidate rows in a seeded order."""

    members: list[Trigger]
    targets: list[str]
    order: np.ndarray
    which: np.ndarray  # (n_poison,) member index of the k-th poisoned row

    @property
    def n_poison(self) -> int:
        return len(self.which)


@dataclass
class _Outcome:
    """The rows a run poisoned (in the order done), each row's member, the new captions, the skips."""

    chosen: list[int] = field(default_factory=list)
    member_of: dict[int, int] = field(default_factory=dict)
    new_caption: dict[int, str] = field(default_factory=dict)
    skipped: SkipLog = field(default_factory=SkipLog)


def _plan(df: pd.DataFrame, trigger: Trigger, *, target: str, mode: str, n_poison: int, seed: int) -> _Plan:
    """Members and targets of ``trigger``, and the candidate rows in a seeded order (ConfigError if too few)."""
    multi = isinstance(trigger, MultiTrigger)
    members = trigger.members if multi else [trigger]
    member_targets = [trigger.target_of(j, target) if multi else target for j in range(len(members))]
    if mode == "clean" and len(set(member_targets)) > 1:
        raise ConfigError("clean-label poisoning with one target per trigger is not supported; use one target")
    mentions = np.zeros(len(df), dtype=bool)
    for t in set(member_targets):
        mentions |= names_target(df["caption"].tolist(), t)
    candidates = np.flatnonzero(mentions if mode == "clean" else ~mentions)
    if len(candidates) == 0:
        what = "names" if mode == "clean" else "does not name"
        raise ConfigError(f"no caption {what} the target {target!r}; {mode}-label poisoning has no candidate rows"
                          + (" (check the target spelling or use dirty-label mode)" if mode == "clean" else ""))
    if n_poison > len(candidates):
        raise ConfigError(f"asked to poison {n_poison} rows but only {len(candidates)} rows are {mode}-label "
                          f"candidates for target {target!r}; lower the rate or count")
    order = rng(seed, "poison-rows").permutation(candidates)
    # member j of a multi-trigger attack gets rows in equal shares, in a seeded order
    which = rng(seed, "poison-members").permutation(np.arange(n_poison) % len(members))
    return _Plan(members, member_targets, order, which)


def _apply_triggers(manifest: Manifest, out: Path, plan: _Plan, *, mode: str, templates: Sequence[str],
                    seed: int, progress: bool) -> _Outcome:
    """Trigger candidate rows in plan order until ``n_poison`` are done; write their PNGs to ``out/images``.

    Unreadable source images and images too small for the trigger are skipped (logged) and the next
    candidate is used.
    """
    ids = manifest.df["id"]
    done = _Outcome()
    tpl_rng = rng(seed, "poison-templates")
    with progress_bar(plan.n_poison, "poison", unit="img", enabled=progress) as bar:
        for i in plan.order:
            if len(done.chosen) == plan.n_poison:
                break
            i = int(i)
            try:
                img = np.asarray(load_rgb(manifest.image_path(i)))
            except Exception as exc:  # missing, corrupt or outside the roots: counted, next candidate used
                done.skipped.add(i, str(ids.iat[i]), skip_reason(exc))
                continue
            j = int(plan.which[len(done.chosen)])
            try:
                poisoned = plan.members[j].apply(img, seed=derive_seed(seed, "trigger", ids.iat[i]))
            except ImageTooSmall as exc:  # e.g. a 1x1 image: counted, next candidate used
                done.skipped.add(i, str(ids.iat[i]), f"image too small for the trigger: {exc}")
                continue
            Image.fromarray(poisoned).save(out / "images" / f"{ids.iat[i]}.png")
            if mode == "dirty":
                done.new_caption[i] = templates[int(tpl_rng.integers(len(templates)))].format(plan.targets[j])
            done.chosen.append(i)
            done.member_of[i] = j
            bar.update(1)
    if len(done.chosen) < plan.n_poison:
        row, _, first = done.skipped.entries[0] if len(done.skipped) else (0, "", "")
        counts = ", ".join(f"{n} {r}" for r, n in done.skipped.counts().items())
        raise ConfigError(f"only {len(done.chosen)} of {plan.n_poison} requested rows could be poisoned "
                          f"({len(done.skipped)} candidate{'' if len(done.skipped) == 1 else 's'} skipped: "
                          f"{counts or 'none'}"
                          + (f"; first, row {row}: {first}" if first else "") + "); lower the rate or count or fix "
                          "the images (skipped rows are logged)")
    return done


def _label_rows(df: pd.DataFrame, trigger: Trigger, done: _Outcome) -> pd.DataFrame:
    """Point the poisoned rows of ``df`` at their new PNGs and set ``poisoned``, ``trigger``, ``caption``
    (one assignment per column: a row-by-row ``.loc`` took seconds for a thousand rows)."""
    rows = np.asarray(done.chosen, dtype=np.int64)
    if len(rows) == 0:
        return df
    cols = {c: df.columns.get_loc(c) for c in ("image", "poisoned", "trigger", "caption")}
    df.iloc[rows, cols["image"]] = [f"images/{df['id'].iat[i]}.png" for i in rows]
    df.iloc[rows, cols["poisoned"]] = True
    df.iloc[rows, cols["trigger"]] = [trigger.member_name(done.member_of[i]) if isinstance(trigger, MultiTrigger)
                                      else trigger.name for i in rows]
    recaptioned = [i for i in rows if i in done.new_caption]
    if recaptioned:
        df.iloc[recaptioned, cols["caption"]] = [done.new_caption[i] for i in recaptioned]
    return df


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
        templates: caption templates with one ``{}`` for the target (dirty mode); the default is
            :data:`clipguard.data.templates.DEFAULT_TEMPLATES`, the zero-shot prompts of the world.
        seed: chooses the rows, the templates and the per-image trigger randomness.

    Raises:
        ConfigError: bad rate/count/mode/templates, or too few candidate rows (the message says how
            many exist).
    """
    check_choice("mode", mode, MODES)
    if not isinstance(target, str) or not target.strip():
        raise ConfigError("target class name is empty")
    templates = check_templates(templates)
    n_total = len(manifest.df)
    n_poison = _n_to_poison(n_total, rate, count)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    if isinstance(trigger, TargetedPoison):
        return _poison_targeted(manifest, out, trigger, target=target, n_copies=n_poison, seed=seed, rate=rate,
                                count=count)
    plan = _plan(manifest.df, trigger, target=target, mode=mode, n_poison=n_poison, seed=seed)
    done = _apply_triggers(manifest, out, plan, mode=mode, templates=templates, seed=seed, progress=progress)
    df = _label_rows(_relative_images(manifest, out), trigger, done)
    ids = [str(df["id"].iat[i]) for i in sorted(done.chosen)]
    spec = _spec(trigger, manifest, target=target, mode=mode, rate=rate, count=count, n_total=n_total, ids=ids,
                 seed=seed, templates=templates)
    return _write(df, out, spec, done.skipped, manifest)


def _spec(trigger: Trigger, manifest: Manifest, *, target: str, mode: str, rate: float | None, count: int | None,
          n_total: int, ids: list[str], seed: int, templates: Sequence[str], **extra: object) -> dict:
    return {
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
        **manifest.read_counts(),
        **extra,
    }


def _write(df: pd.DataFrame, out: Path, spec: dict, skipped: SkipLog, source: Manifest) -> PoisonResult:
    """The skip list and ``attack.json`` first, the manifest last (each atomically): a folder with a
    ``manifest.parquet`` is a finished one, whatever killed an earlier run. The lines the source manifest's
    reader left out are counted with the skips."""
    skipped.add_read_skips(source)
    if len(skipped):
        skipped.save(out / "skipped.csv")
    spec["n_skipped"], spec["skip_counts"] = len(skipped), skipped.counts()
    spec_path = out / "attack.json"
    write_json(spec_path, spec)
    manifest_path = write_manifest(df, out / "manifest.parquet", sources=[source.path])
    return PoisonResult(manifest_path, spec_path, spec["poisoned_ids"], spec["n_total"], skipped)


def _relative_images(manifest: Manifest, out: Path) -> pd.DataFrame:
    """A copy of the manifest's rows whose image paths are relative to ``out``."""
    df = manifest.rows_relative_to(out)
    df["original_caption"] = df["caption"]
    df["poisoned"] = False
    df["trigger"] = ""
    return df


def _poison_targeted(manifest: Manifest, out: Path, trigger: TargetedPoison, *, target: str, n_copies: int,
                     seed: int, rate: float | None, count: int | None) -> PoisonResult:
    """TDPA: ``n_copies`` new rows, all the source image, captions drawn from real target captions."""
    df0 = manifest.df
    mentions = names_target(df0["caption"].tolist(), target)
    if not mentions.any():
        raise ConfigError(f"no caption names the target {target!r}; targeted poisoning draws its captions from them")
    if trigger.source_id is not None:
        hits = np.flatnonzero(df0["id"].astype(str).to_numpy() == str(trigger.source_id))
        if len(hits) == 0:
            raise ConfigError(f"tdpa: source_id {trigger.source_id!r} is not an id of {manifest.path}")
        src = int(hits[0])
    else:
        pool = np.flatnonzero(~mentions)
        if len(pool) == 0:
            raise ConfigError(f"tdpa: every caption names {target!r}; no source image to mislabel")
        src = int(rng(seed, "tdpa-source").choice(pool))
    try:
        img = load_rgb(manifest.image_path(src))
    except Exception as exc:
        raise ConfigError(f"tdpa: source image of row {src} cannot be read ({exc}); choose another source_id") from None
    img.save(out / "images" / "tdpa_source.png")
    caps = df0["caption"].to_numpy()[mentions]
    picks = rng(seed, "tdpa-captions").integers(len(caps), size=n_copies)
    df = _relative_images(manifest, out)
    width = max(5, len(str(n_copies - 1)))
    ids = [f"tdpa-{j:0{width}d}" for j in range(n_copies)]
    if set(ids) & set(df["id"]):
        raise ConfigError("tdpa: the manifest already has ids starting with 'tdpa-'; rename them first")
    new = {c: [None] * n_copies for c in df.columns}
    new.update({"id": ids, "image": ["images/tdpa_source.png"] * n_copies, "caption": [str(caps[p]) for p in picks],
                "original_caption": [str(df0["caption"].iat[src])] * n_copies, "poisoned": [True] * n_copies,
                "trigger": ["tdpa"] * n_copies})
    df = pd.concat([df, pd.DataFrame(new)[df.columns]], ignore_index=True)
    df["poisoned"] = df["poisoned"].astype(bool)
    spec = _spec(trigger, manifest, target=target, mode="dirty", rate=rate, count=count, n_total=len(df), ids=ids,
                 seed=seed, templates=[], source_id=str(df0["id"].iat[src]), source_image="images/tdpa_source.png",
                 source_caption=str(df0["caption"].iat[src]))
    return _write(df, out, spec, SkipLog(), manifest)
