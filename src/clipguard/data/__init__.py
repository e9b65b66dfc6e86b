"""Data layer: image-caption manifests (local or on any fsspec filesystem), webdataset tar shards, the torch
Dataset over them, and the synthetic world."""
from clipguard.data.manifest import Manifest, read_manifest, write_manifest
from clipguard.data.dataset import ImageCaptionDataset, SkipLog
from clipguard.data.webdataset import expand_braces, read_source, read_webdataset, write_webdataset

__all__ = ["Manifest", "read_manifest", "write_manifest", "ImageCaptionDataset", "SkipLog", "read_source",
           "read_webdataset", "write_webdataset", "expand_braces"]
