"""Data layer: image-caption manifests, the torch Dataset over them, and the synthetic world."""
from clipguard.data.manifest import Manifest, read_manifest, write_manifest
from clipguard.data.dataset import ImageCaptionDataset, SkipLog

__all__ = ["Manifest", "read_manifest", "write_manifest", "ImageCaptionDataset", "SkipLog"]
