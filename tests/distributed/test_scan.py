"""The sharded scan: the same score files as the single-process scan, on Ray too; resumable after
kill -9 with byte-identical scores; failing parts named; inputs read from URLs and NeMo Parquet."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from clipguard.detect import run_scan
from clipguard.distributed import scan_sharded
from clipguard.errors import EmbeddingError
from clipguard.io.layout import list_shards

from tests_helpers import write_folder


def _score_bytes(out):
    return {i: p.read_bytes() for i, p in list_shards(out, "scores").items()}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("emb") / "emb")


@pytest.mark.parametrize("mode,opts", [
    ("batch", {"batch_size": 256}),
    ("multi_reference", {"reference_size": 400, "n_references": 2, "index": "flat"}),
    ("auto", {}),  # 2,400 rows: global
])
def test_same_score_files_as_the_single_process_scan(folder, tmp_path, mode, opts):
    single = run_scan(folder, tmp_path / "single", reference=mode, k=8, **opts)
    sharded = scan_sharded(folder, tmp_path / "sharded", reference=mode, k=8, part_rows=700, **opts)
    assert sharded.detectors == single.detectors and "fused" in sharded.detectors
    assert _score_bytes(tmp_path / "sharded") == _score_bytes(tmp_path / "single")
    assert sharded.metrics == single.metrics
    run = json.loads((tmp_path / "sharded" / "run.json").read_text())
    dist = run["distributed"]
    assert dist["distributor"] == "sequential" and dist["tasks_failed"] == {}
    assert dist["tasks_run"] == dist["n_parts"] >= (1 if single.info["reference_plan"]["mode"] == "global" else 3)
    assert {"read", "normalize", "knn", "score", "write"} <= set(dist["stage_seconds"])
    assert run["reference_plan"] == json.loads((tmp_path / "single" / "run.json").read_text())["reference_plan"]
    assert not (tmp_path / "sharded" / "parts").exists()  # removed after a complete scan


def test_records_give_the_single_process_scores(folder, tmp_path):
    from clipguard.embed import write_stability

    ids = [f"s{j:06d}" for j in range(2400)]
    rng = np.random.default_rng(1)
    write_stability(pd.DataFrame({"id": ids[5:], "row": range(5, 2400), "noise_stability": rng.uniform(0.5, 1, 2395)}),
                    tmp_path / "probe")
    (tmp_path / "model").mkdir()
    pd.DataFrame({"id": ids, "row": range(2400), "epoch": 1, "cosine": rng.normal(size=2400)}).to_parquet(
        tmp_path / "model" / "dynamics.parquet", index=False)
    opts = dict(reference="batch", batch_size=256, k=8, detectors=["dao", "perturbation", "learning_speed", "fused"])
    single = run_scan(folder, tmp_path / "single", records=[tmp_path / "probe"], dynamics=tmp_path / "model", **opts)
    sharded = scan_sharded(folder, tmp_path / "sharded", records=[tmp_path / "probe"], dynamics=tmp_path / "model",
                           part_rows=700, **opts)
    assert _score_bytes(tmp_path / "sharded") == _score_bytes(tmp_path / "single")
    assert sharded.records_info == single.records_info and set(single.records_info) == {"dynamics", "stability"}
    assert sharded.records_info["stability"]["n_rows_without_record"] == 5
    assert sharded.dynamics_info == single.records_info["dynamics"]
    run = json.loads(sharded.run_json.read_text())
    assert run["stability"] == single.records_info["stability"] and run["dynamics"] == single.dynamics_info


def test_ray_gives_the_same_files_as_sequential(folder, tmp_path, ray_cluster, monkeypatch):
    opts = dict(reference="batch", batch_size=256, k=8, part_rows=512)
    scan_sharded(folder, tmp_path / "seq", **opts)
    monkeypatch.chdir(folder.parent)  # a relative folder: the Ray workers run in another directory
    res = scan_sharded(folder.name, tmp_path / "ray", distributor="ray", **opts)
    assert _score_bytes(tmp_path / "ray") == _score_bytes(tmp_path / "seq")
    dist = json.loads(res.run_json.read_text())["distributed"]
    assert dist["distributor"] == "ray" and dist["node_ip"] == "127.0.0.1" and dist["tasks_run"] == 5


_KILL_SCRIPT = """
import sys
from clipguard.distributed import scan_sharded
scan_sharded(sys.argv[1], sys.argv[2], reference="batch", batch_size=1024, k=8, part_rows=1024,
             detectors=["dao", "density_anomaly", "fused"])
"""


def test_kill_9_then_rerun_gives_byte_identical_scores(tmp_path):
    emb = write_folder(tmp_path / "emb", n=120_000, d=96, shards=4, text=False)
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(emb), str(out)], env=env)
    parts = out / "parts"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if parts.is_dir() and len(list(parts.glob("part_*.npz"))) >= 3:
            break
        time.sleep(0.002)
    assert proc.poll() is None, "the scan ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = len(list(parts.glob("part_*.npz")))
    assert 3 <= n_before < 118 and not (out / "scores").exists()
    res = scan_sharded(emb, out, reference="batch", batch_size=1024, k=8, part_rows=1024,
                       detectors=["dao", "density_anomaly", "fused"])
    dist = json.loads(res.run_json.read_text())["distributed"]
    assert dist["tasks_reused"] >= n_before and dist["tasks_run"] + dist["tasks_reused"] == dist["n_parts"]
    full = scan_sharded(emb, tmp_path / "whole", reference="batch", batch_size=1024, k=8, part_rows=1024,
                        detectors=["dao", "density_anomaly", "fused"])
    assert _score_bytes(out) == _score_bytes(full.out_dir)


def test_a_part_that_keeps_failing_is_named_and_the_rest_kept(folder, tmp_path, monkeypatch):
    from clipguard.distributed import scan as scan_module

    real = scan_module.score_part

    def flaky(x, spec, *args, **kwargs):
        if spec.index == 2:
            raise OSError("disk full while reading")
        return real(x, spec, *args, **kwargs)

    monkeypatch.setattr(scan_module, "score_part", flaky)
    opts = dict(reference="batch", batch_size=256, k=8, part_rows=512)
    with pytest.raises(Exception) as e:
        scan_sharded(folder, tmp_path / "out", retries=1, **opts)
    assert type(e.value).__name__ == "TasksFailedError"
    assert "1 part(s) failed after every retry: part 2: OSError: disk full while reading" in str(e.value)
    assert sorted(p.name for p in (tmp_path / "out" / "parts").glob("part_*.npz")) == [
        f"part_{j:05d}.npz" for j in (0, 1, 3, 4)]
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["distributed"]["tasks_failed"] == {"2": "OSError: disk full while reading"}
    monkeypatch.setattr(scan_module, "score_part", real)  # the fault is gone: the rerun finishes
    res = scan_sharded(folder, tmp_path / "out", **opts)
    assert json.loads(res.run_json.read_text())["distributed"]["tasks_run"] == 1
    scan_sharded(folder, tmp_path / "clean", **opts)
    assert _score_bytes(tmp_path / "out") == _score_bytes(tmp_path / "clean")


def test_parts_of_another_scan_are_replaced(folder, tmp_path, caplog):
    opts = dict(reference="batch", batch_size=256, k=8, part_rows=512, keep_parts=True)
    scan_sharded(folder, tmp_path / "out", **opts)
    res = scan_sharded(folder, tmp_path / "out", **{**opts, "k": 6})
    assert "held the parts of another run (different config)" in caplog.text
    assert json.loads(res.run_json.read_text())["distributed"]["tasks_reused"] == 0


def test_nan_row_is_an_input_error_naming_the_file(tmp_path):
    emb = write_folder(tmp_path / "emb", nan_row=1000)
    with pytest.raises(EmbeddingError, match=r"img_emb_1\.npy row 200 \(global row 1000\)"):
        scan_sharded(emb, tmp_path / "out", reference="batch", batch_size=256, k=8)


def test_an_ivf_reference_gives_the_single_process_scores(folder, tmp_path):
    opts = dict(reference="reference", reference_size=600, index="ivf", k=8, n_recall=200)
    single = run_scan(folder, tmp_path / "single", **opts)
    sharded = scan_sharded(folder, tmp_path / "sharded", part_rows=700, **opts)
    assert _score_bytes(tmp_path / "sharded") == _score_bytes(tmp_path / "single")
    assert sharded.info["recall_at_k"] == single.info["recall_at_k"]


def test_memory_url_and_nemo_parquet_inputs(folder, tmp_path):
    import fsspec

    from clipguard.io.reader import load_embedding_folder

    fs = fsspec.filesystem("memory")
    for p in folder.rglob("*"):
        if p.is_file():
            fs.pipe(f"memory://shardscan/{p.relative_to(folder).as_posix()}", p.read_bytes())
    es = load_embedding_folder(folder)
    nemo = tmp_path / "nemo"
    nemo.mkdir()
    for i in range(3):
        sel = es.metadata["shard"].to_numpy() == i
        pd.DataFrame({"id": es.metadata["id"][sel].to_numpy(), "caption": es.metadata["caption"][sel].to_numpy(),
                      "poisoned": es.metadata["poisoned"][sel].to_numpy(),
                      "embedding": list(es.image[sel]), "text_embedding": list(es.text[sel])}
                     ).to_parquet(nemo / f"part_{i}.parquet")
    try:
        opts = dict(reference="batch", batch_size=256, k=8, part_rows=512)
        local = scan_sharded(folder, tmp_path / "local", **opts)
        url = scan_sharded("memory://shardscan", tmp_path / "url", **opts)
        pq = scan_sharded(nemo, tmp_path / "pq", **opts)
        cols = [c for c in local.scores.columns if c.endswith("_score")]
        for res in (url, pq):
            for c in cols:
                np.testing.assert_array_equal(res.scores[c].to_numpy(), local.scores[c].to_numpy())
    finally:
        fs.rm("memory://shardscan", recursive=True)


@pytest.mark.gpu
def test_sharded_scan_on_a_gpu_runs_the_parts_on_the_device(folder, tmp_path):
    opts = dict(reference="batch", batch_size=256, k=8, part_rows=512, detectors=["dao", "lid"])
    cpu = scan_sharded(folder, tmp_path / "cpu", device="cpu", **opts)
    gpu = scan_sharded(folder, tmp_path / "gpu", device="cuda", **opts)
    stages = json.loads(gpu.run_json.read_text())["distributed"]["stage_seconds"]
    assert "normalize" not in stages  # the parts were normalised on the device
    for name in ("dao", "lid"):
        np.testing.assert_allclose(np.log(gpu.scores[f"{name}_score"]), np.log(cpu.scores[f"{name}_score"]),
                                   rtol=1e-4, atol=1e-6)
