"""Choosing the MLP blocks to mean-ablate under a clean-accuracy budget."""
import numpy as np
import torch

from clipguard.analyze import choose_mlp_layers, fit_profile
from clipguard.models.decompose import Decomposition

L, H, D, C = 4, 2, 16, 4


def _world(n=2000, seed=0):
    """Class information lives in block 1's MLP; blocks 2 and 3 add class-free noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (n,), generator=g)
    classes = torch.eye(D)[:C] * 3.0
    mlps = 0.3 * torch.randn(n, L, D, generator=g)
    mlps[:, 1] += classes[labels]
    mlps[:, 3] += 0.5
    heads = 0.1 * torch.randn(n, L, H, D, generator=g) + 0.2
    d = Decomposition(torch.zeros(n, D), heads, mlps, torch.zeros(n, D), {}, torch.ones(n))
    return d, labels.numpy(), torch.nn.functional.normalize(classes, dim=-1)


def test_the_longest_harmless_suffix_is_chosen():
    d, labels, clf = _world()
    prof = fit_profile(d, fpr=0.01, seed=0)
    layers, rec = choose_mlp_layers(prof, d, clf, labels=labels, budget=0.03)
    assert layers == (2, 3)
    assert [t["mlp_layers"] for t in rec["tried"]] == [[], [3], [2, 3], [1, 2, 3]]
    assert rec["tried"][-1]["drop"] > 0.03 >= rec["tried"][2]["drop"]
    assert rec["measure"] == "accuracy"


def test_without_labels_agreement_with_the_model_is_used():
    d, _, clf = _world()
    prof = fit_profile(d, fpr=0.01, seed=0)
    layers, rec = choose_mlp_layers(prof, d, clf, budget=0.03)
    assert layers == (2, 3) and rec["measure"].startswith("agreement") and rec["unrepaired"] == 1.0


def test_a_zero_budget_keeps_every_mlp_when_any_change_costs():
    d, labels, clf = _world()
    prof = fit_profile(d, fpr=0.2, seed=0)  # many heads "infected": head repair alone moves predictions
    layers, rec = choose_mlp_layers(prof, d, clf, labels=labels, budget=0.0)
    assert all(t["drop"] <= 0 for t in rec["tried"][:-1])
    assert np.isfinite(rec["unrepaired"]) and layers == tuple(rec["tried"][-2]["mlp_layers"])
