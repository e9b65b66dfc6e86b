"""``clipguard report``: a thin layer over :func:`clipguard.report.build_scan_report`."""
from __future__ import annotations

import click

from clipguard.cli.options import default_of
from clipguard.report import build_scan_report

__all__ = ["report"]


@click.command()
@click.argument("run_dir", type=click.Path())
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="The HTML file [default: RUN_DIR/report.html].")
@click.option("--detector", default=None, help="Whose ranking the suspect grid and the map follow [default: the "
                                               "scan's default, fused when it ran].")
@click.option("--top", default=default_of(build_scan_report, "top"), show_default=True,
              help="Suspects in the thumbnail grid.")
def report(run_dir: str, out: str | None, detector: str | None, top: int) -> None:
    """Write a self-contained HTML report of the scan in RUN_DIR (opens offline in any browser)."""
    path = build_scan_report(run_dir, out, detector=detector, top=top)
    click.echo(f"report -> {path} ({path.stat().st_size / 1e6:.1f} MB)")
