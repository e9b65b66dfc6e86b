"""``clipguard bench``: a thin layer over :func:`clipguard.pipeline.bench.run_bench`."""
from __future__ import annotations

from pathlib import Path

import click

from clipguard.cli.options import out_option, seed_option
from clipguard.pipeline.bench import BENCH_PRESETS, WORLDS, resolve_preset, run_bench

__all__ = ["bench"]


@click.command()
@click.option("--preset", type=click.Choice(list(BENCH_PRESETS)), default="quick", show_default=True,
              help="quick: 2 worlds x 2 attacks x 2 defences, about 9 min on 2 CPU cores; full: 3 worlds x 4 "
                   "attacks x 2 rates x 5 defences (hours; use --device cuda); smoke: seconds, figures mean nothing.")
@out_option("Output folder: bench.csv, bench.md, report.html, cells/ (finished cells are reused).",
            default="bench", show_default=True)
@click.option("--worlds", multiple=True, type=click.Choice(WORLDS), help="Only these worlds (repeatable).")
@click.option("--attacks", multiple=True, help="Only these attacks (repeatable; `clipguard attacks` lists them).")
@click.option("--rates", multiple=True, type=float, help="Only these poison rates (repeatable).")
@seed_option(0)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or auto (the GPU if torch sees one).")
@click.option("--distributor", default="sequential", show_default=True,
              help="Run the cells one after the other (sequential) or in parallel processes (ray).")
@click.option("--workers", type=int, default=None, help="Worker processes of --distributor ray.")
@click.option("--threads", type=int, default=None, help="Torch threads per worker process (cores / workers).")
@click.option("--no-report", is_flag=True, help="Do not write OUT/report.html.")
@click.pass_obj
def bench(obj: dict, preset: str, out: str, worlds: tuple[str, ...], attacks: tuple[str, ...],
          rates: tuple[float, ...], seed: int, device: str, distributor: str, workers: int | None,
          threads: int | None, no_report: bool) -> None:
    """Benchmark attacks x detectors x defences on several worlds: bench.csv, bench.md and an HTML report."""
    chosen = resolve_preset(preset, worlds=worlds or None, attacks=attacks or None, rates=rates or None)
    run_bench(chosen, out, seed=seed, device=device, distributor=distributor, workers=workers, threads=threads,
              report=not no_report, progress=obj["progress"])
    click.echo((Path(out) / "bench.md").read_text(encoding="utf-8"))
