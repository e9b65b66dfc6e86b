"""``probe_dataset``: the probe of a whole dataset as a resumable run, part by part, with its record and run.json."""
import json

import numpy as np
import pytest
import torch

from clipguard.data import read_manifest, write_manifest
from clipguard.embed import perturbation_stability, probe_dataset, read_stability
from clipguard.embed.probe import PARTS_DIR
from clipguard.errors import ConfigError
from clipguard.models import create_model


def _manifest(world, tmp_path, n=11):
    df = read_manifest(world / "train" / "manifest.parquet").df.iloc[:n].copy()
    df["image"] = [str(world / "train" / p) for p in df["image"]]
    return read_manifest(write_manifest(df, tmp_path / "m.parquet", sources=[world / "train" / "manifest.parquet"]))


def test_parts_give_the_record_of_one_pass_and_a_rerun_resumes(tiny_world, tmp_path):
    torch.manual_seed(0)
    b, m = create_model("tiny-rn"), _manifest(tiny_world, tmp_path)
    whole, _ = perturbation_stability(b, m, kinds=("noise",), noise_sd=120.0, progress=False)
    res = probe_dataset(b, m, tmp_path / "out", kinds=("noise",), noise_sd=120.0, part_rows=4, progress=False)
    got = read_stability(tmp_path / "out")
    assert res.n_probed == 11 and res.n_skipped == 0 and res.reused_parts == []
    assert got["row"].tolist() == list(range(11)) and got["id"].tolist() == whole["id"].tolist()
    # the copies are seeded by the whole set's row: another row's noise would move these by far more
    gap = np.abs(got["noise_stability"].to_numpy() - whole["noise_stability"].to_numpy()).max()
    spread = np.abs(np.diff(whole["noise_stability"].to_numpy())).min()
    assert gap < 1e-7 < spread / 10, (gap, spread)
    run = json.loads(res.run_json.read_text())
    assert run["command"] == "probe" and run["n_probed"] == 11 and run["config"]["kinds"] == ["noise"]
    assert run["data_fingerprint"] and run["model_trained_on_this_set"] is None  # a fresh model names no set
    (tmp_path / "out" / PARTS_DIR / "part-00001.parquet").unlink()  # as if killed while probing part 1
    again = probe_dataset(b, m, tmp_path / "out", kinds=("noise",), noise_sd=120.0, part_rows=4, progress=False)
    assert again.reused_parts == [0, 2]
    assert np.array_equal(read_stability(tmp_path / "out")["noise_stability"], got["noise_stability"])


def test_other_settings_in_the_same_folder_are_refused(tiny_world, tmp_path):
    b, m = create_model("tiny-rn"), _manifest(tiny_world, tmp_path, n=3)
    probe_dataset(b, m, tmp_path / "out", kinds=("noise",), progress=False)
    with pytest.raises(ConfigError, match="other settings \\(different: noise_sd\\)"):
        probe_dataset(b, m, tmp_path / "out", kinds=("noise",), noise_sd=10.0, progress=False)
    with pytest.raises(ConfigError, match="part_rows"):
        probe_dataset(b, m, tmp_path / "o2", part_rows=0)


def test_skipped_rows_are_counted_with_their_manifest_rows(tmp_path):
    from tests_helpers import make_bad_manifest

    m = read_manifest(make_bad_manifest(tmp_path))
    res = probe_dataset(create_model("tiny-rn"), m, tmp_path / "out", kinds=("noise",), part_rows=2, progress=False)
    assert res.n_probed == 1 and res.n_skipped == 3
    assert res.skip_counts == {"missing image": 1, "empty caption": 1, "unreadable image": 1}
    skipped = (tmp_path / "out" / "skipped.csv").read_text().splitlines()
    assert len(skipped) == 4 and sorted(int(line.split(",")[0]) for line in skipped[1:]) == sorted(
        set(range(4)) - set(read_stability(tmp_path / "out")["row"]))
