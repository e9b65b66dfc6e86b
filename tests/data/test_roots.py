"""Dataset roots: images outside a manifest's roots are refused; users and derived manifests widen them."""
from __future__ import annotations

import json
import logging
import os

import pandas as pd
import pytest
from PIL import Image

from clipguard.data.manifest import read_manifest, write_manifest
from clipguard.data.roots import OutsideRootError, confine, dataset_roots, sources_sidecar
from clipguard.errors import ManifestError
from clipguard.utils.roots import ENV_VAR, allow_roots, user_roots


@pytest.fixture
def tree(tmp_path):
    """``data/`` (a manifest's folder with ``in.png``) and ``outside/secret.png`` beside it."""
    (tmp_path / "data").mkdir()
    (tmp_path / "outside").mkdir()
    for p in (tmp_path / "data" / "in.png", tmp_path / "outside" / "secret.png"):
        Image.new("RGB", (4, 4)).save(p)
    return tmp_path


def test_confine_follows_dotdot_symlinks_and_file_urls(tree):
    roots = (tree.joinpath("data").resolve(),)
    data, secret = tree / "data", tree / "outside" / "secret.png"
    assert confine(data / "in.png", roots) == data / "in.png"
    assert confine(data / "sub" / ".." / "in.png", roots) == data / "sub" / ".." / "in.png"
    os.symlink(secret, data / "link.png")
    for bad in (data / ".." / "outside" / "secret.png", secret, data / "link.png", secret.resolve().as_uri()):
        with pytest.raises(OutsideRootError, match=r"^outside the dataset root: .*--allow-root DIR"):
            confine(bad, roots)
    with pytest.raises(OSError):  # readers that skip unreadable files skip these too
        confine(secret, roots)
    assert issubclass(OutsideRootError, ManifestError)
    for url in ("s3://bucket/x.png", "memory://m/x.png", f"tar://a.png::{secret}"):  # their own rules
        assert confine(url, roots) == url
    assert confine(secret.resolve().as_uri(), (tree.joinpath("outside").resolve(),)) == secret.resolve().as_uri()


def test_user_roots_from_the_context_and_the_environment(tree, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert user_roots() == ()
    with allow_roots([tree / "outside"]):
        assert user_roots() == (tree.joinpath("outside").resolve(),)
    assert user_roots() == ()
    monkeypatch.setenv(ENV_VAR, os.pathsep.join([str(tree / "outside"), "", str(tree)]))
    assert user_roots() == (tree.joinpath("outside").resolve(), tree.resolve())


def test_a_manifest_admits_its_folder_and_the_allowed_roots(tree, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    secret = tree / "outside" / "secret.png"
    path = write_manifest(pd.DataFrame({"id": ["a", "b"], "image": ["in.png", str(secret)], "caption": ["x", "y"]}),
                          tree / "data" / "m.csv")
    m = read_manifest(path)
    assert m.image_path(0) == tree / "data" / "in.png"
    with pytest.raises(OutsideRootError):
        m.image_path(1)
    assert read_manifest(path, allow_roots=[tree / "outside"]).image_path(1) == secret
    with allow_roots([tree / "outside"]):
        inside = read_manifest(path)
    assert inside.image_path(1) == secret  # the roots are the manifest's, fixed when it was read
    monkeypatch.setenv(ENV_VAR, str(tree / "outside"))
    assert read_manifest(path).image_path(1) == secret


def test_a_derived_manifest_admits_its_source_while_the_source_is_unchanged(tree, caplog, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    src = write_manifest(pd.DataFrame({"id": ["a"], "image": ["in.png"], "caption": ["x"]}), tree / "data" / "m.csv")
    (tree / "derived").mkdir()
    derived = write_manifest(pd.DataFrame({"id": ["a"], "image": ["../data/in.png"], "caption": ["x"]}),
                             tree / "derived" / "m.parquet", sources=[src])
    side = json.loads(sources_sidecar(derived).read_text())
    assert side["sources"][0]["manifest"] == os.path.join("..", "data", "m.csv")
    assert read_manifest(derived).image_path(0) == tree / "derived" / ".." / "data" / "in.png"
    again = write_manifest(pd.DataFrame({"id": ["b"], "image": ["../derived2/z.png"], "caption": ["y"]}),
                           tree / "derived" / "other.csv", sources=[derived])  # a chain: derived's roots too
    assert tree.joinpath("data").resolve() in read_manifest(again).roots
    src.write_text(src.read_text() + "b,in.png,edited since\n")
    with caplog.at_level(logging.WARNING, logger="clipguard"):
        m = read_manifest(derived)
    assert any("missing or changed since" in r.getMessage() for r in caplog.records)
    with pytest.raises(OutsideRootError):
        m.image_path(0)
    inside = write_manifest(pd.DataFrame({"id": ["a"], "image": ["x.png"], "caption": ["x"]}),
                            tree / "derived" / "m.parquet", sources=[src])
    assert not sources_sidecar(inside).exists()  # rows inside its folder: no sources, a stale sidecar removed


def test_a_forged_sidecar_gives_no_root(tree, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    path = write_manifest(pd.DataFrame({"id": ["a"], "image": ["../outside/secret.png"], "caption": ["x"]}),
                          tree / "data" / "m.csv")
    forged = {"sources": [{"manifest": "../outside/secret.png", "sha256": "0" * 64}]}
    sources_sidecar(path).write_text(json.dumps(forged))
    assert dataset_roots(tree / "data", path) == (tree.joinpath("data").resolve(),)
    sources_sidecar(path).write_text("not json")
    assert dataset_roots(tree / "data", path) == (tree.joinpath("data").resolve(),)
