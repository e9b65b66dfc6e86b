"""Every bad embedding folder and webdataset tar of the corpus through every command that reads it (issue 15).

The corpus (:mod:`corpus.make_embedding_corpus`: NaN/inf/zero rows, misaligned or missing shards, an
empty shard, too few rows for k, mixed dimensions, int and 3-D arrays, a cut-off .npy, stray files;
tars without a caption or image member, cut off, empty, 0 bytes) goes through, in this process:

* ``scan EMB`` (auto: global), ``--reference batch``, ``--reference reference`` and the sharded scan
  (``--distributor sequential --part-rows 40``: several parts);
* ``report`` and ``discover`` on the scan made from the folder; when the folder cannot be scanned, on a
  scan of the good folder whose embedding folder was replaced by the bad one afterwards (``run.json``'s
  ``emb_dir`` points at it): both commands read the embeddings again;
* ``filter MANIFEST SCAN`` on the scans that exist (it reads their scores);
* for the tars: ``embed MODEL 'shards/{000..001}.tar'`` and ``scan --model MODEL --data shards``.

Every (case, command) ends in exit code 0 -- with whatever was left out counted in ``run.json``
(``skipped_shards``, ``ignored_files``, the embed's ``skip_counts``, filter's ``n_unscored``) -- or in
exit code 2 and exactly one ``error:`` line naming the file (and row) and the fix; never a traceback.
The outcome table is printed and written to ``test-artifacts/bad_embeddings.md``.

Decisions: NaN/inf and all-zero embedding rows are refused (one line naming shard file and row: a scan
cannot score a vector without a direction, and dropping it would hide it); an empty shard is accepted
(0 rows, ``skipped_shards``); k larger than the data is refused, naming k and N and a k that works
(clamping would change every score silently); files in the shard folders that are not shards are
ignored with a warning and listed in ``run.json``; a tar with no member adds no row (warning); a
cut-off tar is refused, also when it is cut at a member boundary (tarfile alone stops there silently).
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from clipguard.data.manifest import write_manifest
from clipguard.models import create_model, save_model
from corpus.make_embedding_corpus import EMBEDDING_CASES, N, TAR_CASES, make_embedding_corpus
from tests_helpers import LogRecords, run_cli

FAST = ["--param", "iforest.n_estimators=5", "--no-report"]  # the default detectors, a smaller forest
SCANS = {
    "scan": [],
    "scan batch": ["--reference", "batch", "--batch-size", "40"],
    "scan reference": ["--reference", "reference", "--reference-size", "60"],
    "scan sharded": ["--distributor", "sequential", "--reference", "batch", "--batch-size", "40", "--part-rows", "40"],
}
EMB_COMMANDS = [*SCANS, "report", "discover", "filter"]
TAR_COMMANDS = ["embed", "scan --model"]

#: case -> (outcome of the scans, of report, of discover); outcome: "ok", "skip" (exit 0, counted in
#: run.json) or the text the one error line holds. filter runs where the scan succeeded.
EXPECTED: dict[str, tuple[str, str, str]] = {
    "good": ("ok", "ok", "ok"),
    "nan_image_row": ("img_emb_1.npy row 5 (global row 45)",) * 3,
    "inf_image_row": ("img_emb_2.npy row 7 (global row 87)",) * 3,
    "zero_image_row": ("img_emb_0.npy row 3 (global row 3)", "ok", "img_emb_0.npy row 3 (global row 3)"),
    "nan_text_row": ("text_emb_1.npy row 2 (global row 42)", "ok", "text_emb_1.npy row 2 (global row 42)"),
    "text_rows_mismatch": ("text_emb_1.npy has 39 rows but",) * 3,
    "metadata_short": ("metadata_2.parquet has 38 rows but",) * 3,
    "metadata_missing": ("metadata/metadata_1.parquet is missing",) * 3,
    "text_shard_missing": ("text_emb has shards [0, 1] but img_emb has [0, 1, 2]",) * 3,
    "empty_shard": ("skip", "ok", "ok"),
    "all_empty": ("is empty (0 rows)",) * 3,
    "one_row": ("the data has N=1 row", "ok", "(1 vs 120 rows)"),
    "fewer_rows_than_k": ("k <= 11", "ok", "(12 vs 120 rows)"),
    "dim_mismatch": ("img_emb_2.npy has dimension 6",) * 3,
    "int_dtype": ("img_emb_1.npy has shape (40, 8) and dtype int64",
                  "img_emb_1.npy has shape (40, 8) and dtype int64", "img_emb_1.npy holds int64 values"),
    "three_d": ("img_emb_0.npy has shape (40, 8, 1)",) * 3,
    "truncated_npy": ("cannot read",) * 3,
    "stray_file": ("skip", "ok", "ok"),
    "identical_rows": ("ok", "ok", "ok"),
}
#: what the table adds to a cell
NOTES = {
    ("zero_image_row", "report"): "the report reads the rows for its map only: a zero row is a point at the centre",
    ("nan_text_row", "report"): "the report does not read caption embeddings",
    ("one_row", "report"): "the folder no longer holds the scan's 120 rows: the map is left out, without a warning "
                           "(report/page.py _rows_of)",
    ("fewer_rows_than_k", "report"): "as one_row",
    ("tar_empty", "embed"): "the empty tar adds no row; a warning names it",
}
TAR_EXPECTED = {
    "tar_good": "ok", "tar_missing_caption": "skip", "tar_missing_image": "skip",
    "tar_truncated": "001.tar: not a readable tar archive (ReadError: unexpected end of data)",
    "tar_cut_at_member": "001.tar: no end-of-archive block after its 3 member(s)",
    "tar_empty": "ok", "tar_zero_bytes": "001.tar: not a readable tar archive (ReadError: empty file)",
}


@dataclass
class Outcome:
    """One (case, command): its exit code, stderr, the one error line (if any) and the warnings logged."""

    case: str
    command: str
    code: int
    stdout: str
    stderr: str
    warnings: list[str]
    out: Path | None = None

    @property
    def error(self) -> str | None:
        lines = [ln for ln in self.stderr.splitlines() if ln.startswith("error: ")]
        return lines[0] if lines else None



def _run(case: str, command: str, *args, out: Path | None = None) -> Outcome:
    handler = LogRecords()
    logger = logging.getLogger("clipguard")
    logger.addHandler(handler)
    try:
        r = run_cli(*args)
    finally:
        logger.removeHandler(handler)
    return Outcome(case, command, r.returncode, r.stdout, r.stderr, handler.messages, out)


def _manifest(path: Path) -> Path:
    """A manifest with the N ids of the good folder (filter reads ids, never the images)."""
    df = pd.DataFrame({"id": [f"s{j:04d}" for j in range(N)], "image": [f"img/{j}.png" for j in range(N)],
                       "caption": [f"a photo of thing {j % 4}" for j in range(N)]})
    return write_manifest(df, path)


def _damaged_copy(good_scan: Path, emb: Path, dest: Path) -> Path:
    """The good folder's scan, its embedding folder replaced by ``emb`` afterwards."""
    shutil.copytree(good_scan, dest)
    run = json.loads((dest / "run.json").read_text())
    run["config"]["emb_dir"] = str(emb)
    (dest / "run.json").write_text(json.dumps(run))
    return dest


def _embedding_outcomes(folders: dict[str, Path], work: Path) -> list[Outcome]:
    manifest = _manifest(work / "manifest.csv")
    good_scan = work / "scans" / "good" / "scan"
    out: list[Outcome] = []
    for case in EMBEDDING_CASES:
        base = work / "scans" / case
        scans = {}
        for command, opts in SCANS.items():
            scans[command] = _run(case, command, "scan", folders[case], "--out", base / command, *FAST, *opts,
                                  out=base / command)
        out += scans.values()
        made = scans["scan"].code == 0
        scan_dir = base / "scan" if made else _damaged_copy(good_scan, folders[case], base / "damaged")
        out.append(_run(case, "report", "report", scan_dir, out=scan_dir))
        out.append(_run(case, "discover", "discover", scan_dir, "--out", base / "discover", out=base / "discover"))
        if made:
            out.append(_run(case, "filter", "filter", manifest, scan_dir, "--out", base / "filter", out=base / "filter"))
    return out


def _tar_outcomes(folders: dict[str, Path], model: Path, work: Path) -> list[Outcome]:
    out = []
    for case in TAR_CASES:
        e, s = work / "tars" / case / "embed", work / "tars" / case / "scan"
        out.append(_run(case, "embed", "embed", model, f"{folders[case]}/{{000..001}}.tar", "--out", e,
                        "--device", "cpu", out=e))
        out.append(_run(case, "scan --model", "scan", "--model", model, "--data", folders[case], "--out", s, "-k", "4",
                        *FAST, "--device", "cpu", out=s))
    return out


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, monkeypatch_module):
    """Every (case, command) run once; the whole matrix takes a few seconds."""
    work = tmp_path_factory.mktemp("bad_embeddings")
    folders = make_embedding_corpus(work / "corpus")
    model = save_model(create_model("tiny-rn", seed=0), work / "model")
    t0, c0 = time.perf_counter(), time.process_time()
    res = _embedding_outcomes(folders, work) + _tar_outcomes(folders, model, work)
    table = _table(res, time.perf_counter() - t0, time.process_time() - c0)
    print("\n" + table)
    artifacts = Path(__file__).resolve().parents[2] / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "bad_embeddings.md").write_text(table)
    return {(o.case, o.command): o for o in res}


@pytest.fixture(scope="module")
def monkeypatch_module():
    """The report's score figures (histograms, ROC/PR: scores only) are left out and the embedding map is
    not rasterised to PNG: matplotlib takes seconds per report here, and what reads the embeddings -- the
    rows, the map's projection -- still runs."""
    import matplotlib.pyplot as plt

    from clipguard.report import figures, page

    mp = pytest.MonkeyPatch()

    def no_png(fig):
        plt.close(fig)
        return "data:image/png;base64,"

    mp.setattr(figures, "png_uri", no_png)
    mp.setattr(page, "score_histograms", lambda *a, **k: "")
    mp.setattr(page, "roc_pr_curves", lambda *a, **k: "")
    yield mp
    mp.undo()


def _status(o: Outcome) -> str:
    if o.code != 0:
        return "error"
    if o.command in SCANS or o.command == "filter":
        run = json.loads((o.out / "run.json").read_text())
        counted = run.get("n_skipped_shards", 0) + run.get("n_ignored_files", 0) + run.get("n_unscored", 0)
        return "skip" if counted else "ok"
    if o.command in TAR_COMMANDS:
        emb = o.out if o.command == "embed" else o.out / "embeddings"
        return "skip" if json.loads((emb / "run.json").read_text())["n_skipped"] else "ok"
    return "ok"


def _table(res: list[Outcome], seconds: float, cpu_seconds: float) -> str:
    cells = {(o.case, o.command): _status(o) for o in res}
    lines = ["# Bad embeddings and tar shards x commands (tests/corpus/test_bad_embeddings.py)", "",
             "ok: exit 0, nothing left out; skip: exit 0, what was left out counted in run.json; "
             "error: exit 2, one `error:` line naming the file/row and the fix; n/a: no scan to read "
             "(filter reads the scan's scores, not the embeddings). Where the folder cannot be scanned, "
             "report/discover read it as the embedding folder of an earlier scan.", ""]
    for cases, commands in ((EMBEDDING_CASES, EMB_COMMANDS), (TAR_CASES, TAR_COMMANDS)):
        lines += ["| case | " + " | ".join(commands) + " |", "|---" * (len(commands) + 1) + "|"]
        lines += [f"| {c} | " + " | ".join(cells.get((c, m), "n/a") + ("*" if (c, m) in NOTES else "")
                                         for m in commands) + " |" for c in cases]
        lines.append("")
    counts = pd.Series(list(cells.values())).value_counts().to_dict()
    tracebacks = sum("Traceback" in o.stderr + o.stdout for o in res)
    lines.append(f"{len(EMBEDDING_CASES)} embedding cases x {len(EMB_COMMANDS)} commands + {len(TAR_CASES)} tar cases "
                 f"x {len(TAR_COMMANDS)} commands: {len(cells)} runs ({counts.get('ok', 0)} ok, {counts.get('skip', 0)} "
                 f"counted skips, {counts.get('error', 0)} one-line errors), {tracebacks} tracebacks; {seconds:.1f} s "
                 f"({cpu_seconds:.1f} s CPU)")
    lines += ["", "Notes:", ""] + [f"- {c} / {m}: {note}" for (c, m), note in NOTES.items()]
    lines += ["", "First error line per case (scan):", ""]
    lines += [f"- {o.case} / {o.command}: `{o.error}`" for o in res if o.error and o.command in ("scan", "embed")]
    return "\n".join(lines) + "\n"


def test_no_traceback_and_every_failure_is_one_line_naming_a_file_and_a_fix(outcomes):
    assert len(outcomes) >= len(EMBEDDING_CASES) * 6 + len(TAR_CASES) * 2
    for (case, command), o in outcomes.items():
        assert "Traceback" not in o.stderr + o.stdout, (case, command, o.stderr)
        if o.code == 0:
            assert "error" not in o.stderr.lower(), (case, command, o.stderr)
            continue
        assert o.code == 2, (case, command, o.stderr)
        lines = [ln for ln in o.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING")]
        assert len(lines) == 1 and lines[0].startswith("error: "), (case, command, o.stderr)
        assert "; " in lines[0], (case, command, lines[0])  # "<what is wrong>; <what to do>"
        named = ("img_emb", "text_emb", "metadata", ".tar", "N=", "rows)")
        assert any(s in lines[0] for s in named), (case, command, lines[0])


@pytest.mark.parametrize("case", list(EMBEDDING_CASES))
def test_each_embedding_case_through_every_command(outcomes, case):
    scans, report, discover = EXPECTED[case]
    for command, expected in [*((c, scans) for c in SCANS), ("report", report), ("discover", discover)]:
        o = outcomes[(case, command)]
        if expected in ("ok", "skip"):
            assert o.code == 0, (command, o.stderr)
            assert _status(o) == expected, (command, expected)
        else:
            assert o.code == 2 and expected in (o.error or ""), (command, expected, o.stderr)
    assert ((case, "filter") in outcomes) == (scans in ("ok", "skip"))


def test_what_an_accepted_folder_leaves_out_is_counted(outcomes):
    empty = {c: json.loads((outcomes[("empty_shard", c)].out / "run.json").read_text()) for c in SCANS}
    for run in empty.values():
        assert run["skipped_shards"] == [1] and run["n_skipped_shards"] == 1 and run["n"] == 80
        assert run["shard_ids"] == [0, 2]
    assert empty["scan sharded"]["distributed"]["n_parts"] == 2
    scores = outcomes[("empty_shard", "scan")].out / "scores"
    assert len(pd.read_parquet(scores / "scores_1.parquet")) == 0  # every shard has its (empty) score file
    filt = json.loads((outcomes[("empty_shard", "filter")].out / "run.json").read_text())
    assert filt["n_unscored"] == N - 80 and filt["n_scored"] == 80 and filt["n_rows"] == N
    for c in SCANS:
        run = json.loads((outcomes[("stray_file", c)].out / "run.json").read_text())
        assert run["ignored_files"] == ["img_emb/img_emb_3.npy.bak", "img_emb/notes.txt"], c
        assert run["n"] == N and run["shard_ids"] == [0, 1, 2]
        assert any("ignored 2 file(s) that are not shards" in w for w in outcomes[("stray_file", c)].warnings)
    good = json.loads((outcomes[("good", "scan sharded")].out / "run.json").read_text())
    assert good["distributed"]["n_parts"] == 3 and good["n_ignored_files"] == 0 and good["n_skipped_shards"] == 0
    ident = pd.read_parquet(outcomes[("identical_rows", "scan")].out / "scores")
    assert len(ident) == N and ident["fused_score"].notna().all()


def test_tar_cases_through_embed_and_scan(outcomes):
    for case, expected in TAR_EXPECTED.items():
        for command in TAR_COMMANDS:
            o = outcomes[(case, command)]
            if expected in ("ok", "skip"):
                assert o.code == 0 and _status(o) == expected, (case, command, o.stderr)
            else:
                assert o.code == 2 and expected in (o.error or ""), (case, command, o.stderr)
    for case, reason, key in (("tar_missing_caption", "empty caption", "u0002"),
                              ("tar_missing_image", "missing image", "u0010")):
        for command in TAR_COMMANDS:
            o = outcomes[(case, command)]
            emb = o.out if command == "embed" else o.out / "embeddings"
            run = json.loads((emb / "run.json").read_text())
            assert run["n_rows"] == 12 and run["n_embedded"] == 11 and run["n_skipped"] == 1, (case, command)
            assert run["skip_counts"] == {reason: 1}, (case, command)
            skipped = pd.concat([pd.read_csv(p) for p in sorted((emb / "skipped").glob("*.csv"))])
            assert skipped["id"].astype(str).tolist() == [key], (case, command)
        assert "embedded 11 pairs, skipped 1" in outcomes[(case, "scan --model")].stdout
    for command in TAR_COMMANDS:  # an empty tar adds no row, and says so
        o = outcomes[("tar_empty", command)]
        emb = o.out if command == "embed" else o.out / "embeddings"
        assert json.loads((emb / "run.json").read_text())["n_rows"] == 6
        assert any("hold no samples" in w and "001.tar" in w for w in o.warnings), o.warnings
