"""Real-size path check: open_clip ViT-B/32 and RN50 (random weights) through train -> embed ->
scan -> eval on the shapes world upscaled to 224 px, with throughput figures. Meant for a GPU
(on this project's 2-core CPU a ViT-B/32 embeds about 10 images/s).

For each architecture:

* model-only throughput: images/s of ``encode_image`` on a synthetic (B, 3, 224, 224) batch,
  fp32 and bf16 autocast (CUDA events; the data loader is not involved);
* ``train_from_manifest`` for one epoch on ``--n`` pairs (batch 256), fp32 and bf16 autocast:
  pairs/s of the training steps (the one-off decode of the pairs is timed apart);
* ``embed_dataset`` of the same pairs (image + caption), fp32 and bf16, ``--workers`` decoding
  processes: pairs/s end to end (PNG decode + resize included);
* ``Scan`` with every detector, global and per-batch reference: seconds;
* zero-shot ``evaluate_model`` (random weights: chance accuracy; the path is what is checked).

Usage::

    python benchmarks/real_size.py --device cuda --n 8192 --out runs/real_size

Writes ``<out>/real_size.json`` and ``<out>/real_size.md`` (the table it prints).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def model_throughput(bundle, device, batch: int, bf16: bool, reps: int = 10) -> float:
    import torch

    from clipguard.utils.device import autocast

    x = torch.randn(batch, 3, bundle.image_size, bundle.image_size, device=device)
    with torch.no_grad(), autocast(device, bf16):
        for _ in range(3):
            bundle.model.encode_image(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            bundle.model.encode_image(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return batch * reps / (time.perf_counter() - t)


def check(arch: str, a: argparse.Namespace, world: Path, out: Path) -> dict:
    import torch

    from clipguard.data.manifest import read_manifest, write_manifest
    from clipguard.detect import Scan
    from clipguard.embed import embed_dataset
    from clipguard.evaluate.api import evaluate_model
    from clipguard.models import create_model
    from clipguard.train import TrainConfig, train_from_manifest
    from clipguard.utils.device import resolve_device
    from clipguard.utils.io import read_json

    dev = resolve_device(a.device)
    res: dict = {"arch": arch, "device": str(dev),
                 "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None}
    bundle = create_model(arch, device=dev, seed=0)
    res["params_M"] = round(sum(p.numel() for p in bundle.model.parameters()) / 1e6, 1)
    res["model_img_per_s_fp32"] = round(model_throughput(bundle, dev, a.batch, False), 1)
    if dev.type == "cuda":
        res["model_img_per_s_bf16"] = round(model_throughput(bundle, dev, a.batch, True), 1)
    del bundle

    m = read_manifest(world / "train" / "manifest.parquet")
    df = m.df.iloc[:a.n].copy()
    df["image"] = [str(m.root / p) for p in df["image"]]
    manifest = write_manifest(df, out / arch / "manifest.parquet")

    for precision in (a.train_precisions if dev.type == "cuda" else ["fp32"]):
        model_dir = out / arch / f"model_{precision}"
        bundle, tr = train_from_manifest(manifest, model_dir, model=arch, device=dev, progress=False,
                                         config=TrainConfig(epochs=1, batch_size=256, warmup_steps=5, seed=0,
                                                            precision=precision))
        timings = read_json(model_dir / "run.json")["timings_s"]
        res[f"train_decode_seconds_{precision}"] = timings["decode"]
        res[f"train_pairs_per_s_{precision}"] = tr.history[-1]["pairs_per_s"]
        res[f"train_loss_{precision}"] = round(tr.history[-1]["loss"], 4)
    for precision in (["fp32", "bf16"] if dev.type == "cuda" else ["fp32"]):
        emb = out / arch / f"emb_{precision}"
        embed_dataset(bundle, read_manifest(manifest), emb, batch_size=a.batch, num_workers=a.workers,
                      progress=False, device=dev, precision=precision)
        res[f"embed_pairs_per_s_{precision}"] = read_json(emb / "run.json")["pairs_per_second"]
    scan = Scan.from_folder(out / arch / "emb_fp32")
    for ref in ("global", "batch"):
        t = time.perf_counter()
        scan.find_suspects(None, reference=ref, k=16)
        res[f"scan_{ref}_seconds"] = round(time.perf_counter() - t, 2)
        res[f"scan_{ref}_detectors"] = scan.detectors
    scan.save(out / arch / "scan")
    ev = evaluate_model(bundle, world / "test" / "manifest.parquet", world / "classes.json", progress=False)
    res["zero_shot_ca_random_weights"] = ev["clean_accuracy"]
    res["n_pairs"] = a.n
    return res


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archs", nargs="*", default=["ViT-B-32", "RN50"])
    p.add_argument("--device", default="auto")
    p.add_argument("--n", type=int, default=8192, help="pairs to train on / embed")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--train-precisions", nargs="*", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--out", default="runs/real_size")
    p.add_argument("--world", default=None, help="an existing shapes world (default: generate one)")
    a = p.parse_args(argv)
    from clipguard.data.synth import generate_world

    out = Path(a.out)
    world = Path(a.world) if a.world else out / "world"
    if not (world / "classes.json").is_file():
        generate_world(world, n_train=max(a.n, 2000), n_test=1000, seed=0, progress=False)
    results = []
    for arch in a.archs:
        r = check(arch, a, world, out)
        print(json.dumps(r), flush=True)
        results.append(r)
    (out / "real_size.json").write_text(json.dumps(results, indent=1))
    keys = [k for k in results[0] if k not in ("arch", "scan_global_detectors", "scan_batch_detectors")]
    lines = ["| quantity | " + " | ".join(r["arch"] for r in results) + " |", "|---|" + "---|" * len(results)]
    lines += [f"| {k} | " + " | ".join(str(r.get(k)) for r in results) + " |" for k in keys]
    (out / "real_size.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
