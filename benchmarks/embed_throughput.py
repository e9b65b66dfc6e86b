"""Embedding throughput end to end against the bare encoder (issue 13), meant for a GPU.

The pairs are what img2dataset writes: ``--n`` JPEG images of ``--size`` pixels (drawn shapes on
gradients, quality 95) with a caption each, in a manifest. Measured:

* the bare image encoder: images/s of ``encode_image`` on a (B, 3, 224, 224) batch already on
  the device (no data loading), and of ``encode_image`` + ``encode_text`` (a pair's model work),
  fp32 and bf16 autocast (CUDA synchronised, after a warm-up);
* ``embed_dataset`` end to end (JPEG decode, resize, tokenise in ``--workers`` DataLoader
  processes; uint8 images normalised on the GPU; forward; writing the shard): pairs/s, with
  and without the caption tower, fp32 and bf16;
* the ratio end to end / bare at the same precision and towers (goal: >= 0.5 for the image tower).

Usage::

    python benchmarks/embed_throughput.py --device cuda --out /tmp/out          # ViT-B-32, 8,192 pairs
    python benchmarks/embed_throughput.py --arch tiny-vit --n 256 --size 64 --device cpu --workers 1 \\
        --out /tmp/et                                                            # a smoke run

Writes ``embed_throughput.json`` and ``embed_throughput.md`` to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np


def _draw(args: tuple[int, str, int]) -> str:
    from PIL import Image, ImageDraw

    i, folder, size = args
    rng = np.random.default_rng(i)
    base = np.linspace(0, 255, size, dtype=np.float32)
    img = np.stack([np.add.outer(base * rng.random(), base * rng.random()) % 256 for _ in range(3)], axis=-1)
    im = Image.fromarray(img.astype(np.uint8))
    d = ImageDraw.Draw(im)
    for _ in range(4):
        x0, y0 = rng.integers(0, size - 20, 2)
        w, h = rng.integers(10, size // 2, 2)
        d.ellipse([x0, y0, x0 + w, y0 + h], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    path = f"{folder}/{i:06d}.jpg"
    im.save(path, quality=95)
    return path


def make_pairs(folder: Path, n: int, size: int, workers: int) -> Path:
    """``n`` JPEG pairs and their manifest under ``folder`` (made once)."""
    import pandas as pd

    from clipguard.data.manifest import write_manifest

    manifest = folder / "manifest.parquet"
    if manifest.is_file():
        return manifest
    (folder / "img").mkdir(parents=True, exist_ok=True)
    with Pool(workers) as pool:
        paths = pool.map(_draw, [(i, str(folder / "img"), size) for i in range(n)], chunksize=64)
    df = pd.DataFrame({"id": [f"p{i}" for i in range(n)], "image": paths,
                       "caption": [f"a photo of {i % 97} round shapes on a gradient" for i in range(n)]})
    write_manifest(df, manifest)
    return manifest


def bare_throughput(bundle, dev, batch: int, bf16: bool, text: bool, reps: int = 10) -> float:
    """Images (pairs with ``text``) per second of the model alone, inputs already on the device."""
    import torch

    from clipguard.utils.device import autocast

    size = bundle.model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    x = torch.randn(batch, 3, size, size, device=dev)
    tok = bundle.tokenizer([f"a photo of {i} shapes" for i in range(batch)]).to(dev)

    def step():
        with torch.no_grad(), autocast(dev, bf16):
            bundle.model.encode_image(x)
            if text:
                bundle.model.encode_text(tok)

    for _ in range(3):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return batch * reps / (time.perf_counter() - t0)


def pair_arguments(p: argparse.ArgumentParser, name: str) -> None:
    """The options of a throughput run on :func:`make_pairs`'s pairs (model, pairs, loader, device, folders)."""
    p.add_argument("--arch", default="ViT-B-32")
    p.add_argument("--n", type=int, default=8192)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    p.add_argument("--device", default="auto")
    p.add_argument("--work", default=f"/tmp/{name}")
    p.add_argument("--out", default=f"runs/{name}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    pair_arguments(p, "embed_throughput")
    p.add_argument("--precisions", nargs="*", default=None)
    a = p.parse_args(argv)
    import torch

    from clipguard.data.manifest import read_manifest
    from clipguard.embed import embed_dataset
    from clipguard.models import create_model
    from clipguard.utils.device import resolve_device
    from clipguard.utils.io import read_json

    dev = resolve_device(a.device)
    out, work = Path(a.out), Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    manifest = make_pairs(work / "pairs", a.n, a.size, max(1, os.cpu_count() or 1))
    res: dict = {"arch": a.arch, "device": str(dev), "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
                 "n": a.n, "image_px": a.size, "format": "jpg q95", "workers": a.workers, "batch": a.batch,
                 "cpus": os.cpu_count(), "make_pairs_s": round(time.perf_counter() - t0, 1)}
    bundle = create_model(a.arch, device=dev, seed=0)
    bundle.model.eval()
    precisions = a.precisions or (["fp32", "bf16"] if dev.type == "cuda" else ["fp32"])
    for prec in precisions:
        for text in (False, True):
            tag = f"{prec}_{'pair' if text else 'image'}"
            bare = bare_throughput(bundle, dev, a.batch, prec == "bf16", text)
            emb = work / f"emb_{tag}"
            import shutil
            shutil.rmtree(emb, ignore_errors=True)
            embed_dataset(bundle, read_manifest(manifest), emb, batch_size=a.batch, num_workers=a.workers,
                          text=text, progress=False, device=dev, precision=prec)
            run = read_json(emb / "run.json")
            res[f"bare_per_s_{tag}"] = round(bare, 1)
            res[f"embed_per_s_{tag}"] = run["pairs_per_second"]
            res[f"ratio_{tag}"] = round(run["pairs_per_second"] / bare, 3)
            res[f"stages_{tag}"] = run.get("stage_seconds")
            print(json.dumps({k: v for k, v in res.items() if tag in k}), flush=True)
    (out / "embed_throughput.json").write_text(json.dumps(res, indent=1))
    lines = ["| quantity | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in res.items()]
    (out / "embed_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
