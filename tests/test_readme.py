"""Every example of the README runs: its ```python snippets and the `clipguard ...` lines of its
```bash blocks, in document order, on a small world in a temporary folder.

Only SIZE options are changed for a fast run (``SIZES``), and the README's placeholders are mapped
to the folders the earlier lines created (``PLACEHOLDERS``). Lines that cannot run here (another
program, ``--device cuda`` without a GPU) are skipped with a reason, printed at the end (``pytest
-s`` or ``-rA`` shows it). A line that fails, or whose outputs are missing, fails the test.

When the README changes: a new placeholder goes into ``PLACEHOLDERS``; a new command that trains or
generates data gets its size options in ``SIZES``; its outputs in ``_expected_outputs``.
"""
from __future__ import annotations

import io
import re
import shlex
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch

from clipguard.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"

#: the README's placeholders -> what the earlier lines of the README created
PLACEHOLDERS = {
    "EMB_DIR": "emb",
    "MODEL_DIR": "model",
    "manifest.parquet": "poisoned/manifest.parquet",
    "data/manifest.parquet": "poisoned/manifest.parquet",
    "SCAN_DIR": "scan",
    "CLEAN_MANIFEST": "world/test/manifest.parquet",
}

#: size options set (replaced, or added) per command, so that the whole README runs in about a minute
SIZES = {
    "synth": {"--n-train": "300", "--n-test": "100"},
    "train": {"--epochs": "1"},
    "probe": {"--workers": "0"},
    "demo": {"--n-train": "300", "--n-test": "100", "--epochs": "1"},
    "badclip": {"--steps": "2"},
    "defend": {"--epochs": "1"},
    "reverse": {"--steps": "5", "--controls": "1", "--n-images": "40"},
    "audit": {"--steps": "3", "--n-images": "40"},
    "bench": {"--preset": "smoke", "--worlds": "shapes"},
}

_PLACEHOLDER_LIKE = re.compile(r"^[A-Z][A-Z0-9_]{2,}$")
_BLOCK = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.M | re.S)


def readme_blocks(text: str) -> list[tuple[str, str]]:
    """``[(language, code)]`` of the fenced blocks, in document order."""
    return [(m.group(1).lower(), m.group(2)) for m in _BLOCK.finditer(text)]


def shell_lines(code: str) -> list[list[str]]:
    """The commands of a bash block as token lists: ``\\`` continuations joined, ``#`` comments dropped,
    and ``clipguard a | b | c`` (the README's shorthand for three commands) expanded."""
    joined = re.sub(r"\\\n", " ", code)
    commands = []
    for line in joined.splitlines():
        tokens = shlex.split(line, comments=True)
        if not tokens:
            continue
        parts: list[list[str]] = [[]]
        for t in tokens:
            if t == "|":
                parts.append([])
            else:
                parts[-1].append(t)
        if len(parts) > 1 and parts[0][0] == "clipguard" and all(len(p) == 1 for p in parts[1:]):
            commands += [parts[0]] + [["clipguard", p[0]] for p in parts[1:]]
        else:
            commands.append(tokens)
    return commands


def prepare(tokens: list[str]) -> tuple[list[str] | None, str]:
    """``(argv for clipguard.cli.main, "")``, or ``(None, reason)`` for a line that cannot run here."""
    if tokens[0] != "clipguard":
        return None, f"not a clipguard command ({tokens[0]})"
    if "|" in tokens:
        return None, "pipes into another program"
    args = [PLACEHOLDERS.get(t, t) for t in tokens[1:]]
    unknown = [t for t in args if _PLACEHOLDER_LIKE.match(t)]
    assert not unknown, f"README placeholder(s) {unknown} in {' '.join(tokens)!r}: add them to PLACEHOLDERS"
    wants_gpu = any(a.startswith("cuda") for a in args) or "bf16" in args
    if wants_gpu and not torch.cuda.is_available():
        return None, "needs a CUDA GPU (torch sees none here)"
    for option, value in SIZES.get(args[0] if args else "", {}).items():
        if option in args:
            args[args.index(option) + 1] = value
        else:
            args += [option, value]
    return args, ""


def _option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args and args.index(name) + 1 < len(args) else None


def _expected_outputs(args: list[str]) -> list[str]:
    """What a command must have written (paths relative to the working folder)."""
    cmd, out = args[0], _option(args, "--out")
    if cmd == "scan":
        out = out or args[1]
    if cmd in ("bench", "demo"):
        out = out or cmd  # their --out defaults to the command's name
    expected = {
        "synth": ["classes.json", "train/manifest.parquet", "test/manifest.parquet"],
        "poison": ["manifest.parquet", "attack.json"],
        "train": ["model.safetensors", "model.json", "run.json"],
        "embed": ["img_emb/img_emb_0.npy", "run.json"],
        "probe": ["stability.parquet", "skipped.csv", "run.json"],
        "scan": ["run.json", "scores/scores_0.parquet"],
        "filter": ["manifest.parquet", "removed.csv", "run.json"],
        "demo": ["summary.json"],
        "badclip": ["trigger.png"],
        "defend": ["model.safetensors", "model.json", "run.json"],
        "reverse": ["trigger.png", "mask.png", "trigger.json", "run.json"],
        "plant": ["manifest.parquet", "plant.json"],
        "discover": ["clusters.parquet", "run.json"],
        "audit": ["verdict.json", "candidates.csv", "run.json"],
        "bench": ["bench.csv", "bench.md", "run.json"],
    }.get(cmd, [])
    if cmd == "discover" and not out:
        out = f"{args[1]}/discover"
    if cmd == "heads" and len(args) > 1:
        expected = {"analyze": ["profile.json", "profile.safetensors", "heads.csv", "run.json"],
                    "repair": ["model.safetensors", "repair.safetensors", "model.json", "run.json"],
                    "filter": ["scores.parquet", "run.json"]}.get(args[1], [])
    paths = [f"{out}/{p}" for p in expected]
    if cmd in ("eval", "audit-calibrate", "report") and out:
        paths.append(out)
    if cmd in ("scan", "defend", "audit", "heads", "bench", "demo") and "--no-report" not in args:
        paths.append(f"{out}/report.html")  # every command with a report page writes it by default
    if cmd == "attacks" and _option(args, "--gallery"):
        paths.append(_option(args, "--gallery"))
    return paths


def _run_cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(["-q", *args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def _run_python(code: str) -> None:
    for name, value in PLACEHOLDERS.items():
        if _PLACEHOLDER_LIKE.match(name):
            code = re.sub(rf"\b{name}\b", value, code)
    exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})


def test_parser_handles_comments_continuations_and_alternatives():
    code = ("clipguard poison a.parquet --out p \\\n    --param 'targets=[\"a\", \"b\"]'  # note\n"
            "# a comment\nmake demo   # not ours\nclipguard models | attacks | detectors   # what is registered\n")
    assert shell_lines(code) == [
        ["clipguard", "poison", "a.parquet", "--out", "p", "--param", 'targets=["a", "b"]'],
        ["make", "demo"], ["clipguard", "models"], ["clipguard", "attacks"], ["clipguard", "detectors"]]
    assert prepare(["clipguard", "synth", "--out", "w"])[0] == ["synth", "--out", "w", "--n-train", "300",
                                                                "--n-test", "100"]
    assert prepare(["clipguard", "train", "m", "--epochs", "10"])[0] == ["train", "m", "--epochs", "1"]
    assert prepare(["make", "demo"]) == (None, "not a clipguard command (make)")
    with pytest.raises(AssertionError, match="add them to PLACEHOLDERS"):
        prepare(["clipguard", "scan", "NEW_DIR"])


@pytest.mark.slow
def test_every_readme_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ran, skipped = [], []
    for lang, code in readme_blocks(README.read_text()):
        if lang == "python":
            _run_python(code)
            ran.append("python snippet")
            continue
        if lang not in ("bash", "sh", "shell"):
            continue
        for tokens in shell_lines(code):
            line = " ".join(tokens)
            args, reason = prepare(tokens)
            if args is None:
                skipped.append(f"{line}  [{reason}]")
                continue
            rc, out, err = _run_cli(args)
            assert rc == 0, f"README line {line!r} (run as clipguard {' '.join(args)}) failed:\n{err}{out}"
            missing = [p for p in _expected_outputs(args) if not Path(p).exists()]
            assert not missing, f"README line {line!r} wrote no {missing}"
            ran.append(line if args == tokens[1:] else f"{line}  (as: clipguard {' '.join(args)})")
    print("\nran:\n  " + "\n  ".join(ran) + "\nskipped:\n  " + "\n  ".join(skipped or ["(none)"]))
    assert sum(line.startswith("clipguard") for line in ran) >= 10, "the README parser found too few commands"
