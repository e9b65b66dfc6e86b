"""``clipguard heads analyze | repair | filter``: thin layers over :mod:`clipguard.pipeline.heads`."""
from __future__ import annotations

from typing import Any, Callable

import click

from clipguard.cli.options import default_of, device_option, echo_json, out_option, seed_option
from clipguard.errors import ConfigError
from clipguard.pipeline.heads import heads_analyze, heads_filter, heads_repair
from clipguard.report import build_heads_report

__all__ = ["heads"]


def _common(func: Callable) -> Callable:
    """Options shared by the three sub-commands (calibration, batching, the report)."""
    for opt in reversed([
        click.option("--fpr", type=float, default=default_of(heads_analyze, "fpr"), show_default=True,
                     help="Clean false-positive rate of each head's infection test (calibrates eps per head)."),
        click.option("--filter-fpr", type=float, default=default_of(heads_analyze, "filter_fpr"), show_default=True,
                     help="Clean false-positive rate of the input filter (calibrates zeta)."),
        click.option("--batch-size", type=int, default=default_of(heads_analyze, "batch_size"), show_default=True,
                     help="Images per decomposition batch."),
        seed_option(default_of(heads_analyze, "seed")),
        device_option(),
        click.option("--no-report", is_flag=True, help="Do not write OUT/report.html (the HTML report of the run)."),
    ]):
        func = opt(func)
    return func


def _report(out: str, no_report: bool) -> dict[str, str]:
    """``{"report": path}`` of the page written in ``out``, or nothing with --no-report."""
    return {} if no_report else {"report": str(build_heads_report(out))}


@click.group()
def heads() -> None:
    """Attention heads and MLPs of a ViT CLIP: infected-head analysis, repair and input filter."""


@heads.command()
@click.argument("model_dir", type=click.Path())
@click.option("--clean", required=True, type=click.Path(), help="Manifest of clean images (no labels needed).")
@out_option("Folder for the profile, heads.csv, mlps.csv, heat maps and run.json.")
@click.option("--test", type=click.Path(), default=None, help="Images to measure infection on (heat maps).")
@click.option("--attack", "attack_spec", type=click.Path(), default=None,
              help="attack.json of `clipguard poison`: its trigger on the --test images.")
@click.option("--classes", type=click.Path(), default=None, help="classes.json: leave the target's images out.")
@_common
@click.pass_obj
def analyze(obj: dict, model_dir: str, clean: str, out: str, test: str | None, attack_spec: str | None,
            classes: str | None, no_report: bool, **kw: Any) -> None:
    """Prototypes and calibrated thresholds of every head and MLP; infection heat maps with --test."""
    rec = heads_analyze(model_dir, clean, out, test=test, attack_spec=attack_spec, classes=classes,
                        progress=obj["progress"], **kw)
    echo_json({"out": out, "zeta": rec["profile"]["zeta"], "reconstruction_error": rec["reconstruction_error"],
               **{k: rec[k] for k in ("clean_fpr_per_head_mean", "clean_filter_fpr", "filter", "layers") if k in rec},
               **_report(out, no_report)})


def _layers(value: str) -> str | list[int]:
    if value in ("auto", "none"):
        return value
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--mlp-layers must be auto, none or block indices such as 2,3 (got {value!r})") from None


@heads.command()
@click.argument("model_dir", type=click.Path())
@click.option("--clean", required=True, type=click.Path(), help="Manifest of clean images (no labels needed).")
@out_option("Folder for the repaired model (usable by eval, embed, scan --model).")
@click.option("--classes", type=click.Path(), default=None,
              help="classes.json: zero-shot accuracy for --mlp-layers auto, and the evaluation with --test.")
@click.option("--mlp-layers", default="auto", show_default=True,
              help="MLPs replaced by their clean means: auto (latest blocks within --budget), none, or e.g. 2,3.")
@click.option("--budget", type=float, default=default_of(heads_repair, "budget"), show_default=True,
              help="Largest clean-accuracy drop (share) allowed when choosing the MLP blocks.")
@click.option("--test", type=click.Path(), default=None, help="Labelled test manifest: CA before and after.")
@click.option("--attack", "attack_spec", type=click.Path(), default=None, help="attack.json: ASR before and after.")
@_common
@click.pass_obj
def repair(obj: dict, model_dir: str, clean: str, out: str, classes: str | None, mlp_layers: str, budget: float,
           test: str | None, attack_spec: str | None, no_report: bool, **kw: Any) -> None:
    """Write a repaired copy of MODEL_DIR: infected heads -> prototypes per input, late MLPs -> clean means."""
    rec = heads_repair(model_dir, clean, out, classes=classes, mlp_layers=_layers(mlp_layers), budget=budget,
                       test=test, attack_spec=attack_spec, progress=obj["progress"], **kw)
    echo_json({"out": out, "mlp_layers": rec["mlp_layers"],
               **{k: rec[k] for k in ("before", "after", "ca_change", "asr_reduction") if k in rec},
               **_report(out, no_report)})


@heads.command(name="filter")
@click.argument("model_dir", type=click.Path())
@click.option("--input", "inputs", required=True, type=click.Path(), help="Manifest of the images to screen.")
@click.option("--clean", type=click.Path(), default=None, help="Manifest of clean images to fit the profile on.")
@click.option("--profile", type=click.Path(), default=None, help="Or a folder written by `clipguard heads analyze`.")
@out_option("Folder for scores.parquet and run.json.")
@click.option("--attack", "attack_spec", type=click.Path(), default=None,
              help="attack.json: apply its trigger to every input first (measures the filter's TPR).")
@click.option("--rule", type=click.Choice(["score", "count"]), default="score", show_default=True,
              help="score: infected heads with ties broken by margin, above its calibrated threshold; "
                   "count: more than zeta infected heads (the paper's rule).")
@_common
@click.pass_obj
def filter_(obj: dict, model_dir: str, inputs: str, clean: str | None, profile: str | None, out: str,
            attack_spec: str | None, no_report: bool, **kw: Any) -> None:
    """Score images by their infected heads; reject those with more than zeta (scores.parquet)."""
    rec = heads_filter(model_dir, inputs, out, clean=clean, profile=profile, attack_spec=attack_spec,
                       progress=obj["progress"], **kw)
    echo_json({"out": out, **{k: rec[k] for k in ("n_inputs", "n_suspects", "rule", "zeta", "zeta_score", "n_skipped",
                                                  "metrics") if k in rec}, **_report(out, no_report)})
