"""The ``clipguard`` command line: one sub-command per pipeline stage, each a thin layer over a
public function of the library. Errors meant for the user are printed as one line (exit code 2).

One module per stage group: :mod:`~clipguard.cli.data` (synth, poison, plant, attacks, badclip),
:mod:`~clipguard.cli.train`, :mod:`~clipguard.cli.embed`, :mod:`~clipguard.cli.scan` (scan,
detectors), :mod:`~clipguard.cli.defend` (filter), :mod:`~clipguard.cli.evaluate` (eval),
:mod:`~clipguard.cli.demo` (demo, models), :mod:`~clipguard.cli.heads`, :mod:`~clipguard.cli.reverse`,
:mod:`~clipguard.cli.audit` (discover, audit, audit-calibrate); shared options and where their defaults come from in
:mod:`~clipguard.cli.options`.

Examples::

    clipguard synth --out world                       # the embedded shapes world
    clipguard synth --world longtail --out lt         # 100,000 pairs, 256 concepts, Zipf frequencies
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

import importlib
import logging
import os
import sys

import click

from clipguard.errors import ClipguardError
from clipguard.utils.progress import progress_enabled
from clipguard.utils.roots import ENV_VAR, allow_roots

__all__ = ["COMMANDS", "cli", "main"]

#: Every command: name -> (module of clipguard.cli, attribute, the one line ``clipguard --help`` shows).
#: A command's module is imported when that command runs (or its own --help is asked for), not
#: before: the stage modules pull in torch and open_clip (about 7 s on a 2-core machine), and
#: ``clipguard --help`` should not wait for them. tests/cli/test_cli.py checks that every line
#: equals the command's own short help, and tests/test_architecture.py checks the modules like imports.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "synth": ("clipguard.cli.data", "synth",
              "Generate an embedded world, shapes or longtail (PNG images + manifests + classes.json)."),
    "poison": ("clipguard.cli.data", "poison",
               "Write a poisoned copy of MANIFEST with a JSON attack spec and a ground-truth column."),
    "plant": ("clipguard.cli.data", "plant",
              "Plant a natural backdoor (a repeated motif with one caption) and mismatched pairs, with ground truth."),
    "train": ("clipguard.cli.train", "train",
              "Train a CLIP model on MANIFEST (resumable: rerun the same command after a kill)."),
    "embed": ("clipguard.cli.embed", "embed", "Embed MANIFEST with the model in MODEL_DIR (resumable, sharded)."),
    "probe": ("clipguard.cli.probe", "probe",
              "Perturbation probe of MANIFEST under the model in MODEL_DIR trained on it: the record for scan --record."),
    "scan": ("clipguard.cli.scan", "scan",
             "Score every sample of an embedding folder EMB_DIR, or of a dataset embedded first with a "
             "model (--model MODEL_DIR --data MANIFEST --out OUT); higher = more suspicious."),
    "filter": ("clipguard.cli.defend", "filter_",
               "Write MANIFEST without the suspects that `clipguard scan` (output SCAN_DIR) ranked highest."),
    "defend": ("clipguard.cli.defend", "defend",
               "Repair the model in MODEL_DIR with a registered defence (CleanCLIP, PAR, ...); CA/ASR before and after."),
    "defences": ("clipguard.cli.defend", "defences", "List the registered model defences and their parameters."),
    "heads": ("clipguard.cli.heads", "heads",
              "Attention heads and MLPs of a ViT CLIP: infected-head analysis, repair and input filter."),
    "reverse": ("clipguard.cli.reverse", "reverse",
                "Reverse-engineer a trigger (mask + pattern) that sends clean images to TARGET; verify it on held-out images."),
    "discover": ("clipguard.cli.audit", "discover",
                 "Cluster the top-scored samples of SCAN_DIR: candidate backdoors, noisy pairs, duplicates (clusters.parquet)."),
    "audit": ("clipguard.cli.audit", "audit",
              "Is the model in MODEL_DIR backdoored, and towards what? Reverse a trigger per candidate, judge the smallest."),
    "audit-calibrate": ("clipguard.cli.audit", "audit_calibrate",
                        "Calibrate the audit threshold on the audits (--out folders) of clean models; writes calibration.json."),
    "report": ("clipguard.cli.report", "report",
               "Write a self-contained HTML report of the run in RUN_DIR (opens offline in any browser)."),
    "bench": ("clipguard.cli.bench", "bench",
              "Benchmark attacks x detectors x defences on several worlds: bench.csv, bench.md and an HTML report."),
    "eval": ("clipguard.cli.evaluate", "eval_",
             "Zero-shot clean accuracy and attack success rate (ASR: non-target images sent to the target)."),
    "demo": ("clipguard.cli.demo", "demo",
             "The whole pipeline on the embedded world: synth -> poison -> train -> embed -> scan -> eval."),
    "models": ("clipguard.cli.demo", "models", "List model architectures (clipguard's tiny configs, then open_clip's)."),
    "attacks": ("clipguard.cli.data", "attacks", "List the registered attacks and their parameters."),
    "badclip": ("clipguard.cli.data", "badclip",
                "Optimise a BadCLIP patch against the (clean) model in MODEL_DIR on images of MANIFEST."),
    "detectors": ("clipguard.cli.scan", "detectors", "List the registered detectors."),
}


class _StageGroup(click.Group):
    """A click group whose commands are the entries of :data:`COMMANDS`, each loaded on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attribute, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of ``clipguard --help``, from :data:`COMMANDS` (no stage is imported)."""
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [(name, click.utils.make_default_short_help(help_, limit)) for name, (_, _, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_StageGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="clipguard")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.option("--allow-root", "allow_root", multiple=True, type=click.Path(file_okay=False), metavar="DIR",
              help="A folder outside a manifest's own where its images may lie (repeatable; also "
                   f"{ENV_VAR}, folders separated by '{os.pathsep}'). Images outside are skipped and counted.")
@click.pass_context
def cli(ctx: click.Context, quiet: bool, allow_root: tuple[str, ...]) -> None:
    """Find, simulate and remove backdoors in CLIP models and image-text data."""
    ctx.obj = {"progress": not quiet}
    ctx.with_resource(progress_enabled(not quiet))  # the library's bars follow -q for the whole command
    ctx.with_resource(allow_roots(allow_root))  # every manifest read by the command allows these roots
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


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
