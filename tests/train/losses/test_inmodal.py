"""CleanCLIP's in-modal loss: exact on a hand-computed toy batch, symmetric in its modality halves."""
import math

import pytest
import torch

from clipguard.train.losses.clip import ClipTerm
from clipguard.train.losses.inmodal import InModalTerm, inmodal_loss
from clipguard.train.objective import LossTerm, Objective, StepInputs


def unit(*degrees: float) -> torch.Tensor:
    """(len(degrees), 2) unit vectors at the given angles."""
    return torch.tensor([[math.cos(math.radians(d)), math.sin(math.radians(d))] for d in degrees],
                        dtype=torch.float64)


def hand_ce(rows: list[list[float]], cols: list[list[float]], s: float) -> float:
    """Mean over i of -log softmax_j(s * rows_i . cols_j)[i], with explicit loops."""
    total = 0.0
    for i, a in enumerate(rows):
        logits = [s * sum(x * y for x, y in zip(a, b)) for b in cols]
        total += -(logits[i] - math.log(sum(math.exp(v) for v in logits)))
    return total / len(rows)


I, I_AUG = unit(0, 100, 220), unit(20, 90, 250)
T, T_AUG = unit(45, 170, 300), unit(60, 150, 330)


def step_inputs(logit_scale: torch.Tensor) -> StepInputs:
    feats = {"image": I, "image_aug": I_AUG, "text": T, "text_aug": T_AUG}
    return StepInputs(features=feats, logit_scale=logit_scale, rows=torch.arange(3),
                      pixels=torch.zeros(3, 3, 2, 2), tokens=torch.zeros(3, 4, dtype=torch.long),
                      model=torch.nn.Identity())


def test_inmodal_loss_equals_the_hand_computed_value():
    log_s = math.log(2.5)
    expected = 0.5 * (hand_ce(I.tolist(), I_AUG.tolist(), 2.5) + hand_ce(T.tolist(), T_AUG.tolist(), 2.5))
    got = inmodal_loss(I, I_AUG, T, T_AUG, torch.tensor(log_s, dtype=torch.float64))
    assert float(got) == pytest.approx(expected, rel=1e-12)


def test_inmodal_loss_is_one_direction_per_modality():
    # rows are the original views: swapping a modality's two views changes the loss
    ls = torch.tensor(math.log(2.5), dtype=torch.float64)
    swapped = 0.5 * (hand_ce(I_AUG.tolist(), I.tolist(), 2.5) + hand_ce(T.tolist(), T_AUG.tolist(), 2.5))
    assert inmodal_loss(I_AUG, I, T, T_AUG, ls).item() == pytest.approx(swapped, rel=1e-12)
    assert inmodal_loss(I_AUG, I, T, T_AUG, ls).item() != pytest.approx(inmodal_loss(I, I_AUG, T, T_AUG, ls).item())


def test_inmodal_loss_is_symmetric_in_its_modality_halves():
    ls = torch.tensor(1.3, dtype=torch.float64)
    assert torch.equal(inmodal_loss(I, I_AUG, T, T_AUG, ls), inmodal_loss(T, T_AUG, I, I_AUG, ls))


def test_inmodal_term_is_a_loss_term_with_a_temperature_gradient():
    term = InModalTerm()
    assert isinstance(term, LossTerm) and term.name == "inmodal"
    assert term.needs == {"image", "image_aug", "text", "text_aug"}
    assert list(term.parameters()) == [] and term.describe() == {}
    ls = torch.tensor(math.log(2.5), dtype=torch.float64, requires_grad=True)
    value = term(step_inputs(ls))
    assert torch.equal(value, inmodal_loss(I, I_AUG, T, T_AUG, ls))
    value.backward()
    assert ls.grad is not None and float(ls.grad) != 0.0


def test_cleanclip_objective_is_the_weighted_sum():
    ls = torch.tensor(math.log(2.5), dtype=torch.float64)
    obj = Objective([(1.0, ClipTerm()), (2.0, InModalTerm())])
    assert obj.needs == {"image", "image_aug", "text", "text_aug"}
    total, parts = obj(step_inputs(ls))
    assert total.item() == pytest.approx(parts["clip"] + 2 * parts["inmodal"], rel=1e-12)
    assert obj.describe() == [{"term": "clip", "weight": 1.0}, {"term": "inmodal", "weight": 2.0}]
