"""clipguard: find, simulate and remove backdoors in CLIP models and their image-text data.

The library is organised as the pipeline it implements::

    data/      manifests, the torch Dataset, the synthetic "shapes" world
    attacks/   triggers (registered by name), the poisoner, BadCLIP, the adaptive attack
    models/    the open_clip factory, tiny JSON configs, safetensors checkpoints
    train/     the CLIP loss and the one training loop
    embed/     batched embedding extraction in the clip-retrieval layout
    detect/    kNN backends and reference modes, detectors (density, pair, text, fused), Scan
    evaluate/  zero-shot clean accuracy / attack success rate, detection metrics

Every command of the CLI (``clipguard --help``) is a thin layer over a public function here.
"""
import os as _os

# With OpenMP's default spin policy, torch runs many times slower on a 2-core machine whenever
# another process is busy. Must be set before torch is imported for the first time.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

from clipguard.errors import ClipguardError  # noqa: E402

__all__ = ["ClipguardError", "__version__"]
