"""``fused`` with ``method="folded"`` (every component two-sided): an inverted component cannot
drag it down (issue 9).

Synthetic score columns (n = 4,000, seed 0, 1 % poison; clean N(0, 1), poison shifted by 2.5),
AUROC seen when written:

============================================  =========  ========  ========
columns                                       best part  fisher    folded
============================================  =========  ========  ========
informative + inverted + noise                0.9712     0.8617    0.9667
informative + informative (seed-1 noise)      0.9712     0.9963    0.9874
============================================  =========  ========  ========

The second row is the price of folding: the clean samples of each column's low tail become
suspects too (0.009 below Fisher here, 0.014 at 5 %: ``benchmarks/results/fusion_robustness.md``).
"""
import json

import numpy as np
import pytest

from clipguard.cli import main as cli_main
from clipguard.detect import Scan
from clipguard.detect.detectors.fused import combine, consensus_weights, fuse_scores
from clipguard.detect.metrics import detection_metrics
from detect_helpers import pair_folder


def _columns(rate=0.01, seed=0, inverted=True, noise=True, n=4000, shift=2.5):
    rng = np.random.default_rng(seed)
    y = np.zeros(n, bool)
    y[:int(round(rate * n))] = True
    cols = {"informative": rng.normal(size=n) + shift * y}
    if inverted:
        cols["inverted"] = rng.normal(size=n) - shift * y
    if noise:
        cols["noise"] = rng.normal(size=n)
    return cols, y


def _auroc(y, s):
    return detection_metrics(y, s)["auroc"]


def test_folded_stays_near_the_informative_input_with_an_inverted_and_a_noise_one():
    cols, y = _columns()
    best = _auroc(y, cols["informative"])  # seen 0.9712
    folded, fisher = _auroc(y, fuse_scores(cols, "folded")), _auroc(y, fuse_scores(cols, "fisher"))
    assert _auroc(y, cols["inverted"]) < 0.1  # the inverted input ranks the poison last
    assert folded > best - 0.03  # seen 0.9667
    assert fisher < best - 0.1 and fisher < folded - 0.1  # the default falls further: seen 0.8617


def test_folded_costs_little_with_informative_inputs_only():
    cols, y = _columns(inverted=False, noise=False)
    cols["informative2"] = _columns(seed=1, inverted=False, noise=False)[0]["informative"]
    folded, fisher = _auroc(y, fuse_scores(cols, "folded")), _auroc(y, fuse_scores(cols, "fisher"))
    assert folded > fisher - 0.01  # seen 0.9874 vs 0.9963


def test_folded_keeps_two_sided_components_as_they_are():
    a = np.array([0.0, 1.0, 2.0, 10.0])
    np.testing.assert_allclose(fuse_scores({"a": a}, "folded", two_sided=("a",)), fuse_scores({"a": a}, "fisher"))
    # folded: the lowest value is as far from the median as a high one
    z = fuse_scores({"b": np.array([-10.0, -0.1, 0.0, 0.1, 10.0])}, "folded")
    assert z[0] == z[4] == z.max()


def _world(n=600, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(4, 16))
    lab = rng.integers(0, 4, n)
    x = c[lab] + 0.6 * rng.normal(size=(n, 16))
    t = x + 0.3 * rng.normal(size=(n, 16))
    y = np.zeros(n, bool)
    y[:12] = True
    x[y] = rng.normal(size=16) + 0.05 * rng.normal(size=(12, 16))
    return x.astype(np.float32), t.astype(np.float32), y


def test_folded_in_a_scan_records_orientations_and_weights():
    x, t, y = _world()
    scan = Scan(x, t, ground_truth=y).find_suspects(["fused"], reference="global", k=8, device="cpu",
                                                    detector_params={"fused": {"method": "folded"}})
    info = scan.info["detector_info"]["fused"]
    assert info["method"] == "folded"
    assert set(info["orientation"]) == set(info["components"]) == set(info["weights"])
    assert set(info["orientation"].values()) == {"two-sided"}
    assert sum(info["weights"].values()) == pytest.approx(1.0)
    assert scan.metrics["fused"]["auroc"] > 0.9


def test_folded_from_the_cli(tmp_path):
    pair_folder(tmp_path / "emb")
    rc = cli_main(["scan", str(tmp_path / "emb"), "--out", str(tmp_path / "scan"), "--detector", "fused",
                   "--param", "fused.method=folded", "--device", "cpu"])
    assert rc in (0, None)
    run = json.loads((tmp_path / "scan" / "run.json").read_text())
    assert run["detector_info"]["fused"]["method"] == "folded"
    assert "orientation" in run["detector_info"]["fused"]


# -- "consensus": folded, weighted by agreement with the other components ------------------------------

@pytest.mark.parametrize("rate", [0.005, 0.01, 0.05, 0.1])
def test_consensus_stays_near_the_informative_input_and_drops_the_noise(rate):
    """Seen (informative / fisher / folded / consensus): 0.5 % 0.958 / 0.847 / 0.965 / 0.970;
    1 % 0.971 / 0.862 / 0.967 / 0.981; 5 % 0.964 / 0.795 / 0.950 / 0.972; 10 % 0.961 / 0.735 / 0.940 / 0.966;
    the noise column got weight 0.000 each time."""
    cols, y = _columns(rate=rate)
    fused, weights = combine(cols, "consensus")
    best = _auroc(y, cols["informative"])
    assert _auroc(y, fused) > best - 0.03
    assert _auroc(y, fuse_scores(cols, "fisher")) < best - 0.1  # what the one-sided default did
    assert weights["noise"] < 0.05 < weights["inverted"]
    assert sum(weights.values()) == pytest.approx(1.0)


def test_consensus_weights_by_hand():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    # two components have the same rho with each other: equal weights (= "folded"), here rho = -1
    assert consensus_weights({"a": a, "b": a[::-1].copy()}) == {"a": 0.5, "b": 0.5}
    # a and c agree (each has rho 1 with the mean of the others); a constant b has no rank order
    # (rho undefined -> weight 0)
    w = consensus_weights({"a": a, "b": np.zeros(4), "c": 2 * a})
    assert w == {"a": 0.5, "b": 0.0, "c": 0.5}
    # b anti-correlated with the mean of a and c (rho -1) -> weight 0
    w = consensus_weights({"a": a, "b": -a, "c": a + np.array([0.0, 0.0, 0.0, 10.0])})
    assert w["b"] == 0.0 and w["a"] + w["c"] == pytest.approx(1.0)


def test_consensus_in_a_scan_records_rule_and_weights():
    x, t, y = _world()
    scan = Scan(x, t, ground_truth=y).find_suspects(["fused"], reference="global", k=8, device="cpu",
                                                    detector_params={"fused": {"method": "consensus"}})
    info = scan.info["detector_info"]["fused"]
    assert info["method"] == "consensus" and "Spearman" in info["rule"]
    assert set(info["weights"]) == set(info["components"])
    assert sum(info["weights"].values()) == pytest.approx(1.0, abs=1e-5)
    assert set(info["orientation"].values()) == {"two-sided"}
