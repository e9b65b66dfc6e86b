"""`clipguard scan/embed --distributor ...`: the CLI over the sharded scan and embedding, and its one-line errors."""
from __future__ import annotations

import json

from tests_helpers import assert_one_line_error, run_cli, write_folder

from clipguard.io.layout import list_shards


def test_scan_cli_writes_the_same_scores_as_the_library(tmp_path):
    from clipguard.detect import run_scan

    emb = write_folder(tmp_path / "emb", n=1200)
    res = run_cli("scan", str(emb), "--out", str(tmp_path / "cli"), "--reference", "batch", "--batch-size", "256",
                  "-k", "8", "--part-rows", "512", "--keep-parts")
    assert res.returncode == 0, res.stderr
    assert "scored 1200 samples" in res.stdout
    run_scan(emb, tmp_path / "lib", reference="batch", batch_size=256, k=8)
    cli = {i: p.read_bytes() for i, p in list_shards(tmp_path / "cli", "scores").items()}
    lib = {i: p.read_bytes() for i, p in list_shards(tmp_path / "lib", "scores").items()}
    assert cli == lib
    run = json.loads((tmp_path / "cli" / "run.json").read_text())
    assert run["distributed"]["n_parts"] == 3 and (tmp_path / "cli" / "parts" / "spec.json").is_file()


def test_cluster_options_without_ray_are_one_line_errors(tmp_path):
    emb = write_folder(tmp_path / "emb", n=300)
    assert_one_line_error(run_cli("scan", str(emb), "--address", "auto"), "--distributor ray")
    assert_one_line_error(run_cli("embed", "model", "data.parquet", "--out", str(tmp_path / "e"), "--processes", "4"),
                          "add --distributor ray")
    assert_one_line_error(run_cli("scan", "--model", "m", "--data", "d", "--out", str(tmp_path / "s"),
                                  "--distributor", "ray"), "embed first")
