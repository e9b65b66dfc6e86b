"""``clipguard report``: a thin layer over :func:`clipguard.report.build_report` (the page follows the run's kind)."""
from __future__ import annotations

import click

from clipguard.cli.options import default_of
from clipguard.report import REPORT_BUILDERS, build_report, build_scan_report
from clipguard.report.figures import PROJECTIONS

__all__ = ["report"]


@click.command()
@click.argument("run_dir", type=click.Path())
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="The HTML file [default: RUN_DIR/report.html].")
@click.option("--detector", default=None, help="Scans only: whose ranking the suspect grid and the map follow "
                                               "[default: the scan's default, fused when it ran].")
@click.option("--top", type=int, default=None,
              help=f"Scans only: suspects in the thumbnail grid [default: {default_of(build_scan_report, 'top')}].")
@click.option("--map", "projection", type=click.Choice(PROJECTIONS), default=None,
              help="Scans only: the embedding map's projection [default: pca; umap needs pip install "
                   "'clipguard[umap]'].")
def report(run_dir: str, out: str | None, detector: str | None, top: int | None, projection: str | None) -> None:
    """Write a self-contained HTML report of the run in RUN_DIR (opens offline in any browser)."""
    path = build_report(run_dir, out, detector=detector, top=top, projection=projection)
    click.echo(f"report -> {path} ({path.stat().st_size / 1e6:.1f} MB)")


report.help = (f"{report.help}\n\nRUN_DIR: the output folder of one of: "
               f"{', '.join(f'clipguard {k}' for k in REPORT_BUILDERS)}.")
