"""A saved scan carries the poisoned-share estimate (run.json) and the trade-off curve (tradeoff.csv)."""
import json

import numpy as np
import pandas as pd
import pytest

from clipguard.detect import Scan
from clipguard.detect.store import format_tradeoff, read_share


def _scan(n: int, n_bad: int, tmp_path, truth: bool = True):
    rng = np.random.default_rng(0)
    x = 0.3 * rng.normal(size=(n, 16)).astype(np.float32)
    x[:, 15] += 3.0
    x[:n_bad] += 3.0 * np.eye(16, dtype=np.float32)[np.arange(n_bad) % 15]  # isolated rows
    gt = (np.arange(n) < n_bad) if truth else None
    Scan(x, ground_truth=gt).find_suspects(["kdist"], k=5, reference="global").save(tmp_path)
    return json.loads((tmp_path / "run.json").read_text())


def test_scan_records_the_estimate_and_the_curve(tmp_path):
    run = _scan(600, 12, tmp_path)
    est, curve = read_share(tmp_path)
    assert est == run["share_estimate"] and est["detector"] == "kdist"
    assert est["low"] <= 12 / 600 <= est["high"] and str(tmp_path / "tradeoff.csv") in run["outputs"]
    row = curve[curve["is_estimate"]].iloc[0]
    assert row["n_removed"] == est["n_estimated"] and {"precision", "recall"} <= set(curve.columns)
    top = np.argsort(-pd.read_parquet(tmp_path / "scores" / "scores_0.parquet")["kdist_score"].to_numpy())
    assert row["recall"] == pytest.approx((top[: int(row["n_removed"])] < 12).sum() / 12, abs=1e-6)  # the truth (CSV: 6 decimals)
    assert "<- estimate" in format_tradeoff(curve) and "share" in run["timings_s"]


def test_without_truth_the_curve_has_only_expected_columns(tmp_path):
    _scan(300, 6, tmp_path, truth=False)
    _, curve = read_share(tmp_path)
    assert "precision" not in curve.columns and curve["expected_precision"].between(0, 1).all()


def test_a_set_too_small_records_why(tmp_path):
    run = _scan(12, 0, tmp_path)
    assert "at least 20 finite scores" in run["share_estimate"]["skipped"]
    assert read_share(tmp_path) == (run["share_estimate"], None)
