"""A first probe of trigger reverse-engineering (issue 12, core only): the smallest mask that sends clean
images to a target class, on a backdoored and on a clean tiny ViT.

Usage (models of ``benchmarks/heads_models.sh`` / ``heads_finetuned.sh``)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/reverse_probe.py --world runs/heads/world \
        --images runs/heads/clean_world/train/manifest.parquet --target star \
        --models runs/heads/models/badclip runs/heads/models/clean_base
"""
from __future__ import annotations

import argparse
import time

from clipguard.analyze import ReverseConfig, reverse_trigger
from clipguard.data.manifest import read_manifest
from clipguard.evaluate.api import read_classes
from clipguard.evaluate.zeroshot import build_classifier
from clipguard.models import load_model
from clipguard.pipeline.reverse import pixel_images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--steps", type=int, default=300)
    a = ap.parse_args()
    names, templates = read_classes(f"{a.world}/classes.json")
    print("| model | mask L1 (share of the image) | success | mask mass TL / TR / BL / BR | seconds |")
    print("|---|---|---|---|---|")
    for path in a.models:
        bundle = load_model(path, device="cpu")
        imgs = pixel_images(read_manifest(a.images), bundle.image_size, a.n)
        t = time.perf_counter()
        res = reverse_trigger(bundle.model, imgs, build_classifier(bundle, names, templates), names.index(a.target),
                              config=ReverseConfig(steps=a.steps), progress=False)
        h = bundle.image_size // 2
        mk = res.mask
        quads = [mk[:h, :h].sum(), mk[:h, h:].sum(), mk[h:, :h].sum(), mk[h:, h:].sum()]
        print(f"| {path} | {res.mask_l1:.4f} | {res.success:.3f} | {' / '.join(f'{q / mk.sum():.2f}' for q in quads)} "
              f"| {time.perf_counter() - t:.1f} |")


if __name__ == "__main__":
    main()
