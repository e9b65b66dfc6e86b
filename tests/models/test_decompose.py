"""The exact decomposition of a ViT image embedding (models/decompose.py)."""
import pytest
import torch

from clipguard.errors import ConfigError
from clipguard.models import create_model, decompose_images, reconstruction_error
from clipguard.models.decompose import tower_shape


@pytest.fixture(scope="module")
def tiny_vit():
    return create_model("tiny-vit", seed=0)


def test_terms_sum_to_the_models_own_embedding(tiny_vit):
    torch.manual_seed(0)
    x = torch.randn(6, 3, 32, 32)
    d = decompose_images(tiny_vit.model.visual, x)
    L, H, D = tower_shape(tiny_vit.model.visual)
    assert (L, H, D) == (4, 4, 64)
    assert d.heads.shape == (6, L, H, D) and d.mlps.shape == (6, L, D) and d.embedding.shape == (6, D)
    with torch.no_grad():
        ref = tiny_vit.model.encode_image(x)
    rel = ((d.total() - ref).norm(dim=-1) / ref.norm(dim=-1)).max()
    assert rel <= 1e-5
    assert reconstruction_error(tiny_vit.model.visual, x, d) == pytest.approx(float(rel), abs=1e-7)


def test_identity_is_exact_in_float64_at_large_scale():
    # large weights (LayerNorm sigma far from 1, big residuals): in float64 the identity is exact to
    # rounding, so any float32 gap there is rounding, not a missing term
    model = create_model("tiny-vit", seed=1).model.double()
    with torch.no_grad():
        for p in model.visual.parameters():
            p.mul_(3.0)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    assert reconstruction_error(model.visual, x) <= 1e-12


def test_per_token_terms_sum_to_the_head_terms(tiny_vit):
    x = torch.randn(3, 3, 32, 32)
    d = decompose_images(tiny_vit.model.visual, x, token_layers=[-1, 0])
    assert sorted(d.tokens) == [0, 3]
    assert d.tokens[3].shape == (3, 4, 65, 64)  # 8 x 8 patches + the class token
    for layer in (0, 3):
        assert torch.allclose(d.tokens[layer].sum(2), d.heads[:, layer], atol=1e-5)


def test_vit_b_32_random_weights():
    bundle = create_model("ViT-B-32", seed=0)
    x = torch.randn(2, 3, 224, 224)
    d = decompose_images(bundle.model.visual, x)
    assert d.heads.shape == (2, 12, 12, 512)
    assert reconstruction_error(bundle.model.visual, x, d) <= 1e-5


def test_non_vit_is_refused_in_one_line():
    rn = create_model("tiny-rn", seed=0)
    with pytest.raises(ConfigError) as exc:
        decompose_images(rn.model.visual, torch.randn(1, 3, 32, 32))
    msg = str(exc.value)
    assert "\n" not in msg and "ModifiedResNet" in msg and "ViT" in msg


def test_other_pooling_is_refused_in_one_line():
    bundle = create_model("tiny-vit", seed=0)
    bundle.model.visual.pool_type = "avg"  # mean over patch tokens: not a class-token decomposition
    with pytest.raises(ConfigError) as exc:
        decompose_images(bundle.model.visual, torch.randn(1, 3, 32, 32))
    assert "\n" not in str(exc.value) and "class-token pooling" in str(exc.value) and "'avg'" in str(exc.value)
