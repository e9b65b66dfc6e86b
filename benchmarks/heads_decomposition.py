"""The exact head / MLP decomposition (issue 11): reconstruction error, time and peak memory.

For each architecture (random weights unless ``--weights``): the largest relative reconstruction
error ``|sum of terms - f(x)| / |f(x)|`` against the model's own forward pass, the time of
``decompose_images`` and of a plain ``encode_image`` per 1,000 images, and the peak resident memory
of one decomposition batch (Linux ``VmHWM`` after resetting it through ``/proc/self/clear_refs``,
minus the resident memory before the batch, each in a fresh interpreter) against the same figure
for the plain forward pass, next to the size of the tensor the published code
materialises (B x T x T x H x W floats, per layer).

Usage::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/heads_decomposition.py --models tiny-vit tiny-vit-p8 ViT-B-32 \
        --n 1000 --n-large 128 --batch 64 --out benchmarks/results/heads_decomposition.md
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from clipguard.models import create_model, decompose_images, load_model, reconstruction_error
from clipguard.models.decompose import tower_shape


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def _peak_in_this_process(name: str, weights: str | None, batch: int, mode: str) -> float:
    """Peak RSS growth (MiB) of one batch through ``decompose`` or the plain ``encode`` forward."""
    bundle = load_model(weights) if weights else create_model(name, seed=0)
    x = torch.randn(batch, 3, bundle.image_size, bundle.image_size)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    with torch.no_grad():
        decompose_images(bundle.model.visual, x) if mode == "decompose" else bundle.model.visual(x)
    return (_status_kib("VmHWM") - before) / 1024


def peak_batch_mib(name: str, weights: str | None, batch: int, mode: str) -> float:
    """:func:`_peak_in_this_process` in a fresh interpreter (memory freed earlier would hide the peak)."""
    cmd = [sys.executable, __file__, "--peak", name, mode, str(batch)] + ([weights] if weights else [])
    try:
        return float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
    except (subprocess.CalledProcessError, ValueError, IndexError):
        return float("nan")


def measure(name: str, weights: str | None, n: int, batch: int, device: str) -> dict:
    bundle = load_model(weights) if weights else create_model(name, seed=0)
    bundle.to(device)
    visual = bundle.model.visual
    L, H, D = tower_shape(visual)
    size = bundle.image_size
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, size, size, generator=g)
    x = (x - 0.45) / 0.27
    err, t_dec, t_enc = 0.0, 0.0, 0.0
    with torch.no_grad():
        for s in range(0, n, batch):
            xb = x[s:s + batch].to(device)
            t = time.perf_counter()
            d = decompose_images(visual, xb)
            t_dec += time.perf_counter() - t
            t = time.perf_counter()
            visual(xb)
            t_enc += time.perf_counter() - t
            err = max(err, reconstruction_error(visual, xb, d))
    tokens = (size // int(bundle.config["vision_cfg"]["patch_size"])) ** 2 + 1
    width = int(bundle.config["vision_cfg"]["width"])
    naive_gib = batch * tokens * tokens * H * width * 4 / 2 ** 30
    return {"model": name, "layers": L, "heads": H, "tokens": tokens, "n_images": n, "batch": batch,
            "max_relative_error": err, "decompose_s_per_1000": 1000 * t_dec / n, "encode_s_per_1000": 1000 * t_enc / n,
            "peak_batch_mib": peak_batch_mib(name, weights, batch, "decompose") if device == "cpu" else float("nan"),
            "peak_forward_mib": peak_batch_mib(name, weights, batch, "encode") if device == "cpu" else float("nan"),
            "published_tensor_gib_per_layer": naive_gib}


def main() -> None:
    if sys.argv[1:2] == ["--peak"]:
        name, mode, batch, *weights = sys.argv[2:]
        print(_peak_in_this_process(name, weights[0] if weights else None, int(batch), mode))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tiny-vit", "tiny-vit-p8", "ViT-B-32"])
    ap.add_argument("--weights", nargs="*", default=[], help="NAME=MODEL_DIR: a trained model folder for NAME")
    ap.add_argument("--n", type=int, default=1000, help="images for the tiny models")
    ap.add_argument("--n-large", type=int, default=128, help="images for the real-size models (slow on a CPU)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/heads_decomposition.md"))
    a = ap.parse_args()
    weights = dict(w.split("=", 1) for w in a.weights)
    rows = []
    for name in a.models + [f"{k} (trained)" for k in weights]:
        base = name.removesuffix(" (trained)")
        n = a.n if base.startswith("tiny") else a.n_large
        row = measure(base, weights.get(base) if name.endswith("(trained)") else None, n, a.batch, a.device)
        row["model"] = name
        rows.append(row)
        print(json.dumps(row), flush=True)
    lines = ["# Head / MLP decomposition: exactness, time, memory (issue 11)", "",
             f"`python benchmarks/heads_decomposition.py` on {a.device} ({torch.get_num_threads()} threads), "
             f"batch {a.batch}; random weights unless marked trained; inputs: random images normalised like CLIP's.", "",
             "| model | L x H | tokens | images | max rel. error | decompose s / 1000 img | encode s / 1000 img "
             "| peak MiB of one batch: decompose / forward | published B x T x T x H x W tensor, GiB per layer |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['layers']} x {r['heads']} | {r['tokens']} | {r['n_images']} | "
                     f"{r['max_relative_error']:.1e} | {r['decompose_s_per_1000']:.1f} | {r['encode_s_per_1000']:.1f} | "
                     f"{r['peak_batch_mib']:.0f} / {r['peak_forward_mib']:.0f} | {r['published_tensor_gib_per_layer']:.2f} |")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    a.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
