"""The scores of a fixed small scan are bit-for-bit those stored before the detect/ split."""
from __future__ import annotations

import json

from score_fingerprint import STORE, fingerprint


def test_scores_match_the_stored_fingerprint():
    stored = json.loads(STORE.read_text())
    now = fingerprint()
    assert set(now) == set(stored)
    # detectors added since may add columns; every stored column must still be there, unchanged
    missing = [f"{mode}:{col}" for mode in stored for col in stored[mode] if col not in now[mode]]
    assert not missing, f"score columns missing: {missing}"
    changed = [f"{mode}:{col}" for mode in stored for col in stored[mode]
               if now[mode].get(col) != stored[mode][col]]
    assert not changed, f"score columns changed: {changed}"
