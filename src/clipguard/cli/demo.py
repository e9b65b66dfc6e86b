"""``clipguard demo`` (over :func:`clipguard.pipeline.run_demo`) and ``clipguard models``."""
from __future__ import annotations

import click

from clipguard.cli.options import out_option, seed_option
from clipguard.models import list_models
from clipguard.pipeline import DemoConfig, format_summary, run_demo

__all__ = ["demo", "models"]

_DEMO = DemoConfig()


@click.command()
@out_option("Output folder (removed first).", default=_DEMO.out, show_default=True)
@click.option("--n-train", default=_DEMO.n_train, show_default=True, help="Training pairs of the world.")
@click.option("--n-test", default=_DEMO.n_test, show_default=True, help="Labelled test images of the world.")
@click.option("--rate", default=_DEMO.poison_rate, show_default=True, help="Poison rate.")
@click.option("--epochs", default=_DEMO.epochs, show_default=True, help="Training epochs.")
@seed_option(_DEMO.seed)
@click.option("--device", default=_DEMO.device, show_default=True,
              help="cpu (the README's figures), auto (the GPU if torch sees one), cuda.")
@click.option("--no-report", is_flag=True, help="Do not write OUT/report.html (the HTML report of the scan).")
@click.pass_obj
def demo(obj: dict, out: str, n_train: int, n_test: int, rate: float, epochs: int, seed: int, device: str,
         no_report: bool) -> None:
    """The whole pipeline on the embedded world: synth -> poison -> train -> embed -> scan -> eval."""
    config = DemoConfig(out=out, n_train=n_train, n_test=n_test, poison_rate=rate, epochs=epochs, seed=seed,
                        device=device, report=not no_report)
    click.echo(format_summary(run_demo(config, progress=obj["progress"])))


@click.command()
def models() -> None:
    """List model architectures (clipguard's tiny configs, then open_clip's)."""
    for name in list_models():
        click.echo(name)
