"""The inference-time head repair (models/head_repair.py) and its model folder."""
import pytest
import torch

from clipguard.errors import ConfigError
from clipguard.models import HeadRepair, RepairedVisual, attach_repair, create_model, decompose_images, load_model, save_model
from clipguard.models.head_repair import repaired_sum


def _repair(visual, eps_value, mlp_layers=()):
    d = decompose_images(visual, torch.randn(32, 3, 32, 32))
    L, H = d.heads.shape[1:3]
    return HeadRepair(d.heads.mean(0), torch.full((L, H), eps_value), d.mlps.mean(0), mlp_layers)


def test_no_infected_head_and_no_mlp_changes_nothing():
    bundle = create_model("tiny-vit", seed=0)
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        before = bundle.model.encode_image(x)
    attach_repair(bundle.model, _repair(bundle.model.visual, float("-inf")))
    assert isinstance(bundle.model.visual, RepairedVisual)
    with torch.no_grad():
        after = bundle.model.encode_image(x)
    assert torch.allclose(before, after, atol=1e-5, rtol=1e-5)


def test_every_head_infected_gives_the_prototypes():
    bundle = create_model("tiny-vit", seed=0)
    rep = _repair(bundle.model.visual, float("inf"), mlp_layers=(3,))
    d = decompose_images(bundle.model.visual, torch.randn(4, 3, 32, 32))
    emb, infected = repaired_sum(d, rep)
    assert infected.all()
    expect = d.embedding + rep.head_prototypes.sum((0, 1)) + d.mlps[:, :3].sum(1) + rep.mlp_means[3] + d.bias
    assert torch.allclose(emb, expect, atol=1e-5)


def test_repaired_folder_round_trip(tmp_path):
    bundle = create_model("tiny-vit", seed=0)
    attach_repair(bundle.model, _repair(bundle.model.visual, 0.0, mlp_layers=(2, 3)))
    save_model(bundle, tmp_path / "rep")
    assert (tmp_path / "rep" / "repair.safetensors").is_file()
    again = load_model(tmp_path / "rep")
    assert isinstance(again.model.visual, RepairedVisual) and again.model.visual.repair.mlp_layers == (2, 3)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(again.model.encode_image(x), bundle.model.encode_image(x), atol=1e-6)
    # the weights file keeps the original open_clip names: a plain architecture loads it
    create_model("tiny-vit", weights=tmp_path / "rep" / "model.safetensors")
    (tmp_path / "rep" / "repair.safetensors").unlink()
    with pytest.raises(ConfigError, match="repair.safetensors is missing"):
        load_model(tmp_path / "rep")


def test_repair_of_the_wrong_shape_is_refused():
    bundle = create_model("tiny-vit", seed=0)
    rep = HeadRepair(torch.zeros(2, 4, 64), torch.zeros(2, 4), torch.zeros(2, 64))
    with pytest.raises(ConfigError, match="does not fit"):
        attach_repair(bundle.model, rep)
    with pytest.raises(ConfigError, match="shapes disagree"):
        HeadRepair(torch.zeros(2, 4, 64), torch.zeros(3, 4), torch.zeros(2, 64))
