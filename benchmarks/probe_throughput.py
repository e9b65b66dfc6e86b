"""Throughput of the perturbation probe (``clipguard.embed.perturbation_stability``) at real size, meant for a GPU.

The pairs are ``embed_throughput.make_pairs``'s (``--n`` JPEG images of ``--size`` pixels, a caption each). The
model is ``--arch`` with random weights (no pretrained weights are reachable here: the figure is the cost of the
probe, not a detection result). Measured, after a warm-up on the first batch: images/s of the probe end to end
(decode, perturb and preprocess in ``--workers`` DataLoader processes; the model sees each image and its
``noise`` and ``blur`` copies, three forward passes' worth) and of ``embed_dataset`` on the same pairs (the
image tower only), so that the ratio says what the probe costs beside the scan's own embedding.

Usage::

    python benchmarks/probe_throughput.py --device cuda --out /tmp/out                      # ViT-B-32, 8,192
    python benchmarks/probe_throughput.py --arch tiny-rn --n 256 --size 64 --device cpu --workers 1 --out /tmp/pt

Writes ``probe_throughput.json`` and ``.md`` to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from embed_throughput import make_pairs, pair_arguments

from clipguard.data.manifest import read_manifest
from clipguard.embed import embed_dataset, perturbation_stability
from clipguard.models import create_model
from clipguard.utils.device import resolve_device


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    pair_arguments(p, "probe_throughput")
    a = p.parse_args(argv)
    dev = resolve_device(a.device)
    manifest = read_manifest(make_pairs(Path(a.work), a.n, a.size, a.workers))
    bundle = create_model(a.arch, device=dev)
    warm = read_manifest(make_pairs(Path(a.work) / "warm", a.batch, a.size, a.workers))
    perturbation_stability(bundle, warm, batch_size=a.batch, num_workers=a.workers, progress=False)
    t = time.perf_counter()
    frame, skips = perturbation_stability(bundle, manifest, batch_size=a.batch, num_workers=a.workers, progress=False)
    probe_s = time.perf_counter() - t
    t = time.perf_counter()
    embed_dataset(bundle, manifest, Path(a.work) / f"emb_{time.time_ns()}", text=False, batch_size=a.batch, num_workers=a.workers,
                  device=dev, progress=False)
    embed_s = time.perf_counter() - t
    res = {"arch": a.arch, "device": str(dev), "n": a.n, "size": a.size, "batch": a.batch, "workers": a.workers,
           "probe_seconds": round(probe_s, 2), "probe_images_per_s": round(len(frame) / probe_s, 1),
           "embed_seconds": round(embed_s, 2), "embed_images_per_s": round(a.n / embed_s, 1),
           "probe_over_embed_time": round(probe_s / embed_s, 2), "n_skipped": len(skips),
           "gpu": __import__("torch").cuda.get_device_name(0) if dev.type == "cuda" else None}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe_throughput.json").write_text(json.dumps(res, indent=1))
    md = ["# Perturbation-probe throughput", "", f"`python benchmarks/probe_throughput.py --arch {a.arch} --n {a.n} "
          f"--size {a.size} --device {a.device} --workers {a.workers}` on {res['gpu'] or res['device']}, random "
          "weights.", "", "| | seconds | images/s |", "|---|---|---|",
          f"| probe (image + noise + blur copies) | {probe_s:.1f} | {res['probe_images_per_s']} |",
          f"| embed_dataset (image tower) | {embed_s:.1f} | {res['embed_images_per_s']} |", "",
          f"Probe / embedding time: {res['probe_over_embed_time']}."]
    (out / "probe_throughput.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
