"""The commands that read the bad-input corpus with a model: ``defend``, ``heads analyze | repair | filter``,
``reverse`` and ``audit`` (used by tests/corpus/test_bad_inputs.py, which puts them in its outcome table).

Each runs once over ``manifest.csv`` (the image corpus: bad images, paths out of the root, captions, a
malformed line) with the tiniest settings (tiny-vit-p8, 1 epoch, 2 search steps), once per manifest that must
be refused, and ``heads filter`` once per damaged head profile. What each did with each row is read back from
its outputs: ``skipped.csv`` (defend, heads filter, reverse, audit) and the counts by reason in ``run.json``.
"""
from __future__ import annotations

import json
import shutil
import traceback
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import save_file

from tests_helpers import CliResult, run_cli

__all__ = ["MODEL_COMMANDS", "damaged_profiles", "model_error_runs", "model_row_runs", "observed_model",
           "EXPECTED_AS"]

MODEL_COMMANDS = ("defend", "heads analyze", "heads repair", "heads filter", "reverse", "audit")

EXPECTED_AS = {"defend": "train"}
"""Whose expectations a command shares (``_expect`` of test_bad_inputs): defend trains on image-caption
pairs (an empty caption is skipped); the others read images only (as ``eval``)."""


def _run(*args) -> CliResult:
    """``run_cli``, with an exception that escapes the CLI (a bug) kept as a traceback in stderr."""
    try:
        return run_cli(*args)
    except Exception:  # noqa: BLE001 -- reported by the tests, never swallowed
        return CliResult(1, "", traceback.format_exc())


def _args(command: str, vit: Path, manifest: Path, classes: Path, profile: Path, out: Path) -> list:
    """The arguments of ``command`` reading ``manifest`` (tiny settings)."""
    cpu = ["--device", "cpu"]
    return {"defend": ["defend", "mmcl", vit, "--data", manifest, "--out", out, "--epochs", 1, "--batch-size", 8,
                       *cpu, "--no-report"],
            "heads analyze": ["heads", "analyze", vit, "--clean", manifest, "--test", manifest, "--out", out, *cpu,
                              "--no-report"],
            "heads repair": ["heads", "repair", vit, "--clean", manifest, "--out", out, "--mlp-layers", "none", *cpu,
                             "--no-report"],
            "heads filter": ["heads", "filter", vit, "--input", manifest, "--profile", profile, "--out", out, *cpu,
                             "--no-report"],
            "reverse": ["reverse", vit, "--target", "red", "--images", manifest, "--classes", classes, "--out", out,
                        "--controls", 0, "--n-images", 200, "--steps", 2, *cpu],
            "audit": ["audit", vit, "--images", manifest, "--classes", classes, "--out", out, "--n-images", 200,
                      "--steps", 2, *cpu, "--no-report"]}[command]


def model_row_runs(corpus: dict, vit: Path, out: Path) -> dict[str, CliResult]:
    """Each command once over ``manifest.csv``; defend also evaluates on it (``--test``, CA before and after)."""
    m, classes = corpus["manifest"], corpus["classes"]
    runs = {"heads analyze": _run(*_args("heads analyze", vit, m, classes, out / "ha", out / "heads analyze"))}
    for command in MODEL_COMMANDS[1:]:
        if command != "heads analyze":
            runs[command] = _run(*_args(command, vit, m, classes, out / "heads analyze", out / command))
    runs["defend"] = _run(*_args("defend", vit, m, classes, out / "heads analyze", out / "defend"),
                          "--test", m, "--classes", classes)
    return runs


def damaged_profiles(good: Path, root: Path) -> dict[str, dict]:
    """Head profiles ``heads filter --profile`` must refuse in one line: ``{case: {"profile", "text"}}``."""
    data = (good / "profile.safetensors").read_bytes()
    tensors = {"head_prototypes": torch.zeros(2, 2, 4), "mlp_means": torch.zeros(2, 4), "head_eps": torch.zeros(2, 3),
               "mlp_eps": torch.zeros(2)}
    cases = {"profile_truncated": (data[: len(data) // 2], "not a readable safetensors file"),
             "profile_corrupt": (b"\x08\x00\x00\x00\x00\x00\x00\x00{not json" + bytes(64),
                                 "not a readable safetensors file"),
             "profile_zero_bytes": (b"", "not a readable safetensors file"),
             "profile_other_tensors": ({"weight": torch.zeros(3, 3)}, "missing tensor(s) head_prototypes"),
             "profile_mismatched_shapes": (tensors, "head_eps has shape (2, 3), expected (2, 2)"),
             "profile_json_without_zeta": (None, "no numeric 'zeta'")}
    out = {}
    for case, (content, text) in cases.items():
        folder = root / case
        shutil.copytree(good, folder)
        if isinstance(content, dict):
            save_file(content, str(folder / "profile.safetensors"))
        elif content is not None:
            (folder / "profile.safetensors").write_bytes(content)
        else:
            meta = json.loads((folder / "profile.json").read_text())
            (folder / "profile.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "zeta"}))
        name = "profile.json" if content is None else "profile.safetensors"
        out[case] = {"profile": folder, "text": text, "file": str(folder / name), "kind": "profile"}
    return out


def model_error_runs(corpus: dict, vit: Path, profile: Path, profiles: dict[str, dict],
                     out: Path) -> dict[tuple[str, str], CliResult]:
    """Each manifest that must be refused through each command (a labelled one: defend's ``--test``), and each
    damaged profile through ``heads filter``."""
    runs = {}
    for case, spec in corpus["errors"].items():
        if spec["kind"] == "label":  # a test split whose labels are no classes: refused before any training
            runs[case, "defend"] = _run(*_args("defend", vit, corpus["manifest"], corpus["classes"], profile,
                                               out / f"{case}-defend"), "--test", spec["manifest"], "--classes",
                                        corpus["classes"])
            continue
        for command in MODEL_COMMANDS:
            runs[case, command] = _run(*_args(command, vit, Path(spec["manifest"]), corpus["classes"], profile,
                                              out / f"{case}-{command}"))
    for case, spec in profiles.items():
        runs[case, "heads filter"] = _run(*_args("heads filter", vit, corpus["manifest"], corpus["classes"],
                                                 spec["profile"], out / case))
    return runs


def _skipped(path: Path) -> dict[str, str]:
    """``{id: reason key}`` of a ``skipped.csv`` (none: {})."""
    if not path.is_file():
        return {}
    return {r.id: str(r.reason).split(":")[0] for r in pd.read_csv(path, dtype={"id": str}).itertuples()}


def observed_model(command: str, out: Path, ids: list[str]) -> dict[str, tuple[str, str | None]] | None:
    """``{id: ("skip", reason) | ("ok", None)}`` as ``command``'s outputs in ``out/<command>`` tell, or None for
    heads analyze / repair (their record counts skips by reason only: checked against the expectations)."""
    folder = out / command
    if command in ("heads analyze", "heads repair"):
        return None
    skips = _skipped(folder / "skipped.csv")
    if command == "heads filter":
        scored = set(pd.read_parquet(folder / "scores.parquet")["id"])
        return {i: ("skip", skips[i]) if i in skips else ("ok", None) if i in scored else ("dropped", None)
                for i in ids}
    return {i: ("skip", skips[i]) if i in skips else ("ok", None) for i in ids}
