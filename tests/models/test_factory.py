import json
import os
import pickle
import shutil

import pandas as pd
import pytest
import torch

from clipguard.data import write_manifest
from clipguard.errors import ConfigError
from clipguard.models import create_model, list_models, load_model, save_model
from tests_helpers import assert_one_line_error, make_bad_manifest, run_cli


def test_list_and_create_tiny():
    names = list_models()
    assert names[:2] == ["tiny-rn", "tiny-vit"] and "RN50" in names and "ViT-B-32" in names
    b = create_model("tiny-rn")
    assert b.image_size == 32
    x = torch.randn(2, 3, 32, 32)
    assert b.model.encode_image(x).shape == (2, 64)
    assert b.model.encode_text(b.tokenizer(["a red star", "a ring"])).shape == (2, 64)


def test_seeded_init_is_reproducible():
    a, b, c = create_model("tiny-rn", seed=1), create_model("tiny-rn", seed=1), create_model("tiny-rn", seed=2)
    wa, wb, wc = (next(m.model.visual.parameters()) for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_load_model_carries_the_training_set_it_was_saved_with(tmp_path):
    save_model(create_model("tiny-rn", seed=0), tmp_path / "m", extra={"trained_on": "/data/train.parquet"})
    assert load_model(tmp_path / "m").trained_on == "/data/train.parquet"
    save_model(create_model("tiny-rn", seed=0), tmp_path / "fresh")
    assert load_model(tmp_path / "fresh").trained_on is None and create_model("tiny-rn").trained_on is None


def test_safetensors_round_trip(tmp_path):
    b = create_model("tiny-vit", seed=3)
    save_model(b, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file() and (tmp_path / "m" / "model.json").is_file()
    b2 = load_model(tmp_path / "m")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(b.model.encode_image(x), b2.model.encode_image(x))


def test_weights_only_torch_file_and_mismatch(tmp_path):
    b = create_model("tiny-rn", seed=5)
    torch.save({"state_dict": {f"module.{k}": v for k, v in b.model.state_dict().items()}}, tmp_path / "w.pt")
    b2 = create_model("tiny-rn", weights=tmp_path / "w.pt", seed=0)
    assert torch.equal(b2.model.logit_scale, b.model.logit_scale)
    assert all(torch.equal(p, q) for p, q in zip(b.model.parameters(), b2.model.parameters()))
    with pytest.raises(ConfigError, match="do not match"):
        create_model("tiny-vit", weights=tmp_path / "w.pt")


class _Payload:
    """Unpickling this runs ``call(*args)``: a shell command or ``open(marker, "w")`` that creates the marker."""

    def __init__(self, call, args):
        self.call, self.args = call, args

    def __reduce__(self):
        return (self.call, self.args)


def _evil_files(folder):
    """``{name: (path, marker)}``: torch pickles whose payload would create ``marker`` when loaded."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, (call, fmt) in {"os.system, torch.save": (os.system, "zip"),
                              "open(), raw pickle protocol 2": (open, 2),
                              "os.system, raw pickle protocol 4": (os.system, 4)}.items():
        marker = folder / f"marker-{len(files)}"
        payload = _Payload(call, (f"touch {marker}",) if call is os.system else (str(marker), "w"))
        path = folder / f"evil-{len(files)}.pt"
        weights = {"state_dict": {"visual.proj": torch.zeros(2)}, "extra": payload}
        if fmt == "zip":
            torch.save(weights, path)
        else:
            with open(path, "wb") as f:
                pickle.dump(weights, f, protocol=fmt)
        files[name] = (path, marker)
    return files


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    files = _evil_files(tmp_path)
    for name, (path, marker) in files.items():
        with pytest.raises(ConfigError) as e:
            create_model("tiny-rn", weights=path)
        msg = str(e.value)
        assert "refused" in msg and "nothing in it was run" in msg and "weights_only" in msg, (name, msg)
        assert "\n" not in msg and "weights_only=False" not in msg, (name, msg)  # one line, no unsafe advice
        assert not marker.exists(), name
    # the control: an unrestricted load of the same files does run the payloads
    for name, (path, marker) in files.items():
        try:
            torch.load(path, weights_only=False)
        except Exception:  # noqa: BLE001 - the payload ran while unpickling; what it returned does not matter
            pass
        assert marker.exists(), name


@pytest.fixture(scope="module")
def evil_setup(tmp_path_factory):
    """A labelled 4-pair manifest, classes.json, a pickle whose payload creates a marker, a model folder whose
    model.safetensors is that pickle, one that holds only pytorch_model.bin, and a training run whose
    checkpoint is that pickle."""
    root = tmp_path_factory.mktemp("untrusted")
    (path, marker), = [v for k, v in _evil_files(root / "evil").items() if k.startswith("os.system, torch")]
    manifest = make_bad_manifest(root, n_good=4)
    df = pd.read_csv(manifest).iloc[:4].assign(label=[0, 1, 0, 1])
    labelled = write_manifest(df, root / "labelled.csv")
    (root / "classes.json").write_text(json.dumps({"classes": ["circle", "square"], "templates": ["a {}."]}))
    disguised = save_model(create_model("tiny-rn"), root / "disguised")
    shutil.copy(path, disguised / "model.safetensors")
    only_bin = root / "only_bin"
    only_bin.mkdir()
    shutil.copy(disguised / "model.json", only_bin / "model.json")
    shutil.copy(path, only_bin / "pytorch_model.bin")
    run = root / "resume"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(path, run / "checkpoints" / "state.pt")
    return dict(root=root, evil=path, marker=marker, labelled=labelled, classes=root / "classes.json",
                disguised=disguised, only_bin=only_bin, resume=run)


def test_untrusted_weights_through_every_command_that_loads_them(evil_setup):
    """train --weights, a planted training checkpoint (resume), and a model folder (eval, embed, scan --model,
    defend): one line each, and the payload never runs."""
    s = evil_setup
    root, lab, marker = s["root"], s["labelled"], s["marker"]
    cases = [
        (["train", lab, "--out", root / "t", "--model", "tiny-rn", "--epochs", "1", "--weights", s["evil"]],
         ("evil-0.pt: refused", "convert it to .safetensors")),
        (["train", lab, "--out", s["resume"], "--model", "tiny-rn", "--epochs", "1"],
         ("state.pt: refused: this training checkpoint", "--no-resume")),
    ]
    model, text = s["disguised"], ("model.safetensors: not a readable .safetensors file",)
    cases += [
        (["eval", model, lab, "--classes", s["classes"], "--device", "cpu"], text),
        (["embed", model, lab, "--out", root / "e", "--device", "cpu"], text),
        (["scan", "--model", model, "--data", lab, "--out", root / "s", "--device", "cpu", "--no-report"], text),
        (["defend", "cleanclip", model, "--data", lab, "--out", root / "d", "--device", "cpu"], text),
        # a folder with only a torch pickle: never looked at (model folders are read from safetensors only)
        (["embed", s["only_bin"], lab, "--out", root / "e2", "--device", "cpu"], ("no model.safetensors beside",)),
    ]
    for args, texts in cases:
        assert_one_line_error(run_cli(*args), *texts)
        assert not marker.exists(), args


@pytest.fixture(scope="module")
def tiny_rn(tmp_path_factory):
    """``(bundle, its state dict, a saved folder)`` of tiny-rn, built once."""
    model = create_model("tiny-rn", seed=0)
    return model, {k: v.contiguous() for k, v in model.model.state_dict().items()}, \
        save_model(model, tmp_path_factory.mktemp("tiny") / "m")


def _mismatched(state, kind):
    """``state`` with one tensor of the wrong shape, missing, or extra (returns it and the name changed)."""
    state = dict(state)
    name = list(state)[5]
    if kind == "wrong shape":
        state[name] = torch.zeros(*state[name].shape[:-1], state[name].shape[-1] + 1)
    elif kind == "missing":
        del state[name]
    else:
        name = "visual.extra_head.weight"
        state[name] = torch.zeros(3, 4)
    return state, name


@pytest.mark.parametrize("kind,text", [
    ("wrong shape", "tensor {name!r} has shape {found}, expected {expected}"),
    ("missing", "tensor {name!r} (expected shape {expected}) is missing"),
    ("extra", "tensor {name!r} (shape (3, 4)) is not part of the architecture"),
], ids=["wrong-shape", "missing", "extra"])
def test_safetensors_that_do_not_match_name_the_first_mismatch(tmp_path, tiny_rn, kind, text):
    from safetensors.torch import save_file

    _, good, folder = tiny_rn
    state, name = _mismatched(good, kind)
    expected = tuple(good[name].shape) if name in good else None
    want = text.format(name=name, found=tuple(state[name].shape) if name in state else None, expected=expected)
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(ConfigError) as e:
        create_model("tiny-rn", weights=tmp_path / "w.safetensors")
    assert f"weights do not match architecture 'tiny-rn': {want}" in str(e.value) and "more" not in str(e.value)
    shutil.copytree(folder, tmp_path / "m")
    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(ConfigError, match="cannot be loaded into architecture 'tiny-rn'") as e:
        load_model(tmp_path / "m")
    assert want in str(e.value) and "\n" not in str(e.value)


def test_the_first_of_several_mismatches_is_named_in_architecture_order(tmp_path, tiny_rn):
    from safetensors.torch import save_file

    good = tiny_rn[1]
    names = list(good)
    state = {k: v for k, v in good.items() if k != names[9]}  # missing: the 10th tensor
    state[names[3]] = torch.zeros(7)  # wrong shape: the 4th, named first
    state["zzz.extra"] = torch.zeros(1)
    save_file(state, str(tmp_path / "w.safetensors"))
    first = f"tensor {names[3]!r} has shape (7,), expected {tuple(good[names[3]].shape)} (and 2 more mismatched"
    with pytest.raises(ConfigError) as e:
        create_model("tiny-rn", weights=tmp_path / "w.safetensors")
    assert first in str(e.value)
    manifest = make_bad_manifest(tmp_path, n_good=2)
    assert_one_line_error(run_cli("train", manifest, "--out", tmp_path / "t", "--model", "tiny-rn", "--epochs", "1",
                                  "--weights", tmp_path / "w.safetensors"),
                          "w.safetensors: weights do not match architecture 'tiny-rn'", first)


def test_unknown_model():
    with pytest.raises(ConfigError, match="unknown model 'ViT-Z'"):
        create_model("ViT-Z")


def test_seeded_init_leaves_the_global_generator_alone():
    """create_model draws its weights in a forked generator: the caller's global state is untouched."""
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    create_model("tiny-rn", seed=7)
    assert torch.equal(torch.rand(3), expected)
    # and the weights are those of the global generator seeded with the same seed (unchanged behaviour)
    a = create_model("tiny-rn", seed=7)
    torch.manual_seed(7)
    b = create_model("tiny-rn", seed=None)
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))


def test_broken_model_folders_are_one_line_errors(tmp_path):
    save_model(create_model("tiny-rn", seed=0), tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="no model.safetensors beside model.json"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "model.json").write_text("{not json")
    with pytest.raises(ConfigError, match="model.json: not valid JSON"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "model.json").write_text('{"model_name": "tiny-rn"}')
    with pytest.raises(ConfigError, match="needs 'model_name' and 'config'"):
        load_model(tmp_path / "m")
    save_model(create_model("tiny-vit", seed=0), tmp_path / "v")
    save_model(create_model("tiny-rn", seed=0), tmp_path / "r")
    (tmp_path / "v" / "model.safetensors").replace(tmp_path / "r" / "model.safetensors")
    with pytest.raises(ConfigError, match="cannot be loaded into architecture 'tiny-rn'") as e:
        load_model(tmp_path / "r")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="no model.json"):
        load_model(tmp_path / "nothing")
