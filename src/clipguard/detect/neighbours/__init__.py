"""Nearest-neighbour search under cosine distance, behind one backend interface.

* :mod:`~clipguard.detect.neighbours.base` -- the backend interface, the registry of backends
  and :func:`knn_search` (exact k nearest reference rows of every query);
* :mod:`~clipguard.detect.neighbours.exact` -- the ``"blocked"`` torch backend and the float64
  :func:`knn_bruteforce` every backend is tested against;
* :mod:`~clipguard.detect.neighbours.faiss_flat` -- the ``"faiss"`` backend (``IndexFlatIP``);
* :mod:`~clipguard.detect.neighbours.ivf` -- the approximate IVF index of the reference modes;
* :mod:`~clipguard.detect.neighbours.groups` -- :func:`knn_self_groups`, many per-batch
  self-searches at once;
* :mod:`~clipguard.detect.neighbours.normalize`, :mod:`~clipguard.detect.neighbours.stats` --
  L2 normalisation; k-distance and LID of neighbour distances.

Example::

    from clipguard.detect.neighbours import knn_search, normalize

    x = normalize(embeddings)                       # (N, d) float32, unit rows
    D, I = knn_search(x, x, 16, exclude_self=True)  # (N, 16) distances ascending, row indices
"""
# The backend modules register themselves in this order (NEIGHBOUR_BACKENDS.names() == BACKENDS).
from clipguard.detect.neighbours.base import NEIGHBOUR_BACKENDS, NeighbourBackend, knn_search
from clipguard.detect.neighbours.exact import knn_bruteforce
from clipguard.detect.neighbours.faiss_flat import FaissFlatSearch  # noqa: F401  (registers "faiss")
from clipguard.detect.neighbours.groups import knn_self_groups
from clipguard.detect.neighbours.ivf import IVFIndex
from clipguard.detect.neighbours.normalize import normalize
from clipguard.detect.neighbours.stats import NeighbourStats, kdistance, lid_mle, neighbour_stats

__all__ = ["NEIGHBOUR_BACKENDS", "NeighbourBackend", "knn_search", "knn_bruteforce", "knn_self_groups",
           "IVFIndex", "normalize", "NeighbourStats", "neighbour_stats", "kdistance", "lid_mle"]
