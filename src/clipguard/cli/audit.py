"""``clipguard discover``, ``clipguard audit`` and ``clipguard audit-calibrate``: thin layers over
:func:`clipguard.pipeline.discover_scan`, :func:`clipguard.pipeline.audit.audit_model` and
:func:`clipguard.pipeline.audit.calibrate_audits`."""
from __future__ import annotations

import click

from clipguard.analyze import DiscoverConfig, ReverseConfig
from clipguard.cli.options import default_of, device_option, echo_json, seed_option
from clipguard.pipeline.audit import audit_model, calibrate_audits
from clipguard.pipeline.discover import discover_scan, format_clusters
from clipguard.report import build_audit_report

__all__ = ["audit", "audit_calibrate", "discover"]

_D = DiscoverConfig()


@click.command()
@click.argument("scan_dir", type=click.Path())
@click.option("--out", type=click.Path(), default=None, help="Output folder [default: SCAN_DIR/discover].")
@click.option("--detector", default=None, help="Score column that picks the top samples [default: the scan's default].")
@click.option("--embeddings", type=click.Path(), default=None,
              help="The embedding folder the scan scored [default: the one its run.json names].")
@click.option("--top", type=float, default=_D.top, show_default=True,
              help="Top-scored samples to cluster: a share in (0, 1) or a count.")
@click.option("--threshold", type=float, default=_D.image_threshold, show_default=True,
              help="Cosine similarity at which image clusters merge (average linkage).")
@click.option("--min-size", type=int, default=_D.min_size, show_default=True,
              help="Members a cluster needs to be a backdoor candidate.")
@click.option("--show", type=int, default=10, show_default=True, help="Clusters printed.")
@seed_option(_D.seed)
def discover(scan_dir: str, out: str | None, detector: str | None, embeddings: str | None, top: float,
             threshold: float, min_size: int, show: int, seed: int) -> None:
    """Cluster the top-scored samples of SCAN_DIR: candidate backdoors, noisy pairs, duplicates (clusters.parquet)."""
    config = DiscoverConfig(top=top, image_threshold=threshold, min_size=min_size, seed=seed)
    table = discover_scan(scan_dir, out, detector=detector, embeddings=embeddings, config=config)
    click.echo(format_clusters(table, show))
    kinds = table["kind"].value_counts().to_dict()
    click.echo(f"{len(table)} clusters ({kinds}): {len(table) - table.attrs['n_repeated_captions']} among the top "
               f"{table.attrs['n_top']} samples ({table.attrs['n_singletons']} left alone), "
               f"{table.attrs['n_repeated_captions']} repeated captions over the whole dataset "
               f"-> {out or f'{scan_dir}/discover'}/clusters.parquet")


@click.command()
@click.argument("model_dir", type=click.Path())
@click.option("--images", required=True, type=click.Path(), help="Manifest of clean images (half fit, half verify).")
@click.option("--out", required=True, type=click.Path(), help="Folder for verdict.json, candidates.csv, triggers/.")
@click.option("--classes", type=click.Path(), default=None, help="classes.json: its classes are candidate targets.")
@click.option("--scan", type=click.Path(), default=None,
              help="A `clipguard scan` folder: its first backdoor clusters are candidate targets.")
@click.option("--calibration", type=click.Path(), default=None,
              help="calibration.json of `clipguard audit-calibrate` [default: Neural Cleanse's threshold 2, uncalibrated].")
@click.option("--n-clusters", type=int, default=default_of(audit_model, "n_clusters"), show_default=True,
              help="Backdoor clusters of --scan taken as candidates.")
@click.option("--n-images", type=int, default=default_of(audit_model, "n_images"), show_default=True,
              help="Clean images read: half to fit each trigger, half to verify it.")
@click.option("--steps", type=int, default=ReverseConfig.steps, show_default=True, help="Optimisation steps per candidate.")
@seed_option(ReverseConfig.seed)
@device_option()
@click.option("--no-report", is_flag=True, help="Do not write OUT/report.html (the HTML report of the audit).")
@click.pass_obj
def audit(obj: dict, model_dir: str, images: str, out: str, classes: str | None, scan: str | None,
          calibration: str | None, n_clusters: int, n_images: int, steps: int, seed: int, device: str,
          no_report: bool) -> None:
    """Is the model in MODEL_DIR backdoored, and towards what? Reverse a trigger per candidate, judge the smallest."""
    v = audit_model(model_dir, images, out, classes=classes, scan=scan, calibration=calibration,
                    n_clusters=n_clusters, n_images=n_images, config=ReverseConfig(steps=steps, seed=seed),
                    device=device, progress=obj["progress"])
    report = {} if no_report else {"report": str(build_audit_report(out))}
    echo_json({k: v[k] for k in ("verdict", "target", "closest_target", "anomaly_index", "threshold", "calibrated",
                                 "per_target_reference", "attack_success_rate", "mask_l1")} | {"out": out} | report)


@click.command("audit-calibrate")
@click.argument("audit_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The calibration.json to write.")
@click.option("--alpha", type=float, default=default_of(calibrate_audits, "alpha"), show_default=True,
              help="False-alarm level of the conformal threshold.")
@click.option("--floor", type=float, default=default_of(calibrate_audits, "floor"), show_default=True,
              help="The smallest threshold allowed (Neural Cleanse's 2).")
@click.option("--no-reference", is_flag=True,
              help="Do not compare each target's mask with its size in the clean models (Neural Cleanse's index).")
def audit_calibrate(audit_dirs: tuple[str, ...], out: str, alpha: float, floor: float, no_reference: bool) -> None:
    """Calibrate the audit threshold on the audits (--out folders) of clean models; writes calibration.json."""
    cal = calibrate_audits(list(audit_dirs), out, alpha=alpha, reference=not no_reference, floor=floor)
    echo_json({**cal.as_dict(), "out": out})
