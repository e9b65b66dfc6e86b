"""Models: an open_clip factory (any open_clip architecture + tiny JSON configs) and safe checkpoints."""
from clipguard.models.factory import (
    ClipBundle,
    create_model,
    get_model_config,
    list_models,
    load_model,
    save_model,
)

__all__ = ["ClipBundle", "create_model", "get_model_config", "list_models", "load_model", "save_model"]
