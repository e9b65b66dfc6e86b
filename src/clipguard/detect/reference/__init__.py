"""Reference sets: which samples each sample is compared with, and its kNN within them.

* :mod:`~clipguard.detect.reference.plan` -- the modes (global, batch, reference,
  multi_reference, auto), their sizes and why ``"auto"`` picks what it picks;
* :mod:`~clipguard.detect.reference.sampling` -- seeded batches and random references;
* :mod:`~clipguard.detect.reference.search` -- kNN against one reference (flat or IVF);
* :mod:`~clipguard.detect.reference.graph` -- the neighbour graph of one reference draw.

Example::

    from clipguard.detect.reference import build_graph, plan_reference

    plan = plan_reference(len(x), "auto", k=16)      # x: (N, d) normalised embeddings
    graph = build_graph(x, 16, plan, draw=0)         # graph.D, graph.I: (N, 16)
"""
from clipguard.detect.reference.graph import NeighbourGraph, build_graph
from clipguard.detect.reference.plan import ReferencePlan, plan_reference
from clipguard.detect.reference.sampling import batch_partition, sample_reference
from clipguard.detect.reference.search import search_reference

__all__ = ["NeighbourGraph", "build_graph", "ReferencePlan", "plan_reference", "batch_partition",
           "sample_reference", "search_reference"]
