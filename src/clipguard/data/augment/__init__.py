"""Per-sample views for the finetuning defences: image views (AutoAugment, PAR's noise + erasing) and
caption views (EDA with an offline synonym table).

Image views (:data:`ImageAug`) take a uint8 ``(3, H, W)`` tensor and draw from torch's global
generator, which the data loader seeds per sample; caption views (:data:`TextAug`) draw from the
``numpy.random.Generator`` they are given. Neither seeds anything itself.
"""
from clipguard.data.augment.image import ImageAug, autoaugment_view, light_view
from clipguard.data.augment.text import TextAug, eda_view, load_synonyms

__all__ = ["ImageAug", "TextAug", "autoaugment_view", "light_view", "eda_view", "load_synonyms"]
