"""``clipguard train``: a thin layer over :func:`clipguard.train.train_from_manifest`."""
from __future__ import annotations

import click

from clipguard.cli.options import default_of, device_option, out_option, precision_option, seed_option
from clipguard.train import TrainConfig, train_from_manifest
from clipguard.train.data import CACHE_MODES, PairData

__all__ = ["train"]

_CONFIG = TrainConfig()
_CACHE_GIB = default_of(PairData, "cache_max_bytes") / 2 ** 30


@click.command()
@click.argument("manifest", type=click.Path())
@out_option("Model folder to write.")
@click.option("--model", default=default_of(train_from_manifest, "model"), show_default=True,
              help="Architecture (`clipguard models`).")
@click.option("--weights", type=click.Path(), default=None, help="Initial weights (.safetensors or weights-only torch file).")
@click.option("--epochs", default=_CONFIG.epochs, show_default=True)
@click.option("--batch-size", default=_CONFIG.batch_size, show_default=True)
@click.option("--lr", default=_CONFIG.lr, show_default=True)
@click.option("--weight-decay", default=_CONFIG.weight_decay, show_default=True)
@click.option("--warmup-steps", default=_CONFIG.warmup_steps, show_default=True)
@click.option("--grad-clip", default=float(_CONFIG.grad_clip or 0.0), show_default=True,
              help="Max gradient norm (0 = off).")
@seed_option(_CONFIG.seed)
@click.option("--record-epochs", default=_CONFIG.record_epochs, show_default=True,
              help="Record every pair's image-caption cosine after each of the first N epochs to "
                   "OUT/dynamics.parquet (0 = off; training is unchanged).")
@click.option("--workers", default=default_of(train_from_manifest, "workers"), show_default=True,
              help="DataLoader worker processes decoding the images (0 = in the main process).")
@click.option("--cache", type=click.Choice(CACHE_MODES), default=default_of(train_from_manifest, "cache"),
              show_default=True, help=f"memory: decode every pair once; stream: decode per batch; auto: memory "
                                      f"when the decoded set fits {_CACHE_GIB:g} GiB. Neither changes the weights.")
@click.option("--no-resume", is_flag=True, help="Ignore an existing checkpoint in --out.")
@click.option("--adaptive-density", default=default_of(train_from_manifest, "adaptive_density"), show_default=True,
              help="Adaptive attacker: weight of the poisoned samples' batch SLOF added to the loss.")
@click.option("--adaptive-k", default=default_of(train_from_manifest, "adaptive_k"), show_default=True,
              help="Neighbours of the adaptive batch SLOF.")
@precision_option(_CONFIG.precision, "bf16: autocast on a GPU (weights and optimiser state stay fp32).")
@device_option()
@click.pass_obj
def train(obj: dict, manifest: str, out: str, model: str, weights: str | None, epochs: int, batch_size: int,
          lr: float, weight_decay: float, warmup_steps: int, grad_clip: float, seed: int, record_epochs: int,
          workers: int, cache: str, no_resume: bool,
          adaptive_density: float, adaptive_k: int, precision: str, device: str) -> None:
    """Train a CLIP model on MANIFEST (resumable: rerun the same command after a kill)."""
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                      warmup_steps=warmup_steps, grad_clip=grad_clip or None, seed=seed,
                      precision=precision, record_epochs=record_epochs)
    _, res = train_from_manifest(manifest, out, model=model, config=cfg, weights=weights, resume=not no_resume,
                                 progress=obj["progress"], adaptive_density=adaptive_density, adaptive_k=adaptive_k,
                                 workers=workers, cache=cache, device=device)
    last = res.history[-1] if res.history else {}
    click.echo(f"trained {model} on {res.n_pairs} pairs ({res.n_skipped} skipped) for {len(res.history)} epochs, "
               f"final loss {last.get('loss', float('nan')):.4f} -> {out}")
