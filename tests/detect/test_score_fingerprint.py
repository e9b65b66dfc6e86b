"""The scores of a fixed small scan agree with the stored ones (values within a tolerance that
covers the CPU's float32 kernels; see score_fingerprint for what is stored and why)."""
from __future__ import annotations

import numpy as np
import pytest

from score_fingerprint import (ATOL, MODES, RTOL, STORE, compare, load, ranks_agree,
                               score_problems, values)


@pytest.fixture(scope="module")
def stored() -> dict[str, np.ndarray]:
    return load()


def test_scores_match_the_stored_values(stored):
    assert STORE.stat().st_size < 1_000_000
    assert {key.split("/")[0] for key in stored} == set(MODES)
    problems = compare(values(), stored)  # new columns are allowed; stored ones must agree
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("key", ["ivf/dao_score", "reference/fused_score", "global/kdist_score"])
def test_a_relative_change_of_1e_3_in_one_column_is_detected(stored, key):
    """DAO and fused are the columns the CPU's kernels move most (3e-4 relative on a few rows)."""
    assert compare(stored, stored) == []
    now = {**stored, key: stored[key] * (1 + 1e-3)}
    problems = compare(now, stored)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{key.replace('/', ':')}: only 0% of the rows within")


def test_one_row_moved_far_or_a_missing_column_is_detected(stored):
    key = "reference/lid_score"
    score = stored[key].copy()
    score[7] *= 1.05
    (problem,) = score_problems("reference:lid_score", score, stored[key])
    assert "1 rows beyond rtol=0.01" in problem and "max |diff|" in problem
    now = {k: v for k, v in stored.items() if k != key}
    assert compare(now, stored) == ["reference:lid_score: missing"]


def test_ranks_agree_allows_swaps_among_near_ties_only():
    score = np.array([5.0, 3.0, 3.0 + 1e-7, 1.0])
    stored_rank = np.array([1, 3, 2, 4])
    near_tie = np.array([1, 2, 3, 4])  # rows 1 and 2 swap; their stored scores tie within rtol
    assert ranks_agree(near_tie, stored_rank, score, RTOL, ATOL).all()
    real = np.array([2, 3, 1, 4])  # rows 0 and 2 swap: 5.0 vs 3.0
    assert ranks_agree(real, stored_rank, score, RTOL, ATOL).tolist() == [False, True, False, True]
    assert not ranks_agree(np.array([0, 2, 1, 3]), stored_rank, score, RTOL, ATOL).any()


def test_the_tolerance_covers_faiss_at_a_lower_simd_level(stored):
    """FAISS picks its kernels by the CPU (where it dispatches at run time): the reference modes
    computed at a lower SIMD level than this CPU's must still agree with the stored values."""
    faiss = pytest.importorskip("faiss")
    cfg = getattr(faiss, "SIMDConfig", None)
    if cfg is None or not cfg.has_dynamic_dispatch():
        pytest.skip("this faiss has no run-time SIMD dispatch")
    level = cfg.get_level()
    lower = [lv for lv in (faiss.SIMDLevel_NONE, getattr(faiss, "SIMDLevel_AVX2", None))
             if lv is not None and lv < level and cfg.is_simd_level_available(lv)]
    if not lower:
        pytest.skip("FAISS already runs at its lowest SIMD level")
    faiss_modes = {m: MODES[m] for m in ("reference", "multi_reference", "ivf")}
    try:
        for lv in lower:
            cfg.set_level(lv)
            now = values(faiss_modes)
            problems = compare(now, {key: stored[key] for key in now})
            assert not problems, f"SIMD level {lv}:\n" + "\n".join(problems)
    finally:
        cfg.set_level(level)
