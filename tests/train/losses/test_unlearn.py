"""ABL for CLIP: the lowest-cosine suspects, the unlearning term, and the CLIP loss without them."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipguard.errors import ConfigError
from clipguard.train.losses.clip import ClipTerm, clip_loss
from clipguard.train.losses.unlearn import UnlearnTerm, abl_suspects, unlearn_loss
from clipguard.train.objective import LossTerm, StepInputs

COS = np.array([0.5, -0.1, 0.3, -0.1, 0.9])


def test_abl_suspects_picks_the_lowest_cosines():
    assert np.flatnonzero(abl_suspects(COS, top=1)).tolist() == [1]  # tie 1/3: the lower row first
    assert np.flatnonzero(abl_suspects(COS, top=2)).tolist() == [1, 3]
    assert np.flatnonzero(abl_suspects(COS, top=3)).tolist() == [1, 2, 3]
    assert np.flatnonzero(abl_suspects(COS, share=0.4)).tolist() == [1, 3]  # ceil(0.4 * 5) = 2
    assert np.flatnonzero(abl_suspects(COS, share=0.01)).tolist() == [1]  # at least one
    assert np.flatnonzero(abl_suspects(torch.tensor(COS), share=0.5)).tolist() == [1, 2, 3]
    m = abl_suspects(COS, top=5)
    assert m.dtype == bool and m.shape == (5,) and m.all()


@pytest.mark.parametrize("kwargs", [{}, {"share": 0.1, "top": 1}, {"share": 0.0}, {"share": 1.0},
                                    {"share": 1.5}, {"share": float("nan")}, {"top": 0}, {"top": 6},
                                    {"top": 1.5}, {"top": True}])
def test_abl_suspects_refuses_bad_counts(kwargs):
    with pytest.raises(ConfigError, match="ABL"):
        abl_suspects(COS, **kwargs)


@pytest.mark.parametrize("cos", [np.array([0.1, np.nan]), np.zeros((2, 2)), np.array([])])
def test_abl_suspects_refuses_bad_cosines(cos):
    with pytest.raises(ConfigError, match="cosines"):
        abl_suspects(cos, top=1)


def _features(n: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, 8, generator=g, dtype=torch.float64), dim=-1).requires_grad_(True)
    txt = F.normalize(torch.randn(n, 8, generator=g, dtype=torch.float64), dim=-1).requires_grad_(True)
    return img, txt


def _inputs(img, txt, rows) -> StepInputs:
    return StepInputs(features={"image": img, "text": txt}, logit_scale=torch.tensor(2.0, dtype=torch.float64),
                      rows=torch.tensor(rows), pixels=torch.zeros(len(rows), 3, 2, 2),
                      tokens=torch.zeros(len(rows), 4, dtype=torch.long), model=torch.nn.Identity())


def test_unlearn_term_is_the_mean_squared_cosine_of_the_suspects():
    img, txt = _features()
    mask = np.zeros(10, dtype=bool)
    mask[[2, 5]] = True
    term = UnlearnTerm(mask)
    assert isinstance(term, LossTerm) and term.name == "unlearn" and term.needs == {"image", "text"}
    assert term.describe() == {"suspects": 2}
    value = term(_inputs(img, txt, [7, 2, 0, 5]))  # batch rows 1 and 3 are the suspects
    cos = [(img[i] @ txt[i]).item() for i in (1, 3)]
    assert value.item() == pytest.approx((cos[0] ** 2 + cos[1] ** 2) / 2, rel=1e-12)
    value.backward()
    assert img.grad[[0, 2]].abs().sum() == 0 and img.grad[[1, 3]].abs().sum() > 0


def test_unlearn_term_is_exactly_zero_with_a_gradient_path_without_suspects():
    img, txt = _features()
    value = UnlearnTerm(np.zeros(10, dtype=bool))(_inputs(img, txt, [7, 2, 0, 5]))
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert img.grad is not None and not img.grad.any()
    assert unlearn_loss(img, txt, torch.zeros(4, dtype=torch.bool)).item() == 0.0


def test_unlearn_term_refuses_a_mask_that_does_not_cover_the_manifest():
    img, txt = _features()
    with pytest.raises(ConfigError, match="covers 3 manifest rows"):
        UnlearnTerm(np.zeros(3, dtype=bool))(_inputs(img, txt, [7, 2, 0, 5]))
    with pytest.raises(ConfigError, match="bool"):
        UnlearnTerm(np.array([0, 3]))


def test_clip_term_with_exclude_is_the_clip_loss_of_the_kept_rows():
    img, txt = _features(5)
    ls = torch.tensor(2.0, dtype=torch.float64)
    rows = [4, 0, 8, 3, 6]
    mask = np.zeros(9, dtype=bool)
    mask[[0, 3]] = True  # batch rows 1 and 3
    term = ClipTerm(exclude=mask)
    assert term.describe() == {"excluded": 2}
    keep = [0, 2, 4]
    expected = clip_loss(img[keep], txt[keep], ls)
    assert torch.equal(term(_inputs(img, txt, rows)), expected)


def test_clip_term_with_fewer_than_two_kept_rows_is_zero_with_a_gradient_path():
    img, txt = _features(3)
    mask = np.ones(3, dtype=bool)
    mask[1] = False
    value = ClipTerm(exclude=mask)(_inputs(img, txt, [0, 1, 2]))
    assert value.item() == 0.0
    value.backward()
    assert img.grad is not None and not img.grad.any()


def test_clip_term_without_exclude_is_unchanged():
    img, txt = _features(5)
    term = ClipTerm()
    assert term.describe() == {}
    expected = clip_loss(img, txt, torch.tensor(2.0, dtype=torch.float64))
    assert torch.equal(term(_inputs(img, txt, [0, 1, 2, 3, 4])), expected)
    with pytest.raises(ConfigError, match="bool"):
        ClipTerm(exclude=np.zeros((2, 2), dtype=bool))
