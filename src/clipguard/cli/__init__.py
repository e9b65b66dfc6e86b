"""The ``clipguard`` command line: one sub-command per pipeline stage, each a thin layer over a
public function of the library. Errors meant for the user are printed as one line (exit code 2).

One module per stage group: :mod:`~clipguard.cli.data` (synth, poison, attacks, badclip),
:mod:`~clipguard.cli.train`, :mod:`~clipguard.cli.embed`, :mod:`~clipguard.cli.scan` (scan,
detectors), :mod:`~clipguard.cli.defend` (filter), :mod:`~clipguard.cli.evaluate` (eval),
:mod:`~clipguard.cli.demo` (demo, models); shared options and where their defaults come from in
:mod:`~clipguard.cli.options`.

Examples::

    clipguard synth --out world                       # the embedded shapes world
    clipguard poison world/train/manifest.parquet --out poisoned --attack badnets \\
        --param size=8 --param cell=2 --rate 0.05 --target star --classes world/classes.json
    clipguard train poisoned/manifest.parquet --out model --model tiny-rn --epochs 10
    clipguard embed model poisoned/manifest.parquet --out emb
    clipguard scan emb --out scan --top 20
    clipguard scan --model model --data poisoned/manifest.parquet --out scan2   # embeds first
    clipguard eval model world/test/manifest.parquet --classes world/classes.json --attack poisoned/attack.json
    clipguard demo --out demo                         # all of the above in one command
"""
from __future__ import annotations

import logging
import sys

import click

from clipguard.cli.data import attacks, badclip, poison, synth
from clipguard.cli.defend import filter_
from clipguard.cli.demo import demo, models
from clipguard.cli.embed import embed
from clipguard.cli.evaluate import eval_
from clipguard.cli.scan import detectors, scan
from clipguard.cli.train import train
from clipguard.errors import ClipguardError
from clipguard.utils.progress import progress_enabled

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="clipguard")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def cli(ctx: click.Context, quiet: bool) -> None:
    """Find, simulate and remove backdoors in CLIP models and image-text data."""
    ctx.obj = {"progress": not quiet}
    ctx.with_resource(progress_enabled(not quiet))  # the library's bars follow -q for the whole command
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


for _command in (synth, poison, train, embed, scan, filter_, eval_, demo, models, attacks, badclip, detectors):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the CLI; user errors become one line on stderr and exit code 2.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
    """
    try:
        cli.main(args=argv, prog_name="clipguard", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ClipguardError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
