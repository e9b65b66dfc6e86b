"""Every case of the bad-input corpus (tests/corpus/make_corpus.py) through every command that reads it.

Each (case, command) ends one of two ways, never in a traceback and never in a silent drop:

* exit code 0, the row counted as skipped under its reason (``skipped.csv`` / ``run.json``), or read
  (decoded with replacement, converted to RGB, carried into the command's output), the good rows present;
  a line the manifest reader leaves out (more fields than the header, not JSON, a key named twice) is
  counted under its reason by every command (``read_skip_counts``; with the skips of those that list them);
* exit code 2 and exactly one line naming the file (and the row) and the fix.

The row-level cases share one manifest per format (CSV, JSON lines, Parquet), so each command runs once
per format over all of them; a manifest that must be refused runs once per command. The commands that need a
ViT with both towers (defend, heads analyze | repair | filter, reverse, audit: tests/corpus/model_commands.py)
read the CSV manifest (the image corpus), and heads filter also meets damaged head profiles. The outcome table (case x command) is printed (``pytest -s``)
and written to ``test-artifacts/bad_inputs.md``.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clipguard.attacks.poisoner import names_target
from clipguard.data.manifest import read_manifest
from clipguard.data.roots import OutsideRootError
from clipguard.models import create_model, save_model
from clipguard.utils.seeding import rng
from corpus.make_corpus import GOOD_ROWS, make_corpus
from corpus.model_commands import (MODEL_COMMANDS, damaged_profiles, model_error_runs, model_row_runs,
                                   observed_model, EXPECTED_AS)
from tests_helpers import LogRecords, assert_one_line_error, run_cli

COMMANDS = ("poison", "plant", "train", "embed", "scan", "filter", "eval", "report", *MODEL_COMMANDS)
ARTIFACT = Path(__file__).resolve().parents[2] / "test-artifacts" / "bad_inputs.md"


# -- the runs (once per module) ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "m"
    save_model(create_model("tiny-rn", seed=0), out)
    return out


def _poison_seed(manifest: Path, expect_ok: set[str]) -> tuple[int, int]:
    """``(seed, count)`` such that poisoning ``count`` rows (every readable candidate) reads every candidate:
    the poisoner tries candidates in a seeded order and stops at ``count``, so the last one must be readable."""
    df = read_manifest(manifest).df
    candidates = np.flatnonzero(~names_target(df["caption"].tolist(), "star"))
    ok = {int(i) for i in candidates if df["id"].iat[i] in expect_ok}
    for seed in range(100):
        if int(rng(seed, "poison-rows").permutation(candidates)[-1]) in ok:
            return seed, len(ok)
    raise AssertionError("no seed puts a readable candidate last")


FORMATS = ("csv", "jsonl", "parquet")


def _manifest_of(corpus: dict, fmt: str) -> Path:
    return corpus["manifest" if fmt == "csv" else fmt]


def _expect(case: dict, command: str) -> tuple[str, str | None]:
    """``("skip", reason)`` or ``("ok", None)``: what ``command`` must do with a row-level case."""
    if case["kind"] == "line":  # left out by the manifest reader: every command counts it
        return "skip", case["reason"]
    if command == "eval" and case["kind"] == "caption":  # eval reads images and labels, not captions
        return "ok", None
    if command == "poison" and case["kind"] == "caption":  # the poisoner writes its own caption
        return "ok", None
    if command == "poison" and case["id"] == "case_one_pixel":  # a 3 px patch does not fit a 1x1 image
        return "skip", "image too small for the trigger"
    return case["expect"], case.get("reason")


def _run_all(m: Path, rows: dict, classes: Path, model_dir: Path, out: Path) -> dict:
    """Each command once over the manifest ``m`` (good rows + the row-level cases ``rows``), outputs in ``out``."""
    ok_for_poison = {k["id"] for k in rows.values() if _expect(k, "poison")[0] == "ok"}
    seed, count = _poison_seed(m, ok_for_poison)
    runs = {
        "poison": run_cli("poison", m, "--out", out / "poison", "--target", "star", "--count", count, "--seed", seed),
        "plant": run_cli("plant", m, "--out", out / "plant"),
        "train": run_cli("train", m, "--out", out / "train", "--model", "tiny-rn", "--epochs", 1, "--batch-size", 8),
        "embed": run_cli("embed", model_dir, m, "--out", out / "embed", "--device", "cpu"),
        "scan": run_cli("scan", "--model", model_dir, "--data", m, "--out", out / "scan", "--device", "cpu",
                        "--detector", "kdist", "--no-report"),
        "eval": run_cli("eval", model_dir, m, "--classes", classes, "--device", "cpu", "--out", out / "eval.json"),
    }
    runs["filter"] = run_cli("filter", m, out / "scan", "--out", out / "filter", "--detector", "kdist", "--top", 0)
    return runs


@pytest.fixture(scope="module")
def row_runs(corpus, model_dir, tmp_path_factory):
    """Each command once over each manifest (CSV, JSON lines, Parquet); then the report of an embedding made
    with the outside folder allowed, written without it."""
    out = tmp_path_factory.mktemp("runs")
    results = {}
    for fmt in FORMATS:
        rows = corpus["rows" if fmt == "csv" else f"{fmt}_rows"]
        for command, r in _run_all(_manifest_of(corpus, fmt), rows, corpus["classes"], model_dir, out / fmt).items():
            results[fmt, command] = r
    results["csv", "embed --allow-root"] = run_cli("--allow-root", corpus["outside"], "embed", model_dir,
                                                    corpus["manifest"], "--out", out / "allowed", "--device", "cpu")
    results["csv", "scan (allowed)"] = run_cli("scan", out / "allowed", "--out", out / "scan_allowed", "--detector",
                                               "kdist", "--no-report")
    logged = LogRecords()
    logging.getLogger("clipguard").addHandler(logged)
    try:
        results["csv", "report"] = run_cli("report", out / "scan_allowed", "--out", out / "report.html")
    finally:
        logging.getLogger("clipguard").removeHandler(logged)
    return {"out": out, "results": results, "report_log": logged.messages}



ERROR_COMMANDS = ("poison", "plant", "train", "embed", "scan", "filter", "eval")


@pytest.fixture(scope="module")
def error_runs(corpus, model_dir, row_runs, tmp_path_factory):
    """Each manifest that must be refused through each command that reads manifests (labels: eval only)."""
    out = tmp_path_factory.mktemp("errors")
    scan = row_runs["out"] / "csv" / "scan"

    def args(command: str, m: str, o: Path) -> list:
        return {"poison": ["poison", m, "--out", o, "--target", "star", "--count", 1],
                "plant": ["plant", m, "--out", o],
                "train": ["train", m, "--out", o, "--model", "tiny-rn", "--epochs", 1],
                "embed": ["embed", model_dir, m, "--out", o, "--device", "cpu"],
                "scan": ["scan", "--model", model_dir, "--data", m, "--out", o, "--device", "cpu", "--no-report"],
                "filter": ["filter", m, scan, "--out", o, "--detector", "kdist"],
                "eval": ["eval", model_dir, m, "--classes", corpus["classes"], "--device", "cpu"]}[command]

    runs = {}
    for case, spec in corpus["errors"].items():
        for command in ERROR_COMMANDS if spec["kind"] == "manifest" else ("eval",):
            runs[case, command] = run_cli(*args(command, spec["manifest"], out / f"{case}-{command}"))
    return runs


@pytest.fixture(scope="module")
def model_runs(corpus, tmp_path_factory):
    """defend, heads, reverse and audit over manifest.csv with a tiny ViT; then over each manifest that must be
    refused, and heads filter over each damaged profile."""
    root = tmp_path_factory.mktemp("model_runs")
    save_model(create_model("tiny-vit-p8", seed=0), root / "vit")
    rows = model_row_runs(corpus, root / "vit", root / "rows")
    profiles = damaged_profiles(root / "rows" / "heads analyze", root / "profiles")
    errors = model_error_runs(corpus, root / "vit", root / "rows" / "heads analyze", profiles, root / "errors")
    return {"out": root / "rows", "rows": rows, "errors": errors, "profiles": profiles}


# -- what each command did with each row ------------------------------------------------------------------
def _skipped(path_or_glob: Path) -> dict[str, str]:
    """``{id: reason key}`` of skipped.csv file(s)."""
    files = sorted(path_or_glob.parent.glob(path_or_glob.name))
    if not files:
        return {}
    df = pd.concat([pd.read_csv(f, dtype={"id": str}) for f in files])
    return {r.id: str(r.reason).split(":")[0] for r in df.itertuples()}


def _observed(command: str, out: Path, ids: list[str]) -> dict[str, tuple[str, str | None]]:
    """``{id: ("skip", reason) | ("ok", None)}`` as ``command``'s outputs tell (eval: see _eval_counts).

    plant and filter carry rows or remove them; a row absent from their output is ``("skip", reason)`` when
    their ``skipped.csv`` lists it (a line the reader left out) and their record counts a line skipped under
    that reason, else ``("dropped", None)``."""
    if command == "poison":
        skips = _skipped(out / "poison" / "skipped.csv")
        done = set(json.loads((out / "poison" / "attack.json").read_text())["poisoned_ids"])
        return {i: ("skip", skips[i]) if i in skips else ("ok", None) if i in done else ("not read", None)
                for i in ids}
    if command in ("plant", "filter"):
        kept = set(read_manifest(out / command).df["id"])
        removed = (set(pd.read_csv(out / "filter" / "removed.csv", dtype={"id": str})["id"]) if command == "filter"
                   else set())
        record = json.loads((out / command / ("plant.json" if command == "plant" else "run.json")).read_text())
        counted, skips = record["read_skip_counts"], _skipped(out / command / "skipped.csv")
        return {i: ("carried", None) if i in kept else ("removed", None) if i in removed
                else ("skip", skips[i]) if counted.get(skips.get(i), 0) else ("dropped", None)
                for i in ids}
    folder = {"train": out / "train", "embed": out / "embed" / "skipped",
              "scan": out / "scan" / "embeddings" / "skipped"}
    skips = _skipped(folder[command] / ("skipped.csv" if command == "train" else "skipped_*.csv"))
    if command == "train":
        return {i: ("skip", skips[i]) if i in skips else ("ok", None) for i in ids}
    meta_dir = (out / "embed" if command == "embed" else out / "scan" / "embeddings") / "metadata"
    embedded = set(pd.concat([pd.read_parquet(f) for f in meta_dir.glob("*.parquet")])["id"])
    return {i: ("skip", skips[i]) if i in skips else ("ok", None) if i in embedded else ("dropped", None) for i in ids}


def _row(m, ident: str) -> int:
    return int((m.df["id"] == ident).to_numpy().nonzero()[0][0])


def _report_tiles(html: str) -> dict[str, bool]:
    """``{id: has a thumbnail}`` of the suspect grid of a scan report."""
    tiles = {}
    for tile in html.split('<div class="tile')[1:]:
        ident = tile.split("<div>id ", 1)[1].split("</div>", 1)[0]
        tiles[ident] = tile.lstrip().split(">", 1)[1].lstrip().startswith("<img src=\"data:image/png;base64,")
    return tiles


def _all_rows(corpus) -> dict[str, dict]:
    """Every row-level case (the three manifests), with the folder name of its manifest's runs under ``fmt``."""
    return {k: {**v, "fmt": fmt} for fmt in FORMATS for k, v in corpus["rows" if fmt == "csv" else f"{fmt}_rows"].items()}


@pytest.fixture(scope="module")
def table(corpus, row_runs, error_runs, model_runs):
    """``{case: {command: outcome}}`` for every case and command (also written to test-artifacts/)."""
    rows = _all_rows(corpus)
    out = row_runs["out"]
    cells: dict[str, dict[str, str]] = {case: {} for case in [*rows, *corpus["errors"], *model_runs["profiles"]]}
    for fmt in FORMATS:
        mine = {case: spec for case, spec in rows.items() if spec["fmt"] == fmt}
        for command in ("poison", "plant", "train", "embed", "scan", "filter"):
            seen = _observed(command, out / fmt, [spec["id"] for spec in mine.values()])
            for case, spec in mine.items():
                kind, reason = seen[spec["id"]]
                cells[case][command] = f"{kind}: {reason}" if reason else kind
    for case, spec in rows.items():  # eval counts skips by reason only: each cell is its case's expectation,
        kind, reason = _expect(spec, "eval")  # checked against the counts in test_row_cases_...
        cells[case]["eval"] = f"{kind}: {reason}" if reason else kind
    tiles = _report_tiles((out / "report.html").read_text())
    for case, spec in rows.items():
        has = tiles.get(spec["id"])
        cells[case]["report"] = ("n/a (csv report only)" if spec["fmt"] != "csv" else "n/a (not embedded)"
                                 if has is None else "ok (thumbnail)" if has else "refused (not inlined)")
        if spec["kind"] == "line" and spec["fmt"] == "csv":  # not in the scan: counted by the embedding
            cells[case]["report"] = "n/a (left out when read)"
    _model_cells(cells, rows, model_runs["out"])
    for (case, command), r in [*error_runs.items(), *model_runs["errors"].items()]:
        cells[case][command] = "error (one line)" if r.returncode == 2 else f"exit {r.returncode}"
    for case in [*corpus["errors"], *model_runs["profiles"]]:
        for command in COMMANDS:
            cells[case].setdefault(command, "n/a")
    kinds = {**{case: f"{spec['kind']} ({spec['fmt']})" for case, spec in rows.items()},
             **{case: "manifest/label" for case in corpus["errors"]},
             **{case: "head profile" for case in model_runs["profiles"]}}
    _write_table(cells, kinds)
    return cells


def _model_cells(cells: dict[str, dict[str, str]], rows: dict, out: Path) -> None:
    """The cells of the model commands: what their outputs tell per row (skipped.csv, scores), or for heads
    analyze / repair (counts by reason only) the case's expectation, checked against the counts in
    test_model_commands_count_each_row."""
    csv_rows = {case: spec for case, spec in rows.items() if spec["fmt"] == "csv"}
    for command in MODEL_COMMANDS:
        seen = observed_model(command, out, [spec["id"] for spec in csv_rows.values()])
        for case, spec in rows.items():
            if spec["fmt"] != "csv":
                cells[case][command] = "n/a (csv only)"
                continue
            kind, reason = seen[spec["id"]] if seen is not None else _expect(spec, EXPECTED_AS.get(command, "eval"))
            cells[case][command] = f"{kind}: {reason}" if reason else kind


def _write_table(cells: dict[str, dict[str, str]], kinds: dict[str, str]) -> None:
    flat = [v for per in cells.values() for v in per.values() if not v.startswith("n/a")]
    summary = (f"{len(cells)} cases x {len(COMMANDS)} commands: {len(flat)} (case, command) outcomes -- "
               f"{sum(v.startswith('skip') for v in flat)} counted skips, "
               f"{sum(v.startswith('error') for v in flat)} one-line errors, "
               f"{sum(v.startswith(('ok', 'carried', 'removed')) for v in flat)} read or carried, "
               f"{sum(v.startswith('refused') for v in flat)} thumbnails refused, 0 tracebacks")
    lines = ["# Bad inputs x commands", "", "Generated by tests/corpus/test_bad_inputs.py.", "", summary, "",
             "| case | kind | " + " | ".join(COMMANDS) + " |", "|---|---|" + "---|" * len(COMMANDS)]
    for case, per in cells.items():
        lines.append(f"| {case} | {kinds[case]} | " + " | ".join(per[c] for c in COMMANDS) + " |")
    lines += ["", "eval, heads analyze and heads repair count their skips by reason (the counts are checked); "
              "report: the scan report of an embedding made with `--allow-root` on the outside folder, written "
              "without it. defend trains on the CSV manifest and evaluates on it (`--test`; a labelled manifest "
              "that must be refused is given there); heads filter also reads the damaged head profiles.", ""]
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text("\n".join(lines))
    print("\n" + "\n".join(lines))


# -- the tests --------------------------------------------------------------------------------------------
def test_no_run_ends_in_a_traceback(row_runs, error_runs, model_runs):
    for name, r in [*row_runs["results"].items(), *error_runs.items(), *model_runs["rows"].items(),
                    *model_runs["errors"].items()]:
        assert "Traceback" not in r.stderr + r.stdout, (name, r.stderr[-2000:])
    for name, r in [*row_runs["results"].items(), *model_runs["rows"].items()]:
        assert r.returncode == 0, (name, r.stderr[-2000:])


def _expected_counts(rows: dict, command: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for spec in rows.values():
        kind, reason = _expect(spec, command)
        if kind == "skip":
            out[reason] = out.get(reason, 0) + 1
    return out


@pytest.mark.parametrize("fmt", FORMATS)
def test_row_cases_are_counted_skips_or_read(corpus, row_runs, table, fmt):
    """Every row-level case is skipped under its reason, or read; the good rows are all there."""
    out = row_runs["out"] / fmt
    rows = {case: spec for case, spec in _all_rows(corpus).items() if spec["fmt"] == fmt}
    for command in ("poison", "train", "embed", "scan"):
        for case, spec in rows.items():
            kind, reason = _expect(spec, command)
            assert table[case][command] == (f"{kind}: {reason}" if reason else kind), (case, command)
        seen = _observed(command, out, corpus["good_ids"])
        if command != "poison":  # the poisoner reads only the candidates (captions that do not name the target)
            assert all(v == ("ok", None) for v in seen.values()), (command, seen)
    source = read_manifest(_manifest_of(corpus, fmt))
    for command in ("plant", "filter"):  # they carry every row read; the scan's skipped rows are counted unscored
        for case, spec in rows.items():
            assert table[case][command] == ("carried" if spec["kind"] != "line" else f"skip: {spec['reason']}"), case
        derived = read_manifest(out / command)  # its roots: its folder and (verified) the source's
        assert set(corpus["good_ids"]) <= set(derived.df["id"])
        for spec in rows.values():  # a carried row points at the same file, and one outside stays outside
            if spec["kind"] == "line":
                continue
            i, j = _row(derived, spec["id"]), _row(source, spec["id"])
            if spec.get("reason") == "outside the dataset root":
                with pytest.raises(OutsideRootError):
                    derived.image_path(i)
            elif spec.get("reason") != "missing image":  # (plant's shares plant nothing in 50 rows)
                assert Path(derived.image_path(i)).resolve() == Path(source.image_path(j)).resolve(), spec["id"]
    res = json.loads((out / "eval.json").read_text())
    assert res["test_skip_counts"] == _expected_counts(rows, "eval")
    assert res["n_test"] == GOOD_ROWS + sum(_expect(s, "eval")[0] == "ok" for s in rows.values())


@pytest.mark.parametrize("fmt", FORMATS)
def test_skip_counts_reach_run_json(corpus, row_runs, fmt):
    """The skips are counted by reason in each command's record, the rows decoded with replacement and the lines
    the reader left out too."""
    out = row_runs["out"] / fmt
    rows = {case: spec for case, spec in _all_rows(corpus).items() if spec["fmt"] == fmt}
    expected = _expected_counts(rows, "embed")
    lines = _expected_counts({c: s for c, s in rows.items() if s["kind"] == "line"}, "embed")
    read = {"rows_decoded_with_replacement": 1, "rows_skipped_when_read": sum(lines.values()),
            "read_skip_counts": lines}
    for record in (out / "train" / "run.json", out / "embed" / "run.json", out / "scan" / "embeddings" / "run.json"):
        run = json.loads(record.read_text())
        assert run["skip_counts"] == expected, record
        assert {k: run[k] for k in read} == read, record
    spec = json.loads((out / "poison" / "attack.json").read_text())
    assert spec["skip_counts"] == _expected_counts(rows, "poison")
    assert spec["n_skipped"] == sum(spec["skip_counts"].values())
    assert {k: spec[k] for k in read} == read
    plant = json.loads((out / "plant" / "plant.json").read_text())
    assert {k: plant[k] for k in read} == read
    filt = json.loads((out / "filter" / "run.json").read_text())
    assert filt["n_unscored"] == sum(expected.values()) - sum(lines.values())  # the lines were never rows
    assert {k: filt[k] for k in read} == read
    ev = json.loads((out / "eval.json").read_text())
    assert {k: ev[k] for k in read} == read
    df = read_manifest(_manifest_of(corpus, fmt)).df.set_index("id")
    case = {"csv": "case_not_utf8_caption", "jsonl": "case_jsonl_not_utf8_caption",
            "parquet": "case_parquet_binary_caption_not_utf8"}[fmt]
    assert df["caption"][case] == "a caf\ufffd with a \ufffd\ufffd sign"


def test_manifests_that_must_be_refused_give_one_line(corpus, error_runs):
    for (case, command), r in error_runs.items():
        spec = corpus["errors"][case]
        texts = [spec["text"], spec["row"]] if "row" in spec else [spec["text"]]
        if case != "missing_manifest":
            texts.append(Path(spec["manifest"]).name)
        assert_one_line_error(r, *texts)


def test_the_report_never_inlines_an_image_outside_the_roots(corpus, row_runs, table):
    """Embedded with the outside folder allowed, shown by a report that is not told: no thumbnail inlined."""
    rows = corpus["rows"]
    for case, spec in rows.items():
        if spec["kind"] == "path":
            want = "ok (thumbnail)" if spec["expect"] == "ok" else "refused (not inlined)"
            assert table[case]["report"] == want, case
        elif spec["expect"] == "ok" and spec["kind"] == "image":
            assert table[case]["report"] == "ok (thumbnail)", case
    refused = [ln for ln in row_runs["report_log"] if ln.startswith("report: not inlined, outside the dataset root")]
    assert len(refused) == sum(table[case]["report"].startswith("refused") for case in rows) == 4


def test_allowed_roots_let_the_outside_rows_in(corpus, row_runs, model_dir, monkeypatch):
    """--allow-root (the embedding of the report test) and CLIPGUARD_ALLOW_ROOTS both admit the outside rows."""
    escapes = {s["id"] for s in corpus["rows"].values() if s.get("reason") == "outside the dataset root"}
    allowed = json.loads((row_runs["out"] / "allowed" / "run.json").read_text())["skip_counts"]
    assert "outside the dataset root" not in allowed
    embedded = set(pd.read_parquet(next((row_runs["out"] / "allowed" / "metadata").glob("*.parquet")))["id"])
    assert escapes <= embedded
    monkeypatch.setenv("CLIPGUARD_ALLOW_ROOTS", os.pathsep.join(["", str(corpus["outside"])]))
    r = run_cli("eval", model_dir, corpus["manifest"], "--classes", corpus["classes"], "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "outside the dataset root" not in json.loads(r.stdout)["test_skip_counts"]


def test_model_commands_count_each_row(corpus, model_runs, table):
    """defend, heads, reverse and audit: each case of the image corpus skipped under its reason or read, in
    their records (counts by reason) and lists (skipped.csv), the good rows all read."""
    out = model_runs["out"]
    rows = {case: spec for case, spec in _all_rows(corpus).items() if spec["fmt"] == "csv"}
    for command in MODEL_COMMANDS:
        like = EXPECTED_AS.get(command, "eval")
        for case, spec in rows.items():
            kind, reason = _expect(spec, like)
            assert table[case][command] == (f"{kind}: {reason}" if reason else kind), (case, command)
        seen = observed_model(command, out, corpus["good_ids"])
        assert seen is None or all(v == ("ok", None) for v in seen.values()), (command, seen)
    n_ok = {like: GOOD_ROWS + sum(_expect(s, like)[0] == "ok" for s in rows.values()) for like in ("eval", "train")}
    images, pairs = _expected_counts(rows, "eval"), _expected_counts(rows, "train")
    read = {"rows_skipped_when_read", "read_skip_counts"}
    defend = json.loads((out / "defend" / "run.json").read_text())
    assert defend["defence"]["skip_counts"] == pairs and defend["defence"]["n_pairs"] == n_ok["train"]
    for when in ("before", "after"):  # the --test evaluation
        assert defend[when]["test_skip_counts"] == images and defend[when]["n_test"] == n_ok["eval"]
    analyze = json.loads((out / "heads analyze" / "run.json").read_text())
    for part, n in (("clean", "n_images"), ("test", "n_clean")):
        assert analyze[part]["skip_counts"] == images and analyze[part][n] == n_ok["eval"], part
    repair = json.loads((out / "heads repair" / "run.json").read_text())
    assert repair["clean"]["skip_counts"] == images and repair["clean"]["n_images"] == n_ok["eval"]
    filt = json.loads((out / "heads filter" / "run.json").read_text())
    assert filt["skip_counts"] == images and filt["n_inputs"] == n_ok["eval"]
    for command in ("reverse", "audit"):
        run = json.loads((out / command / "run.json").read_text())
        assert run["skip_counts"] == images and run["n_images_read"] == n_ok["eval"], command
        assert run["n_skipped"] == sum(images.values()) and not read & set(run), command


def test_model_commands_refuse_bad_manifests_and_profiles_in_one_line(corpus, model_runs):
    for (case, command), r in model_runs["errors"].items():
        spec = corpus["errors"].get(case) or model_runs["profiles"][case]
        texts = [spec["text"], spec["row"]] if "row" in spec else [spec["text"]]
        if case != "missing_manifest":
            texts.append(Path(spec.get("manifest") or spec["file"]).name)
        if spec["kind"] == "profile":
            texts += [spec["file"], "clipguard heads analyze"]
        assert_one_line_error(r, *texts)


def test_the_table_covers_every_case_and_command(corpus, table, model_runs):
    assert set(table) == set(_all_rows(corpus)) | set(corpus["errors"]) | set(model_runs["profiles"])
    for case, per in table.items():
        assert set(per) == set(COMMANDS), case
        assert not any(v.startswith(("exit", "dropped", "not read")) for v in per.values()), (case, per)
    assert ARTIFACT.is_file()
