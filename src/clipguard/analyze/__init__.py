"""Model analysis (layer 5): the per-head / per-MLP decomposition of a ViT's image embeddings,
infected-head detection with calibrated thresholds, the inference-time repair and input filter of
"A Closer Look at Backdoor Attacks on CLIP", and infection heat maps.

The decomposition itself and the repaired tower live in :mod:`clipguard.models` (a repaired model
is a model); this package fits and applies them:

* :func:`decompose_batched` -- terms of many images, batched, on the CPU;
* :func:`fit_profile` -> :class:`HeadProfile` -- prototypes, eps per head, zeta of the filter;
* :func:`infection` -> :class:`Infection` -- which heads / MLPs are infected per input, filter scores;
* :func:`choose_mlp_layers` -- the late MLPs to mean-ablate under a clean-accuracy budget;
* :func:`save_heatmap` -- layer x head PNG heat maps;
* :func:`reverse_trigger` -- a mask and pattern that send clean images to a zero-shot target
  (Neural Cleanse style, adaptive L1 weight); the core of trigger reverse-engineering;
* :func:`discover_clusters` -- clusters of a scan's top-scored samples, named and ranked as backdoor
  candidates, noisy pairs or duplicates;
* :func:`anomaly_indices`, :func:`calibrate_threshold` -- the model verdict of an audit.
"""
from clipguard.analyze.discover import DiscoverConfig, discover_clusters
from clipguard.analyze.heatmap import save_heatmap
from clipguard.analyze.infection import Infection, infection
from clipguard.analyze.profile import HeadProfile, decompose_batched, fit_profile
from clipguard.analyze.repair import choose_mlp_layers, zero_shot_predict
from clipguard.analyze.reverse import ReverseConfig, ReversedTrigger, clip_normalise, reverse_trigger
from clipguard.analyze.verdict import Calibration, anomaly_indices, calibrate_threshold

__all__ = ["Calibration", "anomaly_indices", "calibrate_threshold", "DiscoverConfig", "discover_clusters",
           "HeadProfile", "Infection", "ReverseConfig", "ReversedTrigger", "choose_mlp_layers", "clip_normalise",
           "decompose_batched", "fit_profile", "infection", "reverse_trigger", "save_heatmap", "zero_shot_predict"]
