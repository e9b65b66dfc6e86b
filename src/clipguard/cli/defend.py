"""``clipguard filter``, ``clipguard defend`` and ``clipguard defences``: thin layers over
:func:`clipguard.defend.filter_manifest`, :func:`clipguard.pipeline.defend_model` and
:data:`clipguard.defend.DEFENCES`."""
from __future__ import annotations

import inspect

import click

from clipguard.cli.options import default_of, device_option, echo_json, out_option, param_option, seed_option
from clipguard.defend import DEFENCES, filter_manifest
from clipguard.detect.share import DEFAULT_NULL, NULLS
from clipguard.pipeline.defend_model import defend_model
from clipguard.report import build_defend_report

__all__ = ["defences", "defend", "filter_"]


@click.command(name="filter")
@click.argument("manifest", type=click.Path())
@click.argument("scan_dir", type=click.Path())
@out_option("Folder for the filtered manifest, removed.csv and run.json.")
@click.option("--detector", default=default_of(filter_manifest, "detector"),
              help="Whose ranking decides [default: the scan's default ranking, run.json's default_detector: "
                   "perturbation when the scan joined a probe record, else fused].")
@click.option("--share", default="auto", show_default=True,
              help="auto: from the poisoned share estimated from the scores, the largest top cut whose expected "
                   "precision is >= 0.5 (nothing when no poison is found; run.json records the estimate and why); "
                   "estimate: exactly the estimated number of rows; F: the top fraction F of the scored rows; "
                   "suspects: the scan's is_<detector>_suspect rows.")
@click.option("--top", type=int, default=None, help="Remove the top N rows instead.")
@click.option("--fdr", type=float, default=None,
              help="Remove the Benjamini-Hochberg cut at this false-discovery rate instead (e.g. 0.1).")
@click.option("--seed", type=int, default=None, help="Seed of the estimate's bootstrap [default: the scan's seed].")
@click.option("--null", "null", type=click.Choice(NULLS), default=DEFAULT_NULL, show_default=True,
              help="The null of the estimate and of the auto/estimate/--fdr cuts: envelope (a bound on the clean "
                   "tail if its hazard rate does not fall; nothing removed from the clean sets measured) or gamma "
                   "(fitted to the bulk; also finds poison merging into the clean tail, misreads other tails).")
def filter_(manifest: str, scan_dir: str, out: str, detector: str | None, share: str, top: int | None, fdr: float | None,
            seed: int | None, null: str) -> None:
    """Write MANIFEST without the suspects that `clipguard scan` (output SCAN_DIR) ranked highest."""
    res = filter_manifest(manifest, scan_dir, out, detector=detector, share=share, top=top, fdr=fdr, seed=seed,
                          null=null)
    msg = (f"cut: {res.reason}\n"
           f"removed {res.n_removed} of {res.n_rows} rows by {res.detector}, kept {res.n_kept}"
           + (f" ({res.n_unscored} unscored rows kept)" if res.n_unscored else "") + f" -> {res.manifest_path}")
    if res.poisoned_recall is not None:
        prec = "n/a" if res.poisoned_precision is None else f"{res.poisoned_precision:.3f}"
        msg += f"\nground truth: {res.poisoned_recall:.3f} of the poisoned rows removed; precision {prec}"
    click.echo(msg)


_TRAIN_OPTIONS = (("epochs", int), ("batch_size", int), ("lr", float), ("weight_decay", float), ("warmup_steps", int))


@click.command()
@click.argument("method", type=click.Choice(DEFENCES.names()))
@click.argument("model_dir", type=click.Path())
@click.option("--data", required=True, type=click.Path(),
              help="Finetuning defences: the CLEAN finetuning manifest. filter-retrain / abl: the training manifest.")
@out_option("Folder for the defended model, its checkpoints and run.json.")
@click.option("--test", type=click.Path(), default=None, help="Labelled test manifest: CA before and after.")
@click.option("--classes", type=click.Path(), default=None, help="classes.json of the test split.")
@click.option("--attack", "attack_spec", type=click.Path(), default=None,
              help="attack.json written by `clipguard poison`: ASR before and after.")
@param_option("A parameter of the defence, NAME=VALUE (repeatable; `clipguard defences` lists them).")
@click.option("--epochs", type=int, default=None, help="Training epochs [default: the defence's].")
@click.option("--batch-size", type=int, default=None, help="Pairs per step [default: the defence's].")
@click.option("--lr", type=float, default=None, help="Peak learning rate [default: the defence's].")
@click.option("--weight-decay", type=float, default=None, help="AdamW weight decay [default: the defence's].")
@click.option("--warmup-steps", type=int, default=None, help="Linear warm-up steps [default: the defence's].")
@click.option("--workers", default=default_of(defend_model, "workers"), show_default=True,
              help="Data-loader worker processes (augmentation runs there).")
@seed_option(default_of(defend_model, "seed"))
@device_option()
@click.option("--no-report", is_flag=True, help="Do not write OUT/report.html (the HTML report of the run).")
@click.pass_obj
def defend(obj: dict, method: str, model_dir: str, data: str, out: str, test: str | None, classes: str | None,
           attack_spec: str | None, params: dict, workers: int, seed: int, device: str, no_report: bool,
           **train: object) -> None:
    """Repair the model in MODEL_DIR with a registered defence (CleanCLIP, PAR, ...); CA/ASR before and after."""
    settings = {name: train[name] for name, _ in _TRAIN_OPTIONS if train.get(name) is not None}
    rec = defend_model(method, model_dir, data, out, test=test, classes=classes, attack_spec=attack_spec,
                       params=params, train=settings, workers=workers, seed=seed, device=device,
                       progress=obj["progress"])
    summary = {k: rec[k] for k in ("before", "after", "ca_change", "asr_reduction", "overlap") if k in rec}
    report = {} if no_report else {"report": str(build_defend_report(out))}
    echo_json({"method": method, "out": out, **summary, **report})


@click.command()
def defences() -> None:
    """List the registered model defences and their parameters."""
    for name in DEFENCES.names():
        cls = DEFENCES.get(name)
        sig = [f"{n}={p.default!r}" for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self"]
        click.echo(f"{name} ({cls.kind}): {cls.summary}")
        click.echo(f"    parameters: {', '.join(sig) or 'none'}")
