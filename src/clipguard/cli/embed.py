"""``clipguard embed``: a thin layer over :func:`clipguard.embed.embed_dataset`."""
from __future__ import annotations

import click

from clipguard.cli.options import default_of, device_option, out_option, precision_option
from clipguard.data.manifest import read_manifest
from clipguard.embed import embed_dataset
from clipguard.models import load_model

__all__ = ["embed"]


@click.command()
@click.argument("model_dir", type=click.Path())
@click.argument("manifest", type=click.Path())
@out_option("Embedding folder (clip-retrieval layout).")
@click.option("--shard-size", default=default_of(embed_dataset, "shard_size"), show_default=True,
              help="Manifest rows per shard.")
@click.option("--batch-size", default=default_of(embed_dataset, "batch_size"), show_default=True,
              help="Images per forward pass.")
@click.option("--no-text", is_flag=True, help="Image embeddings only.")
@click.option("--workers", default=default_of(embed_dataset, "num_workers"), show_default=True,
              help="DataLoader worker processes.")
@precision_option(default_of(embed_dataset, "precision"),
                  "bf16: autocast on a GPU (faster; embeddings still saved as float32).")
@device_option()
@click.pass_obj
def embed(obj: dict, model_dir: str, manifest: str, out: str, shard_size: int, batch_size: int, no_text: bool,
          workers: int, precision: str, device: str) -> None:
    """Embed MANIFEST with the model in MODEL_DIR (resumable, sharded)."""
    res = embed_dataset(load_model(model_dir), read_manifest(manifest), out, shard_size=shard_size,
                        batch_size=batch_size, text=not no_text, num_workers=workers, progress=obj["progress"],
                        device=device, precision=precision)
    click.echo(f"embedded {res.n_embedded} pairs, skipped {res.n_skipped} {res.skip_counts or ''} -> {out}")
