"""``clipguard probe MODEL_DIR MANIFEST --out DIR``: the record that ``scan --record`` reads, then the scan with it."""
import json

import pandas as pd

from clipguard.embed import read_stability
from clipguard.models import create_model, save_model
from tests_helpers import assert_one_line_error, run_cli


def test_probe_then_scan_with_the_record(tiny_world, tmp_path):
    save_model(create_model("tiny-rn", seed=0), tmp_path / "model")
    manifest = tiny_world / "train" / "manifest.parquet"
    r = run_cli("probe", tmp_path / "model", manifest, "--out", tmp_path / "probe", "--kind", "noise",
                "--kind", "blend", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    n = len(pd.read_parquet(manifest))
    assert f"probed {n} images (noise, blend), skipped 0" in r.stdout and "--record" in r.stdout
    assert list(read_stability(tmp_path / "probe").columns) == ["id", "row", "noise_stability", "blend_stability"]
    assert json.loads((tmp_path / "probe" / "run.json").read_text())["n_probed"] == n
    again = run_cli("probe", tmp_path / "model", manifest, "--out", tmp_path / "probe", "--kind", "noise",
                    "--kind", "blend", "--device", "cpu")
    assert "1 part(s) reused" in again.stdout
    r = run_cli("embed", tmp_path / "model", manifest, "--out", tmp_path / "emb", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    r = run_cli("scan", tmp_path / "emb", "--out", tmp_path / "scan", "--record", tmp_path / "probe", "-k", "5")
    assert r.returncode == 0, r.stderr
    assert f"stability: {n} of {n} samples have a record" in r.stdout
    assert "poisoned share: " in r.stdout and "poison ranked among clean rows is neither in it" in r.stdout
    scores = pd.read_parquet(tmp_path / "scan" / "scores")
    assert scores["perturbation_score"].notna().all()
    run = json.loads((tmp_path / "scan" / "run.json").read_text())
    assert run["default_detector"] == "perturbation" and run["stability"]["n_rows_without_record"] == 0
    r = run_cli("filter", manifest, tmp_path / "scan", "--out", tmp_path / "kept", "--top", "3")
    assert r.returncode == 0, r.stderr
    assert "removed 3 of" in r.stdout and "by perturbation" in r.stdout  # the scan's default ranking
    removed = pd.read_csv(tmp_path / "kept" / "removed.csv")
    assert sorted(removed["id"].astype(str)) == sorted(scores["id"][scores["perturbation_rank"] <= 3].astype(str))
    assert removed["perturbation_score"].min() >= scores["perturbation_score"].quantile(0.9)


def test_a_missing_model_or_manifest_is_a_one_line_error(tiny_world, tmp_path):
    r = run_cli("probe", tmp_path / "nomodel", tiny_world / "train" / "manifest.parquet", "--out", tmp_path / "o")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    save_model(create_model("tiny-rn", seed=0), tmp_path / "model")
    r = run_cli("probe", tmp_path / "model", tmp_path / "none.parquet", "--out", tmp_path / "o")
    assert_one_line_error(r, "none.parquet")
