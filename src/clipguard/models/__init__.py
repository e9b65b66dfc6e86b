"""Models: an open_clip factory (any open_clip architecture + tiny JSON configs), safe checkpoints, the exact
per-head / per-MLP decomposition of ViT image embeddings and the inference-time head repair."""
from clipguard.models.decompose import Decomposition, decompose_images, reconstruction_error
from clipguard.models.head_repair import HeadRepair, RepairedVisual, attach_repair
from clipguard.models.factory import (
    ClipBundle,
    create_model,
    get_model_config,
    list_models,
    load_model,
    save_model,
)

__all__ = ["ClipBundle", "Decomposition", "HeadRepair", "RepairedVisual", "attach_repair", "create_model",
           "decompose_images", "get_model_config", "list_models", "load_model", "reconstruction_error", "save_model"]
