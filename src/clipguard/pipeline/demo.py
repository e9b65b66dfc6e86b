"""``clipguard demo``: the whole pipeline on the embedded shapes world, on a CPU, in minutes.

synth (shapes world) -> poison (BadNets, dirty-label) -> train (tiny CLIP) -> embed -> scan
(every detector, three references) -> zero-shot eval (CA, ASR) -> ``summary.json`` + a printed
table (:func:`format_summary`).

Example::

    from clipguard.pipeline import DemoConfig, format_summary, run_demo

    print(format_summary(run_demo(DemoConfig(out="demo", n_train=2000, epochs=2))))
"""
from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clipguard.attacks import get_trigger, poison_dataset
from clipguard.data.manifest import read_manifest
from clipguard.data.synth import generate_world
from clipguard.detect import run_scan
from clipguard.report import build_scan_report
from clipguard.embed import embed_dataset
from clipguard.evaluate.api import evaluate_model
from clipguard.models import ClipBundle, load_model
from clipguard.train import TrainConfig, TrainResult, train_from_manifest
from clipguard.utils.io import read_json, write_json
from clipguard.utils.progress import progress_enabled
from clipguard.utils.runrecord import RunRecord

__all__ = ["DEMO_DEVICE", "DemoConfig", "format_summary", "run_demo"]

DEMO_DEVICE = "cpu"
"""Where the demo runs unless told otherwise: the CPU, whatever the machine has, so that its
figures are the README's (the library's default, ``DEFAULT_DEVICE = "auto"``, would train on a GPU
where there is one, and GPU training is seeded but not bit-reproducible)."""


@dataclass
class DemoConfig:
    """The demo's experiment. Its defaults reach CA >= 0.9 and ASR >= 0.9 in about five minutes on
    two CPU cores, and are the configuration behind the README's figures: they are the demo's own
    values, not the library defaults, so that those figures do not move when a default does.

    ``device``: :data:`DEMO_DEVICE` (the CPU); ``"auto"`` for the GPU if there is one, ``"cuda"``.
    Every stage runs there (training, embedding, the kNN search of the scan, the evaluation).
    """

    out: str = "demo"
    n_train: int = 20000
    n_test: int = 2000
    poison_rate: float = 0.05
    target: str = "star"
    attack: str = "badnets"
    attack_params: dict = field(default_factory=lambda: {"pattern": "checker", "size": 8, "cell": 2,
                                                         "location": "random"})
    model: str = "tiny-rn"
    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    k: int = 16
    scan_references: tuple[str, ...] = ("auto", "multi_reference", "batch")
    scan_batch_size: int = 2048
    seed: int = 0
    resume: bool = False
    device: str = DEMO_DEVICE
    report: bool = True


@dataclass
class _Folders:
    """The stage outputs under the demo's folder."""

    out: Path

    @property
    def world(self) -> Path:
        return self.out / "world"

    @property
    def poisoned(self) -> Path:
        return self.out / "poisoned"

    @property
    def model(self) -> Path:
        return self.out / "model"

    @property
    def embeddings(self) -> Path:
        return self.out / "embeddings"


def _synth(config: DemoConfig, f: _Folders, progress: bool) -> dict[str, Any]:
    """The shapes world (kept when resuming); returns its ``classes.json``."""
    if not (f.world / "classes.json").is_file():
        generate_world(f.world, n_train=config.n_train, n_test=config.n_test, seed=config.seed, progress=progress)
    return read_json(f.world / "classes.json")


def _poison(config: DemoConfig, f: _Folders, templates: list[str], progress: bool) -> None:
    """The poisoned training set (kept when resuming), captions from the world's templates."""
    if (f.poisoned / "attack.json").is_file() and (f.poisoned / "manifest.parquet").is_file():
        return  # the manifest is written last: both there = a finished poisoning
    trigger = get_trigger(config.attack, **config.attack_params)
    poison_dataset(read_manifest(f.world / "train" / "manifest.parquet"), f.poisoned, trigger,
                   target=config.target, rate=config.poison_rate, templates=templates,
                   seed=config.seed, progress=progress)


def _train(config: DemoConfig, f: _Folders, progress: bool) -> TrainResult:
    """Train the model on the poisoned set (an interrupted training resumes)."""
    tcfg = TrainConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed)
    _, res = train_from_manifest(f.poisoned / "manifest.parquet", f.model, model=config.model,
                                 config=tcfg, progress=progress, device=config.device)
    return res


def _embed(config: DemoConfig, f: _Folders, progress: bool) -> ClipBundle:
    """Embed the poisoned set with the trained model; returns the model (for the evaluation)."""
    bundle = load_model(f.model, device=config.device)
    embed_dataset(bundle, read_manifest(f.poisoned / "manifest.parquet"), f.embeddings, progress=progress,
                  device=config.device)
    return bundle


def _scan(config: DemoConfig, f: _Folders) -> dict[str, dict]:
    """One scan per reference mode; returns ``{reference: {detector: metrics}}``."""
    detection_by_ref = {}
    for ref in config.scan_references:
        res = run_scan(f.embeddings, f.out / f"scan_{ref}", k=config.k, reference=ref,
                       batch_size=config.scan_batch_size, seed=config.seed, device=config.device)
        detection_by_ref[ref] = res.metrics
    return detection_by_ref


def _summary(config: DemoConfig, ev: dict, spec: dict, train_res: TrainResult,
             detection_by_ref: dict[str, dict]) -> dict[str, Any]:
    """``summary.json`` without the timings."""
    main_ref = config.scan_references[0]
    return {
        "clean_accuracy": ev["clean_accuracy"],
        "attack_success_rate": ev["attack_success_rate"],
        "attack_success_rate_template_mean": ev["attack_success_rate_template_mean"],
        "attack_success_rate_per_template": ev["attack_success_rate_per_template"],
        "asr_convention": ev["asr_convention"],
        "poison_rate": config.poison_rate,
        "n_poisoned": spec["n_poisoned"],
        "n_train": train_res.n_pairs,
        "n_test": ev["n_test"],
        "attack": spec["trigger"],
        "target": config.target,
        "model": config.model,
        "epochs": config.epochs,
        "detection_reference": main_ref,
        "detection": detection_by_ref[main_ref],
        "detection_by_reference": detection_by_ref,
        "train_history": train_res.history,
    }


def run_demo(config: DemoConfig | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Run the demo pipeline into ``config.out``; returns (and writes) ``summary.json``.

    With ``resume=False`` (default) earlier outputs in ``config.out`` are removed first; with
    ``resume=True`` finished stages are kept and an interrupted training continues.

    Returns:
        The summary: ``clean_accuracy``, ``attack_success_rate`` (and per template),
        ``detection`` = ``{detector: {"auroc", "auprc", "tpr_at_1pct_fpr"}}`` of the first
        reference mode, ``detection_by_reference``, ``train_history``, ``seconds_by_stage``,
        ``seconds_total``, and the configuration's main values.
    """
    config = DemoConfig() if config is None else config
    f = _Folders(Path(config.out))
    if f.out.exists() and not config.resume:
        shutil.rmtree(f.out)
    f.out.mkdir(parents=True, exist_ok=True)
    rec = RunRecord("demo", asdict(config))
    t0 = time.perf_counter()
    with rec.stage("synth"):
        info = _synth(config, f, progress)
    with rec.stage("poison"):
        _poison(config, f, info["templates"], progress)
    with rec.stage("train"):
        train_res = _train(config, f, progress)
    with rec.stage("embed"):
        bundle = _embed(config, f, progress)
    with rec.stage("scan"), progress_enabled(progress):
        detection_by_ref = _scan(config, f)
    if config.report:  # the HTML report of the main scan, demo/report.html
        with rec.stage("report"):
            build_scan_report(f.out / f"scan_{config.scan_references[0]}", f.out / "report.html")
    with rec.stage("eval"):
        ev = evaluate_model(bundle, f.world / "test" / "manifest.parquet", f.world / "classes.json",
                            attack_spec=f.poisoned / "attack.json", seed=config.seed, progress=progress,
                            device=config.device)
    summary = _summary(config, ev, read_json(f.poisoned / "attack.json"), train_res, detection_by_ref)
    summary["seconds_by_stage"] = dict(rec["timings_s"])
    summary["seconds_total"] = round(time.perf_counter() - t0, 2)
    summary["seed"] = config.seed
    write_json(f.out / "summary.json", summary)
    rec["summary"] = {k: summary[k] for k in ("clean_accuracy", "attack_success_rate", "detection")}
    rec.save(f.out)
    return summary


def format_summary(s: dict[str, Any]) -> str:
    """A plain-text table of a demo summary (what ``clipguard demo`` prints)."""
    lines = [
        f"clipguard demo: {s['model']} on {s['n_train']} pairs, {s['attack']['attack']} at "
        f"{s['poison_rate']:.2%} ({s['n_poisoned']} poisoned), target {s['target']!r}",
        f"  clean accuracy (CA)        {s['clean_accuracy']:.4f}",
        f"  attack success rate (ASR)  {s['attack_success_rate']:.4f}   (template ensemble; "
        f"mean over {len(s['attack_success_rate_per_template'])} single templates "
        f"{s['attack_success_rate_template_mean']:.4f})",
        "",
        f"  {'detector':21s} " + " ".join(f"{ref + ' AUROC':>14s}" for ref in s["detection_by_reference"])
        + f" {'AUPRC':>8s} {'TPR@1%FPR':>10s}",
    ]
    main = s["detection"]
    for det in main:
        aurocs = " ".join(f"{s['detection_by_reference'][ref][det]['auroc']:14.4f}" for ref in s["detection_by_reference"])
        lines.append(f"  {det:21s} {aurocs} {main[det]['auprc']:8.4f} {main[det]['tpr_at_1pct_fpr']:10.4f}")
    lines.append(f"  (AUPRC and TPR@1%FPR with the {s['detection_reference']} reference)")
    lines.append("")
    lines.append("  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in s["seconds_by_stage"].items() if k != "total")
                 + f"; total {s['seconds_total']:.1f}")
    return "\n".join(lines)
