"""The sharded scan (map over parts + reduce) gives exactly the single-process engine's scores."""
from __future__ import annotations

import numpy as np
import pytest

from clipguard.detect.config import ScanConfig
from clipguard.detect.engine import prepare_inputs, score_embeddings, select_detectors
from clipguard.detect.reference.plan import plan_reference
from clipguard.detect.sharded import (
    draw_graph,
    draw_scores,
    not_loaded,
    plan_parts,
    reduce_needs,
    reduce_scores,
    reference_draws,
    score_part,
)


def _world(n=1500, d=24, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, d))
    lab = rng.integers(0, 12, n)
    x = centres[lab] + 0.4 * rng.normal(size=(n, d))
    x[:15] = centres[0] * 0.2 + rng.normal(size=(15, d)) * 0.05 + 3.0  # a tight odd cluster
    x[20] = x[21]  # an exact duplicate pair (ties)
    t = centres[lab] @ rng.normal(size=(d, d)) + 0.3 * rng.normal(size=(n, d))
    caps = np.array([f"a photo of class {c}" for c in lab], dtype=object)
    caps[:15] = "a photo of a star"
    return x.astype(np.float32), t.astype(np.float32), caps


def sharded_scores(image, text, captions, names, cfg, part_rows, *, lean=False):
    """Run the map part by part (as any distributor would) and the reduce."""
    x, t, keys = prepare_inputs(image, text, captions, None)
    n = len(x)
    available = {"image"} | ({"text"} if t is not None else set()) | ({"captions"} if keys is not None else set())
    plan = plan_reference(n, cfg.reference, k=cfg.k, batch_size=cfg.batch_size,
                          reference_size=cfg.reference_size, n_references=cfg.n_references, index=cfg.index)
    refs = reference_draws(lambda r: x[r], n, plan, cfg, (lambda r: t[r]) if t is not None else None)
    parts = plan_parts(n, plan, cfg, part_rows)
    results = [score_part(x[p.rows], p, plan, cfg, names, available,
                          text=None if t is None else t[p.rows], references=refs) for p in parts]

    def graph_of(r):
        return draw_graph(plan, cfg, n, refs, r, [(p.rows, res.D[r], res.I[r]) for p, res in zip(parts, results)])

    def cache_of(r):
        return draw_scores(n, [(p.rows, res.scores[r]) for p, res in zip(parts, results)])

    need_x, need_t, _ = reduce_needs(names, cfg, available, keys is not None)
    if lean:
        x = x if need_x else not_loaded(n, x.shape[1])
        t = t if (t is None or need_t) else not_loaded(n, t.shape[1])
    scores, _ = reduce_scores(x, plan, cfg, names, graph_of, cache_of, text=t, captions=keys)
    return scores


@pytest.mark.parametrize("mode,extra", [
    ("batch", {"batch_size": 200}),
    ("global", {}),
    ("reference", {"reference_size": 300, "index": "flat"}),
    ("multi_reference", {"reference_size": 250, "n_references": 3, "index": "flat"}),
    ("multi_reference", {"reference_size": 400, "n_references": 2, "index": "ivf", "n_recall": 200}),
])
@pytest.mark.parametrize("lean", [False, True])
def test_sharded_equals_single_process(mode, extra, lean):
    image, text, caps = _world()
    cfg = ScanConfig.resolve(None, k=8, reference=mode, **extra)
    _, names, _ = select_detectors(None, {"image", "text", "captions"})
    want, _ = score_embeddings(image, names, cfg, text=text, captions=caps)
    got = sharded_scores(image, text, caps, names, cfg, part_rows=400, lean=lean)
    assert set(got) == set(want)
    for name in names:
        np.testing.assert_array_equal(got[name], want[name], err_msg=f"{mode} {name}")


def test_reduce_loads_embeddings_only_when_needed():
    cfg = ScanConfig.resolve(None, k=8)
    assert reduce_needs(["dao", "fused"], cfg, {"image"}, False) == (False, False, True)  # density_anomaly
    assert reduce_needs(["dao", "lid"], cfg, {"image"}, False) == (False, False, False)
    assert reduce_needs(["iforest"], cfg, {"image"}, False) == (True, False, False)
    # caption_dup reads caption strings when there are any, caption embeddings otherwise
    assert reduce_needs(["caption_dup"], cfg, {"image", "text", "captions"}, True) == (False, False, False)
    assert reduce_needs(["caption_dup"], cfg, {"image", "text"}, False) == (False, True, False)


def test_an_ivf_reference_ships_to_workers_and_searches_the_same():
    import pickle

    image, _, _ = _world()
    x, _, _ = prepare_inputs(image, None, None, None)
    cfg = ScanConfig.resolve(None, k=8, reference="reference", reference_size=600, index="ivf", n_recall=100)
    plan = plan_reference(len(x), "reference", k=8, reference_size=600, index="ivf")
    (ref,) = reference_draws(lambda r: x[r], len(x), plan, cfg)
    assert ref.info["index"] == "ivf" and 0 < ref.info["recall_at_k"] <= 1 and "nprobe_tuning" in ref.info
    shipped = pickle.loads(pickle.dumps(ref.search))
    rows = np.arange(100, 400)
    a = ref.search.search_queries(x[rows], ref.search.self_positions(rows))
    b = shipped.search_queries(x[rows], shipped.self_positions(rows))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_batch_parts_cover_every_row_once_in_whole_batches():
    cfg = ScanConfig.resolve(None, k=8, reference="batch", batch_size=100)
    plan = plan_reference(1050, "batch", k=8, batch_size=100)
    parts = plan_parts(1050, plan, cfg, part_rows=350)
    rows = np.concatenate([p.rows for p in parts])
    assert np.array_equal(np.sort(rows), np.arange(1050))
    assert [len(p.groups) for p in parts] == [3, 3, 3, 2]  # 11 batches, the last of 50 rows
    assert [len(p.rows) for p in parts] == [300, 300, 300, 150]
