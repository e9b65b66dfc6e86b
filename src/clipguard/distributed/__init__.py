"""Scale-out: the distributor seam and the sharded scan.

* :mod:`~clipguard.distributed.base` -- :class:`Distributor` (``map(make_worker, tasks, on_result)``),
  the registry :data:`DISTRIBUTORS` and the ``"sequential"`` distributor;
* :mod:`~clipguard.distributed.ray_engine` -- the ``"ray"`` distributor (optional extra
  ``clipguard[ray]``);
* :mod:`~clipguard.distributed.tasks` -- resumable task runs (:class:`PartStore`, :func:`run_tasks`);
* :mod:`~clipguard.distributed.scan` -- :func:`scan_sharded`, ``clipguard scan --distributor``;
* :mod:`~clipguard.distributed.embed` -- :func:`embed_sharded`, ``clipguard embed --distributor ray``.

Example::

    from clipguard.distributed import scan_sharded

    scan_sharded("emb", "scan", distributor="ray", reference="batch", workers=8)
"""
# the distributor modules register themselves in this order
from clipguard.distributed.base import DISTRIBUTORS, Distributor, SequentialDistributor, make_distributor
from clipguard.distributed.ray_engine import RayDistributor
from clipguard.distributed.embed import embed_sharded
from clipguard.distributed.scan import scan_sharded
from clipguard.distributed.tasks import PartStore, TaskReport, TasksFailedError, run_tasks

__all__ = ["DISTRIBUTORS", "Distributor", "SequentialDistributor", "RayDistributor", "make_distributor",
           "scan_sharded", "embed_sharded", "PartStore", "TaskReport", "TasksFailedError", "run_tasks"]
