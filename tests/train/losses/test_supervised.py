"""Supervised finetuning control: cross-entropy of a seeded linear head."""
import math

import pytest
import torch
import torch.nn.functional as F

from clipguard.errors import ConfigError
from clipguard.train.losses.supervised import SupervisedTerm
from clipguard.train.objective import LossTerm, Objective, StepInputs


def _inputs(raw: torch.Tensor, labels: list[int]) -> StepInputs:
    n = raw.shape[0]
    return StepInputs(features={"image_raw": raw, "label": torch.tensor(labels)}, logit_scale=torch.tensor(0.0),
                      rows=torch.arange(n), pixels=torch.zeros(n, 3, 2, 2),
                      tokens=torch.zeros(n, 4, dtype=torch.long), model=torch.nn.Identity())


def test_supervised_loss_matches_torch_and_the_hand_value():
    term = SupervisedTerm(4, 3, seed=0)
    assert isinstance(term, LossTerm) and term.name == "supervised" and term.needs == {"image_raw", "label"}
    assert term.describe()["n_classes"] == 3
    raw = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, 1.0, -1.0]])
    labels = [2, 0]
    value = term(_inputs(raw, labels))
    w, b = term.head.weight.detach(), term.head.bias.detach()
    assert value.item() == pytest.approx(float(F.cross_entropy(raw @ w.t() + b, torch.tensor(labels))), rel=1e-6)
    hand = 0.0
    for x, y in zip(raw.tolist(), labels):
        logits = [sum(xi * wi for xi, wi in zip(x, wc)) + bc for wc, bc in zip(w.tolist(), b.tolist())]
        hand += -(logits[y] - math.log(sum(math.exp(v) for v in logits)))
    assert value.item() == pytest.approx(hand / 2, rel=1e-5)


def test_same_seed_same_head_and_the_global_generator_is_untouched():
    state = torch.get_rng_state()
    a, b, c = SupervisedTerm(8, 5, seed=3), SupervisedTerm(8, 5, seed=3), SupervisedTerm(8, 5, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.head.weight, b.head.weight) and torch.equal(a.head.bias, b.head.bias)
    assert not torch.equal(a.head.weight, c.head.weight)


def test_the_head_is_the_terms_parameters_and_trains():
    term = SupervisedTerm(4, 3)
    params = list(term.parameters())
    assert len(params) == 2 and params[0] is term.head.weight and params[1] is term.head.bias
    obj = Objective([(1.0, term)])
    assert list(obj.parameters()) == params
    total, parts = obj(_inputs(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), [0, 1, 2, 0, 1, 2]))
    total.backward()
    assert all(p.grad is not None and p.grad.any() for p in params)


def test_supervised_term_refuses_bad_labels_and_widths():
    term = SupervisedTerm(4, 3)
    with pytest.raises(ConfigError, match="label"):
        term(_inputs(torch.zeros(2, 4), [0, 3]))
    with pytest.raises(ConfigError, match="embed_dim"):
        term(_inputs(torch.zeros(2, 5), [0, 1]))
    with pytest.raises(ConfigError, match="n_classes"):
        SupervisedTerm(4, 1)
