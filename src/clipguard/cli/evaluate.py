"""``clipguard eval``: a thin layer over :func:`clipguard.evaluate.api.evaluate_model`."""
from __future__ import annotations

import click

from clipguard.cli.options import default_of, device_option, echo_json, seed_option
from clipguard.evaluate.api import evaluate_model
from clipguard.utils.io import write_json

__all__ = ["eval_"]


@click.command(name="eval")
@click.argument("model_dir", type=click.Path())
@click.argument("test_manifest", type=click.Path())
@click.option("--classes", required=True, type=click.Path(), help="classes.json with 'classes' and 'templates'.")
@click.option("--attack", "attack_spec", type=click.Path(), default=None, help="attack.json written by `clipguard poison`.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the results as JSON here.")
@seed_option(default_of(evaluate_model, "seed"))
@device_option()
@click.pass_obj
def eval_(obj: dict, model_dir: str, test_manifest: str, classes: str, attack_spec: str | None, out: str | None,
          seed: int, device: str) -> None:
    """Zero-shot clean accuracy and attack success rate (ASR: non-target images sent to the target)."""
    res = evaluate_model(model_dir, test_manifest, classes, attack_spec=attack_spec, seed=seed,
                         progress=obj["progress"], device=device)
    if out:
        write_json(out, res)
    echo_json(res)
