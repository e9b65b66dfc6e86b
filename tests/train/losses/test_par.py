"""PAR: the distance and its cut-off exact on toy batches; the frozen reference never changes."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from clipguard.errors import ConfigError
from clipguard.models import create_model
from clipguard.train.losses.clip import ClipTerm
from clipguard.train.losses.par import DEFAULT_TAU, ParTerm, par_distances, par_penalty
from clipguard.train.objective import LossTerm, Objective, StepInputs


def test_par_distance_equals_the_hand_value():
    # rows at 0/90, 30/30 and 0/180 degrees: squared distances 2, 0 and 4 -> mean 2
    a = torch.tensor([[1.0, 0.0], [math.cos(math.pi / 6), 0.5], [1.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[0.0, 1.0], [math.cos(math.pi / 6), 0.5], [-1.0, 0.0]], dtype=torch.float64)
    assert float(par_distances(a, b)) == pytest.approx(2.0, abs=1e-12)
    # one row at 60 degrees: ||u - v||^2 = 2 - 2 cos 60 = 1
    c = torch.tensor([[0.5, math.sqrt(3) / 2]], dtype=torch.float64)
    assert float(par_distances(a[:1], c)) == pytest.approx(1.0, abs=1e-12)


def test_par_penalty_cuts_a_distance_above_tau_to_zero_without_gradient():
    d_img = torch.tensor(3.0, requires_grad=True)
    d_txt = torch.tensor(1.0, requires_grad=True)
    out = par_penalty(d_img, d_txt, tau=DEFAULT_TAU)
    assert out.item() == -1.0
    out.backward()
    assert float(d_img.grad) == 0.0 and float(d_txt.grad) == -1.0
    both_below = par_penalty(torch.tensor(2.0), torch.tensor(DEFAULT_TAU), tau=DEFAULT_TAU)
    assert float(both_below) == pytest.approx(-(2.0 + DEFAULT_TAU))  # <= tau still counts
    assert float(par_penalty(torch.tensor(2.2), torch.tensor(4.0), tau=DEFAULT_TAU)) == 0.0


@pytest.fixture(scope="module")
def bundle():
    return create_model("tiny-rn", seed=0)


def _inputs(model: torch.nn.Module, tokenizer, n: int = 4) -> StepInputs:
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(n, 3, 32, 32, generator=g)
    tokens = tokenizer([f"a photo of thing {i}" for i in range(n)])
    feats = {"image": F.normalize(model.encode_image(pixels).float(), dim=-1),
             "text": F.normalize(model.encode_text(tokens).float(), dim=-1)}
    return StepInputs(features=feats, logit_scale=model.logit_scale, rows=torch.arange(n),
                      pixels=pixels, tokens=tokens, model=model)


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with seeded noise on every weight (far from the original)."""
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    return out


def test_par_term_is_zero_at_the_reference_and_equals_the_distances_away_from_it(bundle):
    reference = copy.deepcopy(bundle.model)
    term = ParTerm(reference)
    assert isinstance(term, LossTerm) and term.name == "par" and term.needs == {"image", "text"}
    assert term.describe() == {"tau": DEFAULT_TAU} and list(term.parameters()) == []
    model = copy.deepcopy(bundle.model).eval()
    assert term(_inputs(model, bundle.tokenizer)).item() == 0.0
    assert term.last_distances == {"d_img": 0.0, "d_txt": 0.0}

    moved = _perturbed(bundle.model).eval()
    inputs = _inputs(moved, bundle.tokenizer)
    with torch.no_grad():
        ref = _inputs(bundle.model.eval(), bundle.tokenizer).features
    d_img = par_distances(inputs["image"], ref["image"]).item()
    d_txt = par_distances(inputs["text"], ref["text"]).item()
    assert 0 < d_img and 0 < d_txt and abs(d_img - d_txt) > 1e-3
    far = ParTerm(reference, tau=4.0)
    assert far(inputs).item() == pytest.approx(-(d_img + d_txt), rel=1e-5)
    assert far.last_distances == pytest.approx({"d_img": d_img, "d_txt": d_txt}, rel=1e-5)
    # tau between the two: the larger distance is switched off
    cut = ParTerm(reference, tau=(d_img + d_txt) / 2)
    assert cut(inputs).item() == pytest.approx(-min(d_img, d_txt), rel=1e-5)


def test_par_term_above_tau_passes_no_gradient_and_the_reference_never_changes(bundle):
    reference = copy.deepcopy(bundle.model).train()
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    term = ParTerm(reference, tau=1e-9)
    assert not reference.training and not any(p.requires_grad for p in reference.parameters())
    model = _perturbed(bundle.model).train()
    out = term(_inputs(model, bundle.tokenizer))
    assert out.item() == 0.0
    out.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())

    term.tau = 4.0
    model.zero_grad()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    total, _ = Objective([(1.0, ClipTerm()), (0.5, term)])(_inputs(model, bundle.tokenizer))
    total.backward()
    assert any(p.grad is not None and p.grad.any() for p in model.parameters())
    opt.step()
    assert all(p.grad is None for p in reference.parameters())
    assert all(torch.equal(v, before[k]) for k, v in reference.state_dict().items())


def test_par_term_refuses_bad_options(bundle):
    with pytest.raises(ConfigError, match="tau"):
        ParTerm(copy.deepcopy(bundle.model), tau=0)
    with pytest.raises(ConfigError, match="encode_image"):
        ParTerm(torch.nn.Linear(2, 2))
