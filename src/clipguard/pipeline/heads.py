"""``clipguard heads analyze | repair | filter``: the attention-head analysis, repair and input filter of
"A Closer Look at Backdoor Attacks on CLIP" for a ViT model, from the model and clean images only.

* :func:`heads_analyze` -- fit the clean profile (prototypes, eps per head, zeta of the filter) and,
  with a test split, the per-layer x per-head infection heat maps of clean vs triggered inputs, the
  filter's AUROC and its FPR / TPR at zeta.
* :func:`heads_repair` -- write a repaired model folder (original weights + ``repair.safetensors``):
  infected heads replaced by their prototypes per input, late MLPs by their clean means (layers chosen
  under a clean-accuracy budget); CA / ASR before and after with a test split.
* :func:`heads_filter` -- score a manifest's images: ``heads_score`` (infected heads, ties broken by
  margin; higher = more suspicious), ``heads_rank``, ``heads_infected``, ``is_heads_suspect``.

Every call writes ``run.json`` (config, versions, timings, data fingerprint) beside its outputs.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from clipguard.analyze import (HeadProfile, Infection, choose_mlp_layers, decompose_batched, fit_profile, infection,
                               save_heatmap)
from clipguard.analyze.profile import DEFAULT_FILTER_FPR, DEFAULT_FPR, DEFAULT_SPLIT
from clipguard.attacks.base import trigger_from_spec
from clipguard.data.dataset import SkipLog
from clipguard.data.manifest import read_manifest
from clipguard.detect.metrics import detection_metrics
from clipguard.detect.results import rank_desc
from clipguard.errors import ConfigError
from clipguard.evaluate.api import before_after, evaluate_model, headline, read_classes
from clipguard.evaluate.zeroshot import build_classifier, load_test_images
from clipguard.models.decompose import Decomposition, check_decomposable, reconstruction_error, tower_shape
from clipguard.models.factory import ClipBundle, load_model, save_model
from clipguard.models.head_repair import RepairedVisual, attach_repair
from clipguard.utils.device import DEFAULT_DEVICE
from clipguard.utils.io import atomic_path, read_json_object
from clipguard.utils.runrecord import RunRecord, fingerprint_files
from clipguard.utils.validate import check_choice

__all__ = ["heads_analyze", "heads_filter", "heads_repair", "load_vit"]



DEFAULT_TOL = 1e-5  # largest relative reconstruction error accepted in float32


def load_vit(model: ClipBundle | str | os.PathLike, device: str | None = DEFAULT_DEVICE) -> ClipBundle:
    """Load a model folder (or take a bundle); refuse a non-ViT or an already repaired one in one line."""
    bundle = model if isinstance(model, ClipBundle) else load_model(model, device=device)
    source = bundle.name if isinstance(model, ClipBundle) else f"{model} ({bundle.name})"
    if isinstance(bundle.model.visual, RepairedVisual):
        raise ConfigError(f"{source} is already repaired (its model.json records a head repair); "
                          "analyse the original model folder")
    check_decomposable(bundle.model.visual, source)
    return bundle


def _decompose_manifest(bundle: ClipBundle, manifest: str | os.PathLike, *, trigger: Any = None, seed: int = 0,
                        batch_size: int = 64, progress: bool = True, desc: str = "clean"
                        ) -> tuple[Decomposition, np.ndarray, list[str], SkipLog]:
    """Decompose a manifest's images (``trigger`` applied, test variant, if given).

    Returns (decomposition, labels (-1 where the manifest has none), ids, the rows skipped with their reasons)."""
    man = read_manifest(manifest)
    imgs = load_test_images(bundle, man, trigger=trigger, seed=seed, progress=progress,
                            desc=f"{desc} images", labelled=False)
    skipped = {r for r, _, _ in imgs.skipped.entries}
    ids = [str(x) for j, x in enumerate(man.df["id"]) if j not in skipped]
    d = decompose_batched(bundle.model.visual, imgs.images, batch_size=batch_size, progress=progress,
                          desc=f"decompose {desc}")
    return d, imgs.labels, ids, imgs.skipped


def _checked_error(bundle: ClipBundle, manifest: str | os.PathLike, tol: float | None) -> float:
    """Largest relative reconstruction error on up to 64 images of ``manifest``; raise above ``tol``."""
    man = read_manifest(manifest)
    man.df = man.df.iloc[:64]
    imgs = load_test_images(bundle, man, progress=False, labelled=False).images.to(bundle.device)
    err = reconstruction_error(bundle.model.visual, imgs)
    if tol is not None and err > tol:
        raise ConfigError(f"the decomposition of {bundle.name} misses its embeddings by {err:.2e} (relative) > "
                          f"{tol:g}; run in float32 on the CPU or raise the tolerance")
    return err


def _fit(bundle: ClipBundle, clean: str | os.PathLike, rec: RunRecord, *, fpr: float, filter_fpr: float,
         split: Sequence[float], seed: int, batch_size: int, tol: float | None, progress: bool
         ) -> tuple[HeadProfile, Decomposition, np.ndarray]:
    """Fit the clean profile; record the reconstruction error, sizes and skips in ``rec``."""
    with rec.stage("check"):
        rec["reconstruction_error"] = _checked_error(bundle, clean, tol)
    with rec.stage("decompose_clean"):
        d, labels, _, skipped = _decompose_manifest(bundle, clean, batch_size=batch_size, progress=progress)
    with rec.stage("fit_profile"):
        profile = fit_profile(d, fpr=fpr, filter_fpr=filter_fpr, split=split, seed=seed)
    rec["clean"] = {"n_images": int(len(labels)), "n_skipped": len(skipped), "skip_counts": skipped.counts(),
                    "fingerprint": fingerprint_files([clean])}
    rec["profile"] = {"zeta": profile.zeta, **profile.info}
    return profile, d, labels


def _trigger_and_target(attack_spec: str | os.PathLike | None) -> tuple[Any, str | None]:
    if attack_spec is None:
        return None, None
    spec = read_json_object(Path(attack_spec), "an attack spec (attack.json)")
    return trigger_from_spec(spec), spec.get("target")


def _test_infection(bundle: ClipBundle, profile: HeadProfile, test: str | os.PathLike,
                    attack_spec: str | os.PathLike | None, classes: str | os.PathLike | None, *, seed: int,
                    batch_size: int, progress: bool) -> dict[str, Any]:
    """Infection of the clean test images and, with an attack, of their triggered copies (target-class
    images left out when ``classes`` names the target)."""
    d, labels, _, skipped = _decompose_manifest(bundle, test, batch_size=batch_size, progress=progress, desc="test")
    out: dict[str, Any] = {"clean": infection(profile, d), "n_clean": int(len(labels)), "n_skipped": len(skipped),
                           "skip_counts": skipped.counts()}
    trigger, target = _trigger_and_target(attack_spec)
    if trigger is None:
        return out
    dt, tl, _, _ = _decompose_manifest(bundle, test, trigger=trigger, seed=seed, batch_size=batch_size,
                                       progress=progress, desc="triggered")
    keep = np.ones(len(tl), dtype=bool)
    if classes is not None and target is not None:
        names = read_classes(classes)[0]
        if target in names:
            keep = tl != names.index(target)
    out.update(triggered=infection(profile, dt.subset(np.flatnonzero(keep))), n_triggered=int(keep.sum()), target=target)
    return out


def _filter_summary(clean: Infection, trig: Infection) -> dict[str, Any]:
    """The filter on clean vs triggered inputs: AUROC of the count and of the tie-broken score, FPR/TPR at zeta."""
    y = np.r_[np.zeros(len(clean.count)), np.ones(len(trig.count))]
    return {"zeta": clean.zeta, "fpr_at_zeta": float(clean.rejected.mean()), "tpr_at_zeta": float(trig.rejected.mean()),
            "zeta_score": clean.zeta_score, "fpr_at_zeta_score": float(clean.rejected_by_score.mean()),
            "tpr_at_zeta_score": float(trig.rejected_by_score.mean()),
            "auroc_count": detection_metrics(y, np.r_[clean.count, trig.count])["auroc"],
            "auroc_score": detection_metrics(y, np.r_[clean.score, trig.score])["auroc"],
            "mean_infected_clean": float(clean.count.mean()), "mean_infected_triggered": float(trig.count.mean())}


def _write_tables(out: Path, profile: HeadProfile, res: dict[str, Any]) -> None:
    """heads.csv (layer, head, eps, rates) and mlps.csv (layer, eps, rates) and the heat maps."""
    L, H = profile.shape
    heads = pd.DataFrame({"layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L),
                          "eps": profile.head_eps.flatten().numpy(),
                          "prototype_norm": profile.head_prototypes.norm(dim=-1).flatten().numpy()})
    mlps = pd.DataFrame({"layer": np.arange(L), "eps": profile.mlp_eps.numpy(),
                         "mean_norm": profile.mlp_means.norm(dim=-1).numpy()})
    panels_h, panels_m = [], []
    for key, title in (("clean", "clean test images"), ("triggered", "triggered test images")):
        if key in res:
            inf: Infection = res[key]
            heads[f"{key}_rate"] = inf.head_rates.ravel()
            mlps[f"{key}_rate"] = inf.mlp_rates
            panels_h.append((f"heads: {title}", inf.head_rates))
            panels_m.append((f"MLPs: {title}", inf.mlp_rates[:, None]))
    heads.to_csv(out / "heads.csv", index=False)
    mlps.to_csv(out / "mlps.csv", index=False)
    if panels_h:
        save_heatmap(out / "heads_infection.png", panels_h, col_label="head")
        save_heatmap(out / "mlps_infection.png", panels_m, col_label="MLP")


def _layer_summary(res: dict[str, Any]) -> dict[str, Any]:
    """Per layer: mean head infection rate and MLP infection rate, triggered minus clean."""
    c, t = res["clean"], res["triggered"]
    return {"head_rate_increase_per_layer": (t.head_rates.mean(1) - c.head_rates.mean(1)).round(4).tolist(),
            "max_head_rate_increase_per_layer": (t.head_rates - c.head_rates).max(1).round(4).tolist(),
            "mlp_rate_increase_per_layer": (t.mlp_rates - c.mlp_rates).round(4).tolist()}


def heads_analyze(model: ClipBundle | str | os.PathLike, clean: str | os.PathLike, out_dir: str | os.PathLike, *,
                  test: str | os.PathLike | None = None, attack_spec: str | os.PathLike | None = None,
                  classes: str | os.PathLike | None = None, fpr: float = DEFAULT_FPR,
                  filter_fpr: float = DEFAULT_FILTER_FPR, split: Sequence[float] = DEFAULT_SPLIT, seed: int = 0,
                  batch_size: int = 64, tol: float | None = DEFAULT_TOL, device: str | None = DEFAULT_DEVICE,
                  progress: bool = True) -> dict[str, Any]:
    """Fit the clean profile of a ViT model; with ``test``, infection heat maps and the filter's quality.

    Args:
        model: a model folder or a :class:`ClipBundle` with a ViT image tower.
        clean: manifest of clean images (labels not needed): prototypes, eps and zeta.
        out_dir: ``profile.safetensors``/``profile.json``, ``heads.csv``, ``mlps.csv``, the heat maps
            ``heads_infection.png`` / ``mlps_infection.png`` (with ``test``), ``run.json``.
        test: images to measure infection on (clean copies; triggered copies with ``attack_spec``).
        attack_spec: ``attack.json`` of ``clipguard poison``: its trigger (test variant) on ``test``.
        classes: ``classes.json``: leaves the target class's images out of the triggered set.
        fpr, filter_fpr, split, seed: see :func:`clipguard.analyze.fit_profile`.
        tol: largest relative reconstruction error accepted (``None``: only recorded).

    Returns:
        The ``run.json`` record; ``filter`` holds AUROC and FPR/TPR at zeta with an attack.
    """
    if attack_spec is not None and test is None:
        raise ConfigError("--attack needs --test TEST_MANIFEST: the trigger is applied to the test images")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rec = RunRecord("heads analyze", {"model": str(model if not isinstance(model, ClipBundle) else model.name),
                                      "clean": str(clean), "test": str(test or ""), "attack_spec": str(attack_spec or ""),
                                      "fpr": fpr, "filter_fpr": filter_fpr, "split": list(split), "seed": seed})
    bundle = load_vit(model, device)
    profile, _, _ = _fit(bundle, clean, rec, fpr=fpr, filter_fpr=filter_fpr, split=split, seed=seed,
                         batch_size=batch_size, tol=tol, progress=progress)
    profile.save(out)
    res: dict[str, Any] = {}
    if test is not None:
        with rec.stage("test"):
            res = _test_infection(bundle, profile, test, attack_spec, classes, seed=seed, batch_size=batch_size,
                                  progress=progress)
        rec["test"] = {k: v for k, v in res.items() if not isinstance(v, Infection)}
        rec["clean_fpr_per_head_mean"] = float(res["clean"].head_rates.mean())
        rec["clean_filter_fpr"] = float(res["clean"].rejected.mean())
    if "triggered" in res:
        rec["filter"] = _filter_summary(res["clean"], res["triggered"])
        rec["layers"] = _layer_summary(res)
    _write_tables(out, profile, res)
    rec.save(out)
    return rec.data


def _mlp_choice(bundle: ClipBundle, profile: HeadProfile, clean: Decomposition, labels: np.ndarray,
                classes: str | os.PathLike | None, mlp_layers: str | Sequence[int], budget: float
                ) -> tuple[tuple[int, ...], dict[str, Any]]:
    """The MLP blocks to mean-ablate: given, none, or chosen under the budget (``auto``)."""
    if mlp_layers == "none":
        return (), {"rule": "none"}
    if mlp_layers != "auto":
        return tuple(int(i) % profile.shape[0] for i in mlp_layers), {"rule": "given"}
    if classes is None:
        return (), {"rule": "auto", "skipped": "needs --classes (class names for a zero-shot accuracy on the clean "
                                              "images); no MLP replaced"}
    names, templates = read_classes(classes)
    clf = build_classifier(bundle, names, templates).cpu()
    known = labels if len(labels) and (labels >= 0).all() else None
    layers, record = choose_mlp_layers(profile, clean, clf, labels=known, budget=budget)
    return layers, {"rule": "auto", **record}


def _evaluation(bundle: ClipBundle, test: str | os.PathLike, classes: str | os.PathLike,
                attack_spec: str | os.PathLike | None, seed: int, progress: bool) -> dict[str, Any]:
    return headline(evaluate_model(bundle, test, classes, attack_spec=attack_spec, seed=seed, progress=progress))


def heads_repair(model: ClipBundle | str | os.PathLike, clean: str | os.PathLike, out_dir: str | os.PathLike, *,
                 classes: str | os.PathLike | None = None, mlp_layers: str | Sequence[int] = "auto",
                 budget: float = 0.03, test: str | os.PathLike | None = None,
                 attack_spec: str | os.PathLike | None = None, fpr: float = DEFAULT_FPR,
                 filter_fpr: float = DEFAULT_FILTER_FPR, split: Sequence[float] = DEFAULT_SPLIT, seed: int = 0,
                 batch_size: int = 64, tol: float | None = DEFAULT_TOL, device: str | None = DEFAULT_DEVICE,
                 progress: bool = True) -> dict[str, Any]:
    """Write a repaired model folder: infected heads -> prototypes (per input), chosen MLPs -> clean means.

    Args:
        model, clean, fpr, filter_fpr, split, seed, batch_size, tol: as :func:`heads_analyze`.
        out_dir: the repaired model folder (``model.safetensors`` = the original weights,
            ``repair.safetensors``, ``model.json["repair"]``, ``profile/``, ``run.json``); load it with
            :func:`clipguard.models.load_model` like any model.
        classes: ``classes.json``: zero-shot accuracy on the clean images for ``mlp_layers="auto"``
            (against their labels when the clean manifest has them, else agreement with the model), and
            the evaluation with ``test``.
        mlp_layers: ``"auto"`` (longest suffix of blocks within ``budget``), ``"none"``, or block indices.
        budget: largest clean-accuracy drop allowed for the MLP choice (a share).
        test, attack_spec: CA (and ASR) before and after, in ``run.json``.
    """
    if test is not None and classes is None:
        raise ConfigError("evaluation with --test needs --classes CLASSES_JSON")
    rec = RunRecord("heads repair", {"model": str(model if not isinstance(model, ClipBundle) else model.name),
                                     "clean": str(clean), "classes": str(classes or ""), "budget": budget,
                                     "mlp_layers": mlp_layers if isinstance(mlp_layers, str) else list(mlp_layers),
                                     "test": str(test or ""), "attack_spec": str(attack_spec or ""), "fpr": fpr,
                                     "filter_fpr": filter_fpr, "split": list(split), "seed": seed})
    bundle = load_vit(model, device)
    profile, d, labels = _fit(bundle, clean, rec, fpr=fpr, filter_fpr=filter_fpr, split=split, seed=seed,
                              batch_size=batch_size, tol=tol, progress=progress)
    with rec.stage("choose_mlp_layers"):
        layers, rec["mlp_choice"] = _mlp_choice(bundle, profile, d, labels, classes, mlp_layers, budget)
    rec["mlp_layers"] = list(layers)
    if test is not None:
        with rec.stage("evaluate_before"):
            rec["before"] = _evaluation(bundle, test, classes, attack_spec, seed, progress)
    attach_repair(bundle.model, profile.to_repair(layers, {"source_model": rec["config"]["model"],
                                                           "mlp_rule": rec["mlp_choice"]["rule"]}))
    out = save_model(bundle, out_dir, extra={"repaired_from": rec["config"]["model"]})
    profile.save(out / "profile")
    if test is not None:
        with rec.stage("evaluate_after"):
            rec["after"] = _evaluation(bundle, test, classes, attack_spec, seed, progress)
        rec.data.update(before_after(rec["before"], rec["after"]))
    rec.save(out)
    return rec.data


def heads_filter(model: ClipBundle | str | os.PathLike, inputs: str | os.PathLike, out_dir: str | os.PathLike, *,
                 clean: str | os.PathLike | None = None, profile: str | os.PathLike | None = None,
                 attack_spec: str | os.PathLike | None = None, rule: str = "score", fpr: float = DEFAULT_FPR,
                 filter_fpr: float = DEFAULT_FILTER_FPR, split: Sequence[float] = DEFAULT_SPLIT, seed: int = 0,
                 batch_size: int = 64, tol: float | None = DEFAULT_TOL, device: str | None = DEFAULT_DEVICE,
                 progress: bool = True) -> dict[str, Any]:
    """Score the images of ``inputs`` with the infected-head filter; write ``scores.parquet`` + ``run.json``
    (``n_skipped``, ``skip_counts``: the inputs left unscored by reason) and ``skipped.csv`` (each of them).

    Columns: ``id``, ``heads_score`` (infected heads, ties broken by how far below eps; higher = more
    suspicious), ``heads_rank`` (1 = most suspicious), ``heads_infected`` (count), ``is_heads_suspect``
    (rejected by ``rule``), and ``poisoned`` when the manifest has it (then AUROC in ``run.json``).

    Args:
        clean / profile: clean images to fit the profile on, or a folder written by
            ``clipguard heads analyze`` (exactly one of them).
        attack_spec: apply that trigger (test variant) to every input first (to measure the filter's TPR).
        rule: ``"score"``: reject when the tie-broken score exceeds ``zeta_score`` (reaches the requested
            rate); ``"count"``: the paper's rule, more than ``zeta`` infected heads (integer counts reach
            only a few rates, usually fewer false positives than asked and fewer detections).
        Others: as :func:`heads_analyze`.
    """
    check_choice("rule", rule, ("score", "count"))
    if (clean is None) == (profile is None):
        raise ConfigError("pass --clean CLEAN_MANIFEST (to fit the profile) or --profile DIR (written by "
                          "`clipguard heads analyze`), exactly one of them")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rec = RunRecord("heads filter", {"model": str(model if not isinstance(model, ClipBundle) else model.name),
                                     "inputs": str(inputs), "clean": str(clean or ""), "profile": str(profile or ""),
                                     "attack_spec": str(attack_spec or ""), "rule": rule, "fpr": fpr,
                                     "filter_fpr": filter_fpr, "seed": seed})
    bundle = load_vit(model, device)
    if clean is not None:
        prof, _, _ = _fit(bundle, clean, rec, fpr=fpr, filter_fpr=filter_fpr, split=split, seed=seed,
                          batch_size=batch_size, tol=tol, progress=progress)
    else:
        prof = HeadProfile.load(profile)
        if tuple(prof.head_prototypes.shape) != tower_shape(bundle.model.visual):
            raise ConfigError(f"{profile}: the profile's heads {tuple(prof.head_prototypes.shape)} do not fit "
                              f"{bundle.name} {tower_shape(bundle.model.visual)}; analyse this model")
    trigger, _ = _trigger_and_target(attack_spec)
    with rec.stage("decompose_inputs"):
        d, _, ids, skipped = _decompose_manifest(bundle, inputs, trigger=trigger, seed=seed, batch_size=batch_size,
                                                 progress=progress, desc="input")
    inf = infection(prof, d)
    score = inf.score
    rejected = inf.rejected_by_score if rule == "score" else inf.rejected
    table = pd.DataFrame({"id": ids, "heads_score": score, "heads_rank": rank_desc(score),
                          "heads_infected": inf.count.astype(np.int64), "is_heads_suspect": rejected})
    df = read_manifest(inputs).df
    if "poisoned" in df.columns:
        truth = dict(zip(df["id"].astype(str), df["poisoned"].astype(bool)))
        table["poisoned"] = np.array([truth[i] for i in ids], dtype=bool)
        if 0 < table["poisoned"].sum() < len(table):
            rec["metrics"] = detection_metrics(table["poisoned"].to_numpy(), score)
    with atomic_path(out / "scores.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    if len(skipped):  # the inputs that got no score, with the reason
        skipped.save(out / "skipped.csv")
    rec.data.update(n_inputs=len(table), n_skipped=len(skipped), skip_counts=skipped.counts(),
                    n_suspects=int(rejected.sum()), rule=rule,
                    zeta=prof.zeta, zeta_score=prof.zeta_score, data_fingerprint=fingerprint_files([inputs]))
    rec.save(out)
    return rec.data
