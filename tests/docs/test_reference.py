"""The documentation stays true: the reference pages of docs/reference/ are those that
``docs/gen_reference.py`` generates from the registries today, every registered name has a page
that the index links, and the ```python blocks of docs/api.md run, in order, in one namespace, in
an empty folder (then the Python examples of the reference pages run in that folder).

When a test fails because a page is stale: run ``python docs/gen_reference.py`` and commit the pages.
"""
from __future__ import annotations

import importlib.util
import inspect
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clipguard.attacks import ATTACKS, get_trigger
from clipguard.defend import DEFENCES, make_defence
from clipguard.detect.detectors import DETECTORS, make_detector
from clipguard.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
API = DOCS / "api.md"
_BLOCK = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.M | re.S)


def _load_generator():
    """docs/gen_reference.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module       # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


def code_blocks(text: str, language: str = "python") -> list[str]:
    """The fenced blocks of ``language`` in ``text``, in document order."""
    return [m.group(2) for m in _BLOCK.finditer(text) if m.group(1).lower() == language]


@pytest.fixture(scope="module")
def pages():
    return gen.build_pages()


# -- (a) the committed pages are current -------------------------------------------------------------------
def test_the_committed_reference_pages_are_current(pages):
    stale = gen.check_pages(pages)
    assert not stale, ("stale reference pages (run `python docs/gen_reference.py` and commit them):\n  "
                       + "\n  ".join(stale))


def test_check_reports_out_of_date_missing_and_orphaned_pages(pages, tmp_path):
    assert gen.write_pages(pages, root=tmp_path)                  # a fresh tree: every page written
    assert gen.check_pages(pages, root=tmp_path) == []
    first = sorted(p for p in pages if p.parent.name == "detectors")[0]
    (tmp_path / first).write_text("edited by hand\n")
    (tmp_path / sorted(pages)[0]).unlink()
    (tmp_path / gen.REFERENCE / "attacks" / "retired.md").write_text("an attack that was removed\n")
    stale = gen.check_pages(pages, root=tmp_path)
    assert f"{first.as_posix()} (out of date)" in stale
    assert f"{sorted(pages)[0].as_posix()} (missing)" in stale
    assert "docs/reference/attacks/retired.md (no registered name: remove it)" in stale
    assert len(stale) == 3
    gen.write_pages(pages, root=tmp_path)                         # rewrites the two, deletes the orphan
    assert gen.check_pages(pages, root=tmp_path) == []
    assert not (tmp_path / gen.REFERENCE / "attacks" / "retired.md").exists()


def test_main_check_lists_a_stale_page_and_exits_1(monkeypatch, capsys, tmp_path, pages):
    gen.write_pages(pages, root=tmp_path)
    (tmp_path / gen.REFERENCE / "defences" / "par.md").write_text("old\n")
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    assert gen.main(["--check"]) == 1
    assert capsys.readouterr().out == "stale: docs/reference/defences/par.md (out of date)\n"
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0


# -- (b) every registered name has a page, linked from the index --------------------------------------------
@pytest.mark.parametrize("kind", ["attacks", "detectors", "defences"])
def test_every_registered_name_has_a_page_that_the_index_links(kind, pages):
    registry = {"attacks": ATTACKS, "detectors": DETECTORS, "defences": DEFENCES}[kind]
    index = pages[gen.REFERENCE / "index.md"]
    assert len(registry) > 0
    for name in registry.names():
        page = pages.get(gen.REFERENCE / kind / f"{name}.md")
        assert page is not None, f"{kind[:-1]} {name!r} has no page"
        assert (ROOT / gen.REFERENCE / kind / f"{name}.md").is_file()
        assert f"]({kind}/{name}.md)" in index, f"the index does not link {kind}/{name}.md"
        assert page.splitlines()[2] == f"# `{name}` ({kind[:-1]})"
        for section in ("## Parameters", "## Source", "## Usage", "```bash", "```python"):
            assert section in page, f"{kind}/{name}.md has no {section!r}"
        src = gen.SOURCES[kind][name]
        for paper, _ in src.papers:
            assert paper.cite() in page
        for param in list(inspect.signature(registry.get(name).__init__).parameters)[1:]:
            assert f"| `{param}` |" in page, f"{kind}/{name}.md: parameter {param!r} not in its table"
    links = re.findall(rf"\]\({kind}/([\w-]+)\.md\)", index)
    assert links == registry.names()          # nothing more, in registration order


def test_detector_pages_state_the_score_direction(pages):
    for name in DETECTORS.names():
        page = pages[gen.REFERENCE / "detectors" / f"{name}.md"]
        assert "## Score" in page and "Higher = more suspicious" in page


def test_a_name_without_a_source_paper_or_a_documented_parameter_fails_loudly(monkeypatch):
    probe = Registry("detector")
    probe.register("kdist")(DETECTORS.get("kdist"))

    class Undocumented(DETECTORS.get("kdist")):
        """A detector whose constructor has a parameter no docstring explains."""

        def __init__(self, *, k: int = 16, mystery: float = 1.0) -> None:
            super().__init__(k=k)
            self.mystery = mystery

    probe.register("undocumented")(Undocumented)
    monkeypatch.setattr(gen, "KINDS", {"detectors": gen.Kind(probe, "detector", gen.render_detector)})
    with pytest.raises(gen.GenerationError, match=r"detector 'undocumented' has no source paper: add "
                                                  r"SOURCES\['detectors'\]\['undocumented'\]"):
        gen.build_pages()
    monkeypatch.setitem(gen.SOURCES["detectors"], "undocumented", gen.Source(own="a test detector"))
    with pytest.raises(gen.GenerationError, match="no meaning for parameter\\(s\\) mystery"):
        gen.build_pages()
    monkeypatch.setitem(gen.PARAM_NOTES["detectors"], "undocumented", {"mystery": "a documented mystery"})
    page = gen.build_pages()[gen.REFERENCE / "detectors" / "undocumented.md"]
    assert "| `mystery` | `1.0` | a documented mystery |" in page


def test_the_example_parameters_of_every_page_are_accepted():
    for name in ATTACKS.names():
        params = gen.EXAMPLE_PARAMS["attacks"].get(name, {})
        if name != "badclip":                 # its patch file is written by the optimisation first
            assert get_trigger(name, **params).params().items() >= params.items()
    for name in DETECTORS.names():
        params = gen.EXAMPLE_PARAMS["detectors"].get(name, {})
        assert make_detector(name, params=params).get_params().items() >= params.items()
        if DETECTORS.get(name).uses_neighbours:
            assert "k" not in params, f"{name}: in a scan k is the scan option (the examples set -k 8)"
    for name in DEFENCES.names():
        params = gen.EXAMPLE_PARAMS["defences"].get(name, {})
        assert make_defence(name, params).params().items() >= params.items()
    unknown = {k: set(v) - set(gen.KINDS[k].registry.names()) for k, v in gen.EXAMPLE_PARAMS.items()}
    assert unknown == {"attacks": set(), "detectors": set(), "defences": set()}


def test_docstring_markup_becomes_markdown():
    assert gen.inline("see :func:`~clipguard.train.learning_speed` and ``a**b``") == \
        "see `learning_speed` and `a**b`"
    assert gen.inline(":meth:`Scan.load <clipguard.detect.facade.Scan.load>` x**2 <det>") == \
        r"`Scan.load` x\*\*2 &lt;det>"
    assert gen.inline("* a bullet with a*b") == r"* a bullet with a\*b"
    text, sections = gen.split_docstring('''Summary line.

        More text::

            code line

        Args:
            k, backend: shared text
                continued.
            seed: the seed.

        Example:
            >>> 1 + 1
            2
        ''')
    assert gen.parse_items(sections["Args"]) == {"k": "shared text continued.", "backend": "shared text continued.",
                                                 "seed": "the seed."}
    assert "- `k`, `backend`: shared text continued." in gen.section_markdown(sections, skip=())
    md = gen.to_markdown(text)
    assert "```text\ncode line\n```" in md and "More text:" in md
    assert "```pycon\n>>> 1 + 1\n2\n```" in gen.section_markdown(sections)


# -- (c) the examples of docs/api.md run ------------------------------------------------------------------
@pytest.mark.slow
def test_the_python_examples_of_the_api_guide_run(tmp_path, monkeypatch, pages):
    """The blocks of docs/api.md in order in one namespace, then the reference pages' Python examples
    in the folders the guide made (the detectors' on small random arrays too). The guide registers a
    detector: the registry is restored afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(DETECTORS, "_items", dict(DETECTORS._items))
    blocks = code_blocks(API.read_text())
    assert len(blocks) >= 10, "the API guide lost its examples"
    namespace: dict = {"__name__": "__api_guide__"}
    t0 = time.perf_counter()
    for i, code in enumerate(blocks, 1):
        try:
            exec(compile(code, f"{API}, python block {i}", "exec"), namespace)
        except Exception as exc:  # noqa: BLE001 - say which block failed
            raise AssertionError(f"docs/api.md python block {i} failed: {exc!r}\n{code}") from exc
    guide_s = time.perf_counter() - t0
    assert "mean_knn" in DETECTORS and namespace["custom"].detectors == ["mean_knn", "kdist"]
    assert namespace["poisoned"].n_poisoned == 15 and namespace["kept"].n_removed == 15
    assert namespace["in_memory"].metrics["dao"]["auroc"] == 1.0      # what the guide says it prints
    assert set(namespace["record"]) >= {"before", "after"}
    for folder in ("world", "poisoned", "model", "emb", "probe", "scan", "filtered", "defended", "clean"):
        assert Path(folder).is_dir(), f"the guide did not make {folder}/"
    assert Path("scan/report.html").is_file()

    rng = np.random.default_rng(0)
    arrays = {"image_emb": rng.normal(size=(120, 8)), "text_emb": rng.normal(size=(120, 8)),
              "captions": [f"a photo of a {c}." for c in rng.choice(["star", "ring", "cross"], 120)],
              "speeds": rng.uniform(0.01, 1.0, 120), "noise": rng.uniform(0.5, 1.0, 120)}
    for name in DETECTORS.names():
        if name == "mean_knn":
            continue
        (code,) = code_blocks(pages[gen.REFERENCE / "detectors" / f"{name}.md"])
        ns = dict(arrays)
        exec(compile(code, f"docs/reference/detectors/{name}.md", "exec"), ns)
        scores = np.asarray(ns["scores"])
        assert scores.shape == (120,) and scores.dtype == np.float64, name
    _run_attack_and_defence_examples(pages, monkeypatch)
    print(f"\napi guide: {len(blocks)} blocks in {guide_s:.1f} s; the pages' examples in "
          f"{time.perf_counter() - t0 - guide_s:.1f} s")


def _run_attack_and_defence_examples(pages, monkeypatch):
    """The attack pages' Python examples for real, then the defence pages' with ``defend_model`` (a
    training run each) replaced by a stand-in that builds the defence and checks that its paths exist."""
    import clipguard.pipeline

    from clipguard.data import read_manifest

    for name in ATTACKS.names():
        (code,) = code_blocks(pages[gen.REFERENCE / "attacks" / f"{name}.md"])
        ns: dict = {}
        exec(compile(code, f"docs/reference/attacks/{name}.md", "exec"), ns)
        assert ns["res"].n_poisoned > 0 and Path(f"poisoned-{name}/attack.json").is_file(), name
        assert ns["triggered"].shape == (32, 32, 3), name
    calls = []

    def defend_model(method, model_dir, data, out_dir, *, params=None, test=None, classes=None,
                     attack_spec=None, train=None, progress=True, **kw):
        make_defence(method, params)                       # the method and its parameters are valid
        for path in (model_dir, data, test, classes, attack_spec):
            assert Path(path).exists(), f"defence {method}: {path} does not exist"
        if method == "supervised":
            assert "label" in read_manifest(data).df.columns
        calls.append(method)
        return {"before": {"attack_success_rate": 1.0}, "after": {"attack_success_rate": 0.0}}

    monkeypatch.setattr(clipguard.pipeline, "defend_model", defend_model)
    for name in DEFENCES.names():
        (code,) = code_blocks(pages[gen.REFERENCE / "defences" / f"{name}.md"])
        exec(compile(code, f"docs/reference/defences/{name}.md", "exec"), {})
    assert calls == DEFENCES.names()
