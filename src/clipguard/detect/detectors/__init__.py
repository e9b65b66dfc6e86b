"""The detectors: one module per detector, all in the :data:`DETECTORS` registry.

Every detector follows the PyOD / scikit-learn contract of
:class:`~clipguard.detect.detectors.base.Detector` (constructor stores parameters; ``fit``,
``score_samples``, ``fit_score``; fitted attributes end in ``_``; strict ``get_params`` /
``set_params``) and scores "higher = more suspicious". The modules are imported here in a fixed
order, so ``DETECTORS.names()`` is always::

    kdist, lid, slof, dao, density_anomaly, iforest, clipscore, caption_dup,
    caption_disagreement, spectral, activation_cluster, learning_speed, perturbation, fused

Example::

    from clipguard.detect.detectors import DETECTORS

    det = DETECTORS.get("dao")(k=16)
    scores = det.fit_score(embeddings)          # (N,) float64
    det.set_params(k=8)                         # ConfigError for a name dao does not take
"""
from clipguard.detect.detectors.base import DensityDetector, Detector, ScoreInputs, check_is_fitted
from clipguard.detect.detectors.registry import DETECTORS, make_detector, nest_params

# The registration order (= DETECTORS.names()): density detectors, the forest, the pair/text
# signals, the sub-population tests inside caption concepts, the signals of the per-row records (training
# dynamics, perturbation stability), then fused, which combines the others.
from clipguard.detect.detectors.kdist import KDistance  # noqa: E402  (registers "kdist")
from clipguard.detect.detectors.lid import LID  # noqa: E402
from clipguard.detect.detectors.slof import SLOF  # noqa: E402
from clipguard.detect.detectors.dao import DAO  # noqa: E402
from clipguard.detect.detectors.density_anomaly import DensityAnomaly  # noqa: E402
from clipguard.detect.detectors.iforest import IForest  # noqa: E402
from clipguard.detect.detectors.clipscore import CLIPScore  # noqa: E402
from clipguard.detect.detectors.caption_dup import CaptionDup  # noqa: E402
from clipguard.detect.detectors.caption_disagreement import CaptionDisagreement  # noqa: E402
from clipguard.detect.detectors.spectral import Spectral  # noqa: E402
from clipguard.detect.detectors.activation_cluster import ActivationCluster  # noqa: E402
from clipguard.detect.detectors.learning_speed import LearningSpeed  # noqa: E402
from clipguard.detect.detectors.perturbation import Perturbation  # noqa: E402
from clipguard.detect.detectors.fused import Fused  # noqa: E402

__all__ = ["DETECTORS", "Detector", "DensityDetector", "ScoreInputs", "check_is_fitted", "make_detector",
           "nest_params", "KDistance", "LID", "SLOF", "DAO", "DensityAnomaly", "IForest", "CLIPScore",
           "CaptionDup", "CaptionDisagreement", "Spectral", "ActivationCluster", "LearningSpeed", "Perturbation", "Fused"]
