"""`clipguard discover` on a scan of a planted world (outputs, ground-truth shares, errors)."""
import json
import shutil

import pandas as pd

from clipguard.analyze import DiscoverConfig
from clipguard.data.manifest import read_manifest
from clipguard.data.natural import plant_natural
from clipguard.models import create_model, save_model
from clipguard.pipeline import discover_scan, scan_dataset
from tests_helpers import assert_one_line_error, run_cli


def run_singletons(tmp_path):
    return json.loads((tmp_path / "scan" / "discover" / "run.json").read_text())["n_singletons"]


def test_discover_reads_a_scan_and_writes_its_clusters(tiny_world, tmp_path):
    planted = plant_natural(read_manifest(tiny_world / "train" / "manifest.parquet"), tmp_path / "p",
                            natural_share=0.05, placeholder_share=0.03, swapped_share=0.02, progress=False)
    save_model(create_model("tiny-vit-p8", seed=0), tmp_path / "m")
    scan_dataset(tmp_path / "m", tmp_path / "p" / "manifest.parquet", tmp_path / "scan", progress=False, k=8)
    r = run_cli("discover", tmp_path / "scan", "--top", "0.2")
    assert r.returncode == 0, r.stderr
    assert "planted_share" in r.stdout and "among the top 120 samples" in r.stdout
    table = pd.read_parquet(tmp_path / "scan" / "discover" / "clusters.parquet")
    assert {"rank", "kind", "name", "size", "share", "mean_score", "member_ids", "planted_share",
            "mismatched_share"} <= set(table.columns)
    # the ground-truth shares are those of plant.json's ids (an untrained model clusters poorly: no claim on quality)
    natural, mismatched = set(planted.ids["natural"]), set(planted.ids["swapped"] + planted.ids["placeholder"])
    for _, row in table.iterrows():
        assert row["planted_share"] == sum(i in natural for i in row["member_ids"]) / row["size"]
        assert row["mismatched_share"] == sum(i in mismatched for i in row["member_ids"]) / row["size"]
    from_top = table[table["by"] != "caption"]
    assert from_top["size"].sum() + run_singletons(tmp_path) <= 120  # the top clusters a repeated caption covers go
    assert (table.loc[table["by"] == "caption", "caption_agreement"] == 1.0).all()
    run = json.loads((tmp_path / "scan" / "discover" / "run.json").read_text())
    assert run["n_singletons"] == run_singletons(tmp_path)
    assert run["command"] == "discover" and run["n_clusters"] == len(table) and run["n_top"] == 120
    again = discover_scan(tmp_path / "scan", tmp_path / "again", config=DiscoverConfig(top=0.2))
    pd.testing.assert_frame_equal(again.reset_index(drop=True), table, check_dtype=False)


def test_discover_bad_input_is_one_line(tiny_world, tmp_path):
    r = run_cli("discover", tmp_path / "nothing")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    save_model(create_model("tiny-vit-p8", seed=0), tmp_path / "m")
    scan_dataset(tmp_path / "m", tiny_world / "test" / "manifest.parquet", tmp_path / "scan", progress=False, k=8)
    shutil.rmtree(tmp_path / "scan" / "embeddings")
    r = run_cli("discover", tmp_path / "scan")
    assert_one_line_error(r, "was not found", "--embeddings")
    r = run_cli("discover", tmp_path / "scan", "--detector", "nope")
    assert_one_line_error(r, "no scores of detector 'nope'")
