"""``clipguard probe``: a thin layer over :func:`clipguard.embed.probe_dataset` (the perturbation probe of a dataset
under the model trained on it; the record that ``clipguard scan EMB --record OUT`` turns into the detector
``perturbation``)."""
from __future__ import annotations

import click

from clipguard.cli.options import default_of, device_option, out_option
from clipguard.data.manifest import read_manifest
from clipguard.embed import PERTURBATIONS, probe_dataset
from clipguard.models import load_model

__all__ = ["probe"]


@click.command()
@click.argument("model_dir", type=click.Path())
@click.argument("manifest")
@out_option("Output folder: stability.parquet (the record), skipped.csv, run.json.")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(PERTURBATIONS),
              default=default_of(probe_dataset, "kinds"), show_default=True,
              help="Perturbation(s) to probe with (repeat the option for several).")
@click.option("--noise-sd", type=float, default=default_of(probe_dataset, "noise_sd"), show_default=True,
              help="Standard deviation of the noise on the 0-255 pixel scale.")
@click.option("--seed", default=default_of(probe_dataset, "seed"), show_default=True, help="Seed of the noise.")
@click.option("--batch-size", default=default_of(probe_dataset, "batch_size"), show_default=True,
              help="Images per forward pass (the model sees each image and one copy per perturbation).")
@click.option("--workers", default=default_of(probe_dataset, "num_workers"), show_default=True,
              help="DataLoader worker processes decoding and perturbing images (a GPU needs several).")
@click.option("--part-rows", default=default_of(probe_dataset, "part_rows"), show_default=True,
              help="Manifest rows per part: a killed run resumes from its finished parts.")
@device_option()
@click.pass_obj
def probe(obj: dict, model_dir: str, manifest: str, out: str, kinds: tuple[str, ...], noise_sd: float, seed: int,
          batch_size: int, workers: int, part_rows: int, device: str) -> None:
    """Perturbation probe of MANIFEST under the model in MODEL_DIR trained on it: the record for scan --record.

    For every image, the cosine between the model's embedding of the image and of a perturbed copy (higher = more
    stable = more suspicious under noise: a learned trigger survives the noise). Resumable: rerun the same command after a kill. Then `clipguard scan EMB_DIR --record OUT` adds the
    detector `perturbation`."""
    source = read_manifest(manifest)  # a bad manifest fails before the model is loaded
    res = probe_dataset(load_model(model_dir), source, out, kinds=kinds, seed=seed, noise_sd=noise_sd,
                        batch_size=batch_size, num_workers=workers, part_rows=part_rows, device=device,
                        progress=obj["progress"])
    reused = f", {len(res.reused_parts)} part(s) reused" if res.reused_parts else ""
    click.echo(f"probed {res.n_probed} images ({', '.join(kinds)}), skipped {res.n_skipped} "
               f"{res.skip_counts or ''}{reused} -> {res.path}")
    click.echo(f"scan with it: clipguard scan EMB_DIR --record {out}")
