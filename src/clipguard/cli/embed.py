"""``clipguard embed``: a thin layer over :func:`clipguard.embed.embed_dataset` (in this process) or
:func:`clipguard.distributed.embed_sharded` (``--distributor ray``)."""
from __future__ import annotations

import click

from clipguard.cli.options import default_of, device_option, distributor_options, out_option, precision_option
from clipguard.data.webdataset import read_source
from clipguard.distributed import embed_sharded
from clipguard.embed import embed_dataset
from clipguard.errors import ConfigError
from clipguard.models import load_model

__all__ = ["embed"]


@click.command()
@click.argument("model_dir", type=click.Path())
@click.argument("manifest")
@out_option("Embedding folder (clip-retrieval layout).")
@click.option("--shard-size", default=default_of(embed_dataset, "shard_size"), show_default=True,
              help="Manifest rows per shard (webdataset tars: one shard per tar).")
@click.option("--batch-size", default=default_of(embed_dataset, "batch_size"), show_default=True,
              help="Images per forward pass.")
@click.option("--no-text", is_flag=True, help="Image embeddings only.")
@click.option("--workers", default=default_of(embed_dataset, "num_workers"), show_default=True,
              help="DataLoader worker processes decoding images (per embedding process).")
@precision_option(default_of(embed_dataset, "precision"),
                  "bf16: autocast on a GPU (faster; embeddings still saved as float32).")
@device_option()
@distributor_options
@click.option("--gpus-per-worker", type=float, default=None,
              help="GPUs per --distributor ray worker [default: 1 where the cluster has GPUs, else 0].")
@click.pass_obj
def embed(obj: dict, model_dir: str, manifest: str, out: str, shard_size: int, batch_size: int, no_text: bool,
          workers: int, precision: str, device: str, distributor: str, address: str | None, processes: int | None,
          retries: int, gpus_per_worker: float | None) -> None:
    """Embed MANIFEST with the model in MODEL_DIR (resumable, sharded).

    MANIFEST is a manifest (Parquet/CSV/JSONL, local or an fsspec URL) or webdataset tar shards,
    e.g. 'shards/{00000..00099}.tar'."""
    if distributor == "sequential":
        if address or processes or gpus_per_worker is not None:
            raise ConfigError("--address/--processes/--gpus-per-worker set up a cluster: add --distributor ray")
        source = read_source(manifest)  # a bad manifest fails before the model is loaded
        res = embed_dataset(load_model(model_dir), source, out, shard_size=shard_size,
                            batch_size=batch_size, text=not no_text, num_workers=workers, progress=obj["progress"],
                            device=device, precision=precision)
    else:
        res = embed_sharded(model_dir, manifest, out, distributor=distributor, address=address, workers=processes,
                            gpus_per_worker=gpus_per_worker, shard_size=shard_size, batch_size=batch_size,
                            text=not no_text, num_workers=workers, device=device, precision=precision,
                            retries=retries)
    click.echo(f"embedded {res.n_embedded} pairs, skipped {res.n_skipped} {res.skip_counts or ''} -> {out}")
