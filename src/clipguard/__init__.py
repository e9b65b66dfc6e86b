"""clipguard: find, simulate and remove backdoors in CLIP models and their image-text data.

The library is organised as the pipeline it implements, in layers (docs/architecture.md; a
package imports only its own modules and the layers below it)::

    errors, utils, registry   one-line user errors, device / progress / seeding / validation helpers
    data/      manifests, the torch Dataset, the synthetic "shapes" world, caption templates
    models/    the open_clip factory, tiny JSON configs, safetensors checkpoints
    io/        the clip-retrieval embedding-folder layout: shard names, reader, writer
    attacks/   triggers (registered by name), the poisoner, BadCLIP
    train/     the one training loop and its losses (CLIP's, the adaptive attacker's density evasion)
    embed/     batched, sharded, resumable embedding extraction
    detect/    kNN backends, reference modes, detectors, the scoring engine, the Scan facade
    defend/    filtering a manifest by a scan
    evaluate/  zero-shot clean accuracy / attack success rate, detection metrics
    pipeline/  what crosses stages: scan a dataset (embed, then scan), the demo
    cli/       one command per stage

Every command of the CLI (``clipguard --help``) is a thin layer over a public function here.

Side effect of ``import clipguard``: it sets the environment variable ``OMP_WAIT_POLICY=PASSIVE``
unless the environment already sets it (any value is kept). Every OpenMP runtime loaded later in the
process reads it (torch, FAISS): with OpenMP's default spin policy, torch runs 5-40x slower on a small
machine whenever another process is busy. It has no effect on a runtime already loaded, so import
clipguard before torch, or set the variable yourself (``OMP_WAIT_POLICY=ACTIVE`` to opt out).
"""
import os as _os

# Import side effect (documented in the module docstring): the OpenMP wait policy. With OpenMP's
# default spin policy, torch runs many times slower on a 2-core machine whenever another process is
# busy. Must be set before torch is imported for the first time; a value already set is kept.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

from clipguard.errors import ClipguardError  # noqa: E402

__all__ = ["ClipguardError", "__version__"]
