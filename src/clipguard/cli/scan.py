"""Commands that score samples: ``scan`` (over :func:`clipguard.distributed.scan_sharded`, whose
scores equal :func:`clipguard.detect.run_scan`'s, shard by shard and resumable; or
:func:`clipguard.pipeline.scan_dataset` with ``--model/--data``) and ``detectors``.

Every scan option is a :class:`~clipguard.detect.ScanConfig` field of the same name, with the
field's default and, for the named choices, the library's list of them; ``--dynamics`` is
``run_scan(dynamics=...)`` and ``--record`` (repeatable) ``run_scan(records=[...])``.
"""
from __future__ import annotations

from typing import Any, Callable

import click

from clipguard.cli.options import (
    default_of,
    device_option,
    distributor_options,
    out_option,
    param_option,
    seed_option,
)
from clipguard.detect import (
    BACKENDS,
    DETECTORS,
    INDEXES,
    REFERENCE_MODES,
    ScanConfig,
    ScanResult,
    run_scan,
    top_suspects,
)
from clipguard.detect.detectors import nest_params
from clipguard.detect.detectors.records import RECORD_KINDS
from clipguard.detect.store import default_detector, format_tradeoff, read_share
from clipguard.distributed import scan_sharded
from clipguard.errors import ConfigError
from clipguard.io.reader import can_memory_map
from clipguard.report import build_scan_report
from clipguard.pipeline import scan_dataset
from clipguard.utils.io import read_json_object

__all__ = ["detectors", "scan"]

_SCAN = ScanConfig()

_SCAN_OPTIONS = (
    click.option("-k", "--k", "k", default=_SCAN.k, show_default=True, help="Neighbours per sample."),
    click.option("--reference", default=_SCAN.reference, show_default=True, type=click.Choice(REFERENCE_MODES),
                 help="global: exact kNN over the whole set; batch: the DAO paper's per-batch reference; "
                      "reference: one fixed random reference of --reference-size; multi_reference: "
                      "--n-references random references, scores averaged; auto: chosen from N "
                      "(recorded in run.json)."),
    click.option("--batch-size", default=_SCAN.batch_size, show_default=True,
                 help="Reference batch size (--reference batch)."),
    click.option("--reference-size", type=int, default=_SCAN.reference_size,
                 help="M of the reference modes [default: the mode's own, capped at N; recorded in run.json]."),
    click.option("--n-references", type=int, default=_SCAN.n_references,
                 help="R of multi_reference [default: the mode's own; recorded in run.json]."),
    click.option("--index", default=_SCAN.index, show_default=True, type=click.Choice(INDEXES),
                 help="FAISS index of the reference modes: flat (exact) or ivf (recall written to run.json)."),
    click.option("--nlist", type=int, default=_SCAN.nlist, help="IVF lists [default: 4*sqrt(M)]."),
    click.option("--nprobe", type=int, default=_SCAN.nprobe,
                 help="IVF lists probed per query [default: tuned on a sample to reach --target-recall]."),
    click.option("--target-recall", default=_SCAN.target_recall, show_default=True,
                 help="recall@k the IVF nprobe tuning aims for."),
    click.option("--backend", default=_SCAN.backend, show_default=True, type=click.Choice(BACKENDS),
                 help="Exact kNN backend of --reference global."),
    click.option("--suspect-share", default=_SCAN.suspect_share, show_default=True,
                 help="Share of the samples marked is_<detector>_suspect."),
    seed_option(_SCAN.seed),
    device_option("Where the torch kNN search (global/batch references) and the --model embedding run: "
                  "auto (the GPU if torch sees one, else the CPU), cpu, cuda, cuda:N."),
)
"""The options that become :class:`ScanConfig` fields (parameter name = field name)."""


def _scan_options(f: Callable) -> Callable:
    for option in reversed(_SCAN_OPTIONS):
        f = option(f)
    return f


def _check_inputs(emb_dir: str | None, model_dir: str | None, manifest: str | None, out: str | None) -> bool:
    """True when the input is a dataset to embed first (--model/--data), False for EMB_DIR."""
    from_data = model_dir is not None or manifest is not None
    if from_data == (emb_dir is not None):
        raise ConfigError("give exactly one input: EMB_DIR, or --model MODEL_DIR with --data MANIFEST")
    if from_data and (model_dir is None or manifest is None or out is None):
        raise ConfigError("scanning a dataset needs --model MODEL_DIR, --data MANIFEST and --out OUT")
    return from_data


def _echo_result(res: ScanResult) -> None:
    """Where the scores went, the reference plan, each record's join, skipped detectors and
    (with ground truth) metrics."""
    plan = res.info.get("reference_plan", {})
    click.echo(f"scored {len(res.scores)} samples -> {res.out_dir / 'scores'}")
    click.echo(f"reference: {plan.get('mode')} ({plan.get('reason')})"
               + (f"; kNN recall@k {res.info['recall_at_k']:.4f}" if "recall_at_k" in res.info else ""))
    for kind, d in res.records_info.items():
        click.echo(f"{kind}: {d['n_rows'] - d['n_rows_without_record']} of {d['n_rows']} samples have a record "
                   f"in {d['source']} ({d['n_rows_without_record']} without: {RECORD_KINDS[kind].detector} NaN, "
                   f"least suspicious; {d['n_record_ids_unmatched']} record ids match no sample)")
    for det, why in res.skipped_detectors.items():
        click.echo(f"skipped {det}: {why}")
    note = (read_json_object(res.run_json, "the scan record").get("embedding_model") or {}).get("note")
    if note:
        click.echo(f"note: {note}")
    _echo_share(res)
    if res.metrics:
        w = max(10, *(len(d) for d in res.detectors))
        click.echo(f"{'detector':{w}s} {'AUROC':>7s} {'AUPRC':>7s} {'TPR@1%FPR':>10s}")
        for det, m in res.metrics.items():
            click.echo(f"{det:{w}s} {m['auroc']:7.4f} {m['auprc']:7.4f} {m['tpr_at_1pct_fpr']:10.4f}")


def _echo_share(res: ScanResult) -> None:
    """The estimated poisoned share (run.json ``share_estimate``) and the trade-off table."""
    est, curve = read_share(res.out_dir)
    if est is None:
        return
    if "skipped" in est:
        click.echo(f"poisoned share: not estimated ({est['skipped']})")
        return
    click.echo(f"poisoned share: {est['reason'].split('; ')[0]}")
    click.echo("  (it counts the poison the scores separate from the clean tail; poison ranked among clean rows is "
               "neither in it nor in its interval)")
    if curve is not None:
        click.echo(f"trade-off (top rows by {est['detector']}_score; exp. = from the estimate) -> "
                   f"{res.out_dir / 'tradeoff.csv'}")
        click.echo(format_tradeoff(curve))


def _echo_top(res: ScanResult, detector: str, n: int) -> None:
    """The ``n`` most suspicious samples by ``detector``."""
    cols = ["id", f"{detector}_score", f"{detector}_rank", f"is_{detector}_suspect"] + (
        ["poisoned"] if "poisoned" in res.scores.columns else [])
    click.echo(top_suspects(res, detector, n)[cols].to_string())


@click.command()
@click.argument("emb_dir", type=click.Path(), required=False)
@click.option("--model", "model_dir", type=click.Path(), default=None,
              help="Model folder: embed --data with it first (into OUT/embeddings), then scan.")
@click.option("--data", "manifest", type=click.Path(), default=None,
              help="Dataset manifest to embed with --model (instead of EMB_DIR).")
@out_option("Output folder (default: EMB_DIR; required with --model/--data).", required=False)
@click.option("--detector", "detectors", multiple=True,
              help="Detector name (repeatable; default: every detector whose inputs the folder has; "
                   "`clipguard detectors` lists them).")
@click.option("--dynamics", "dynamics", type=click.Path(), default=default_of(run_scan, "dynamics"),
              help="Model folder trained on these pairs with --record-epochs N: its training-dynamics record, "
                   "joined by id, adds the detector learning_speed (with EMB_DIR).")
@click.option("--record", "records", type=click.Path(), multiple=True,
              help="A per-row record of these pairs, joined by id (repeatable; with EMB_DIR): a folder or parquet "
                   "file, its kind inferred. stability.parquet (`clipguard probe MODEL_DIR MANIFEST --out DIR`) "
                   "adds the detector perturbation, dynamics.parquet learning_speed.")
@_scan_options
@distributor_options
@click.option("--part-rows", default=default_of(scan_sharded, "part_rows"), show_default=True,
              help="Rows per shard of the scan (whole batches with --reference batch).")
@click.option("--keep-parts", is_flag=True, help="Keep OUT/parts/ (the per-shard results) after the scan.")
@click.option("--no-report", is_flag=True, help="Do not write OUT/report.html (the HTML report of the scan).")
@param_option("Detector parameter DETECTOR.NAME=VALUE (repeatable), e.g. fused.method=rank, "
              "caption_dup.source=text, fused.caption_dup__source=text (a component of fused).")
@click.option("--top", default=0, show_default=True, help="Print the N most suspicious samples.")
@click.option("--rank-by", default=None,
              help="Detector whose suspects --top prints [default: the first --detector, else the default ranking: "
                   "perturbation with a probe record, else fused].")
@click.pass_obj
def scan(obj: dict, emb_dir: str | None, model_dir: str | None, manifest: str | None, out: str | None,
         detectors: tuple[str, ...], dynamics: str | None, records: tuple[str, ...], params: dict[str, Any],
         top: int, rank_by: str | None, distributor: str, address: str | None, processes: int | None, retries: int,
         part_rows: int, keep_parts: bool, no_report: bool, **options: Any) -> None:
    """Score every sample of an embedding folder EMB_DIR, or of a dataset embedded first with a
    model (--model MODEL_DIR --data MANIFEST --out OUT); higher = more suspicious."""
    from_data = _check_inputs(emb_dir, model_dir, manifest, out)
    if from_data and dynamics is not None:
        raise ConfigError("--dynamics scans an EMB_DIR: embed first (`clipguard embed MODEL_DIR MANIFEST --out EMB`), "
                          "then `clipguard scan EMB --dynamics MODEL_DIR`")
    if from_data and records:
        raise ConfigError("--record scans an EMB_DIR: embed first (`clipguard embed MODEL_DIR MANIFEST --out EMB`), "
                          "then `clipguard scan EMB --record DIR`")
    if from_data and (distributor != "sequential" or address):
        raise ConfigError("--distributor/--address scan an EMB_DIR: embed first (`clipguard embed MODEL_DIR "
                          "MANIFEST --out EMB --distributor ray`), then `clipguard scan EMB --distributor ray`")
    if not from_data and out is None and not can_memory_map(emb_dir):
        raise ConfigError(f"{emb_dir} is a URL or Parquet input, where the scores cannot go; add --out OUT")
    config = ScanConfig(**options, detector_params=nest_params(params))
    names = list(detectors) or None
    if from_data:
        dres = scan_dataset(model_dir, manifest, out, detectors=names, config=config, progress=obj["progress"])
        click.echo(f"embedded {dres.embed.n_embedded} pairs, skipped {dres.embed.n_skipped} -> {dres.emb_dir}")
        res = dres.scan
    else:
        res = scan_sharded(emb_dir, out or emb_dir, detectors=names, config=config, dynamics=dynamics,
                           records=list(records), distributor=distributor, address=address, workers=processes,
                           retries=retries, part_rows=part_rows, keep_parts=keep_parts)
    _echo_result(res)
    if not no_report:
        click.echo(f"report -> {build_scan_report(res.out_dir, res.out_dir / 'report.html')}")
    if top:
        _echo_top(res, rank_by or (list(detectors) or [default_detector(res.detectors)])[0], top)


@click.command()
def detectors() -> None:
    """List the registered detectors."""
    for name in DETECTORS.names():
        cls = DETECTORS.get(name)
        doc = (cls.__doc__ or "").strip().splitlines()
        opt_in = "" if cls.in_default_scan else f" [opt-in: --detector {name}]"
        click.echo(f"{name}: {doc[0] if doc else ''}{opt_in}")
