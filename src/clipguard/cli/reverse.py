"""``clipguard reverse``: a thin layer over :func:`clipguard.pipeline.reverse.reverse_model`."""
from __future__ import annotations

import click

from clipguard.analyze import ReverseConfig
from clipguard.cli.options import default_of, device_option, echo_json, out_option, seed_option
from clipguard.pipeline.reverse import reverse_model

__all__ = ["reverse"]


@click.command()
@click.argument("model_dir", type=click.Path())
@click.option("--target", required=True, help="Target caption (or a class name of --classes).")
@click.option("--images", required=True, type=click.Path(), help="Manifest of clean images (half fit, half verify).")
@out_option("Folder for trigger.png, mask.png, trigger.json and run.json.")
@click.option("--classes", type=click.Path(), default=None,
              help="classes.json for the zero-shot head [default: the manifest's most frequent captions].")
@click.option("--data", type=click.Path(), default=None,
              help="The training manifest: the target may be one of its captions, and the controls are drawn from it.")
@click.option("--controls", type=int, default=default_of(reverse_model, "controls"), show_default=True,
              help="Random captions searched with the target trigger's mask size (what they reach without a backdoor).")
@click.option("--n-images", type=int, default=default_of(reverse_model, "n_images"), show_default=True)
@click.option("--steps", type=int, default=ReverseConfig.steps, show_default=True, help="Optimisation steps per search.")
@click.option("--success", type=float, default=ReverseConfig.target_success, show_default=True,
              help="Share of the fitting images the trigger must send to the target (the search then shrinks the mask).")
@seed_option(ReverseConfig.seed)
@device_option()
@click.pass_obj
def reverse(obj: dict, model_dir: str, target: str, images: str, out: str, classes: str | None, data: str | None,
            controls: int, n_images: int, steps: int, success: float, seed: int, device: str) -> None:
    """Reverse-engineer a trigger (mask + pattern) that sends clean images to TARGET; verify it on held-out images."""
    rec = reverse_model(model_dir, target, images, out, classes=classes, data=data, controls=controls,
                        n_images=n_images, config=ReverseConfig(steps=steps, target_success=success, seed=seed),
                        device=device, progress=obj["progress"])
    echo_json({"out": out, **{k: rec[k] for k in ("target", "mask_l1", "success", "held_out_asr",
                                                  "control_max_mask")},
               "controls": [{k: c[k] for k in ("caption", "mask_l1", "held_out_asr")} for c in rec["controls"]]})
