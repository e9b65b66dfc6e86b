"""Commands that make and poison data: ``synth``, ``poison``, ``attacks``, ``badclip``."""
from __future__ import annotations

import inspect
from typing import Any

import click

from clipguard.attacks import ATTACKS, get_trigger, poison_dataset
from clipguard.attacks.badclip import BadCLIPConfig, optimize_badclip_patch
from clipguard.attacks.gallery import write_gallery
from clipguard.cli.options import default_of, device_option, out_option, param_option, seed_option
from clipguard.data.longtail import MAX_CONCEPTS, generate_longtail_world
from clipguard.data.manifest import read_manifest
from clipguard.data.natural import DEFAULT_MOTIF_CAPTION, plant_natural
from clipguard.data.synth import generate_world
from clipguard.data.templates import DEFAULT_TEMPLATES
from clipguard.errors import ConfigError
from clipguard.evaluate.api import read_classes
from clipguard.models import load_model

__all__ = ["attacks", "badclip", "plant", "poison", "synth"]

_BADCLIP = BadCLIPConfig()


def _templates(classes: str | None) -> list[str]:
    """The caption templates of ``classes.json``, or the library's :data:`DEFAULT_TEMPLATES`."""
    return read_classes(classes)[1] if classes else list(DEFAULT_TEMPLATES)


_WORLDS = ("shapes", "longtail")
_GENERATORS = {"shapes": generate_world, "longtail": generate_longtail_world}


def _world_default(name: str) -> str:
    """``"[default: A for shapes, B for longtail]"``, read from the two generators' signatures."""
    return "[default: " + ", ".join(f"{default_of(f, name)} for {w}" for w, f in _GENERATORS.items()) + "]"


@click.command()
@out_option("Output folder.")
@click.option("--world", type=click.Choice(_WORLDS), default=_WORLDS[0], show_default=True,
              help="shapes: 8 shape classes; longtail: hundreds of compositional concepts with Zipf frequencies.")
@click.option("--n-train", type=int, default=None, help=f"Training pairs. {_world_default('n_train')}")
@click.option("--n-test", type=int, default=None, help=f"Labelled test images. {_world_default('n_test')}")
@click.option("--n-concepts", type=int, default=None,
              help=f"Concepts of the longtail world (at most {MAX_CONCEPTS}). "
                   f"[default: {default_of(generate_longtail_world, 'n_concepts')}]")
@click.option("--zipf", type=float, default=None,
              help="Zipf exponent of the longtail world's concept frequencies (0: all equal). "
                   f"[default: {default_of(generate_longtail_world, 'zipf')}]")
@seed_option(default_of(generate_world, "seed"))
@click.pass_obj
def synth(obj: dict, out: str, world: str, n_train: int | None, n_test: int | None, n_concepts: int | None,
          zipf: float | None, seed: int) -> None:
    """Generate an embedded world, shapes or longtail (PNG images + manifests + classes.json)."""
    sizes = {k: v for k, v in (("n_train", n_train), ("n_test", n_test)) if v is not None}
    extra = {k: v for k, v in (("n_concepts", n_concepts), ("zipf", zipf)) if v is not None}
    if world == "shapes":
        if extra:
            raise ConfigError("--n-concepts and --zipf shape the longtail world; add --world longtail or drop them")
        info = generate_world(out, seed=seed, progress=obj["progress"], **sizes)
        what = f"classes: {', '.join(info['classes'])}"
    else:
        info = generate_longtail_world(out, seed=seed, progress=obj["progress"], **sizes, **extra)
        what = f"{info['n_concepts']} concepts, Zipf exponent {info['zipf']:g}; ranks in concepts.json"
    click.echo(f"wrote {info['n_train']} train and {info['n_test']} test pairs to {out} ({what})")


@click.command()
@click.argument("manifest", type=click.Path())
@out_option("Output folder of the poisoned dataset.")
@click.option("--attack", default="badnets", show_default=True, help="Trigger name (`clipguard attacks`).")
@param_option("Trigger parameter NAME=VALUE (repeatable; JSON values allowed).")
@click.option("--rate", type=float, default=None, help="Share of rows to poison, in (0, 1).")
@click.option("--count", type=int, default=None, help="Number of rows to poison (instead of --rate).")
@click.option("--target", required=True, help="Target class name, e.g. 'star'.")
@click.option("--clean-label", is_flag=True, help="Label-consistent: trigger only images whose caption names the target.")
@click.option("--classes", type=click.Path(), default=None,
              help="classes.json whose templates make poison captions [default: the library's templates].")
@seed_option(default_of(poison_dataset, "seed"))
@click.pass_obj
def poison(obj: dict, manifest: str, out: str, attack: str, params: dict[str, Any], rate: float | None,
           count: int | None, target: str, clean_label: bool, classes: str | None, seed: int) -> None:
    """Write a poisoned copy of MANIFEST with a JSON attack spec and a ground-truth column."""
    trigger = get_trigger(attack, **params)
    res = poison_dataset(read_manifest(manifest), out, trigger, target=target, rate=rate, count=count,
                         mode="clean" if clean_label else "dirty", templates=_templates(classes), seed=seed,
                         progress=obj["progress"])
    click.echo(f"poisoned {res.n_poisoned} of {res.n_total} rows with {trigger!r} -> {res.manifest_path}"
               + (f" ({len(res.skipped)} unreadable candidates skipped)" if len(res.skipped) else ""))


@click.command()
@click.argument("manifest", type=click.Path())
@out_option("Output folder of the planted dataset.")
@click.option("--natural-share", type=float, default=default_of(plant_natural, "natural_share"), show_default=True,
              help="Share of rows replaced by a copy of the motif (the natural backdoor).")
@click.option("--caption", default=DEFAULT_MOTIF_CAPTION, show_default=True, help="The caption every motif copy carries.")
@click.option("--swapped-share", type=float, default=default_of(plant_natural, "swapped_share"), show_default=True,
              help="Share of rows given the caption of another image.")
@click.option("--placeholder-share", type=float, default=default_of(plant_natural, "placeholder_share"),
              show_default=True, help="Share of rows whose image becomes an 'image not available' placeholder.")
@seed_option(default_of(plant_natural, "seed"))
@click.pass_obj
def plant(obj: dict, manifest: str, out: str, natural_share: float, caption: str, swapped_share: float,
          placeholder_share: float, seed: int) -> None:
    """Plant a natural backdoor (a repeated motif with one caption) and mismatched pairs, with ground truth."""
    res = plant_natural(read_manifest(manifest), out, natural_share=natural_share, caption=caption,
                        swapped_share=swapped_share, placeholder_share=placeholder_share, seed=seed,
                        progress=obj["progress"])
    counts = ", ".join(f"{len(v)} {k}" for k, v in res.ids.items())
    click.echo(f"planted {counts} of {res.n_total} rows -> {res.manifest_path}")


@click.command()
@click.option("--gallery", type=click.Path(dir_okay=False), default=None,
              help="Also write a PNG of clean vs triggered samples for every attack.")
def attacks(gallery: str | None) -> None:
    """List the registered attacks and their parameters."""
    if gallery:
        click.echo(f"gallery -> {write_gallery(gallery)}")
    for name in ATTACKS.names():
        cls = ATTACKS.get(name)
        sig = [f"{n}={p.default!r}" for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self"]
        click.echo(f"{name}: {(cls.__doc__ or '').strip().splitlines()[0]}")
        click.echo(f"    parameters: {', '.join(sig)}")


@click.command()
@click.argument("model_dir", type=click.Path())
@click.argument("manifest", type=click.Path())
@out_option("Folder for trigger.png + trigger.json.")
@click.option("--target", required=True, help="Target class name.")
@click.option("--classes", type=click.Path(), default=None,
              help="classes.json whose templates describe the target [default: the library's templates].")
@click.option("--size", default=_BADCLIP.size, show_default=True, help="Patch side in pixels.")
@click.option("--location", default=_BADCLIP.location, show_default=True, help="Where the patch goes.")
@click.option("--steps", default=_BADCLIP.steps, show_default=True, help="Optimisation steps.")
@seed_option(_BADCLIP.seed)
@device_option()
@click.pass_obj
def badclip(obj: dict, model_dir: str, manifest: str, out: str, target: str, classes: str | None, size: int,
            location: str, steps: int, seed: int, device: str) -> None:
    """Optimise a BadCLIP patch against the (clean) model in MODEL_DIR on images of MANIFEST.

    Then poison with it: clipguard poison ... --attack badclip --param patch=OUT/trigger.png
    """
    config = BadCLIPConfig(size=size, location=location, steps=steps, seed=seed)
    trig = optimize_badclip_patch(load_model(model_dir, device=device), read_manifest(manifest), out, target=target,
                                  templates=_templates(classes), progress=obj["progress"], config=config)
    click.echo(f"optimised patch -> {trig.patch}")
