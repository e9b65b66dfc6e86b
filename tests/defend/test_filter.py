"""filter_manifest / `clipguard filter`: the scan's suspects leave the manifest, nothing else does."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from clipguard.data import read_manifest, write_manifest
from clipguard.defend import filter_manifest
from clipguard.detect import Scan
from clipguard.detect.share import null_pvalues, precision_cut
from clipguard.errors import ConfigError
from tests_helpers import run_cli


@pytest.fixture
def scanned(tiny_world, tmp_path):
    """A 200-row manifest (rows 0..9 poisoned), its scan (3 rows unscored) with the poison isolated."""
    m = read_manifest(tiny_world / "train" / "manifest.parquet")
    df = m.df.iloc[:200].copy()
    df["image"] = [str(m.root / p) for p in df["image"]]  # absolute: the manifest lives elsewhere
    df["poisoned"] = np.arange(200) < 10
    path = write_manifest(df, tmp_path / "data" / "manifest.csv", sources=[m.path])  # its images: m's root
    x = 0.3 * np.random.default_rng(0).normal(size=(197, 16)).astype(np.float32)
    x[10:, 15] += 3.0  # clean rows: a cone around e_15 (cosine geometry) ...
    x[:10] += 3.0 * np.eye(16, dtype=np.float32)[:10]  # ... poisoned rows: each alone on its own axis
    scan = Scan(x, ids=df["id"].iloc[:197], ground_truth=df["poisoned"].iloc[:197])
    scan.find_suspects(["kdist"], k=5, reference="global", suspect_share=0.05).save(tmp_path / "scan")
    return path, tmp_path / "scan", df


def test_suspects_rule_removes_the_scan_suspects_and_keeps_the_rest(scanned, tmp_path):
    path, scan_dir, df = scanned
    res = filter_manifest(path, scan_dir, tmp_path / "clean", detector="kdist", share="suspects")
    n_flag = math.ceil(0.05 * 197)  # the scan's budget
    assert (res.n_rows, res.n_scored, res.n_removed, res.n_unscored) == (200, 197, n_flag, 3)
    kept = read_manifest(tmp_path / "clean" / "manifest.csv")
    assert len(kept) == 200 - n_flag and res.manifest_path.suffix == ".csv"
    removed = pd.read_csv(tmp_path / "clean" / "removed.csv", dtype={"id": str})
    assert removed["kdist_rank"].tolist() == list(range(1, n_flag + 1))
    assert set(removed["id"]).isdisjoint(kept.df["id"]) and removed["poisoned"].all()
    assert all(kept.image_path(i).is_file() for i in range(len(kept)))  # paths still resolve
    run = json.loads((tmp_path / "clean" / "run.json").read_text())
    assert run["n_removed"] == n_flag and run["poisoned_precision"] == 1.0
    assert run["poisoned_recall"] == res.poisoned_recall == n_flag / 10
    assert run["cut"]["rule"] == "suspects" and "share_estimate" not in run
    assert run["rows_skipped_when_read"] == 0 and not (tmp_path / "clean" / "skipped.csv").exists()


def test_lines_left_out_when_read_are_listed_in_skipped_csv(scanned, tmp_path):
    """A CSV line with more fields than the header is left out by the reader: `clipguard filter` lists it in
    skipped.csv (row -1, its id, the reason) and run.json counts it; it is neither kept nor removed."""
    path, scan_dir, df = scanned
    with open(path, "a") as f:  # one field too many, e.g. an unquoted comma in a caption
        f.write(",".join(["bad-line"] + ["x"] * len(df.columns)) + "\n")
    r = run_cli("filter", path, scan_dir, "--out", tmp_path / "clean", "--detector", "kdist", "--top", "10")
    assert r.returncode == 0, r.stderr
    skipped = pd.read_csv(tmp_path / "clean" / "skipped.csv", dtype={"id": str})
    assert skipped.columns.tolist() == ["row", "id", "reason"]
    assert skipped[["row", "id"]].values.tolist() == [[-1, "bad-line"]]
    assert skipped["reason"][0].startswith("too many fields: line ")
    run = json.loads((tmp_path / "clean" / "run.json").read_text())
    assert run["rows_skipped_when_read"] == len(skipped) == 1 and run["read_skip_counts"] == {"too many fields": 1}
    assert (run["n_rows"], run["n_removed"], run["n_kept"]) == (200, 10, 190)
    removed = pd.read_csv(tmp_path / "clean" / "removed.csv", dtype={"id": str})
    assert "bad-line" not in set(read_manifest(tmp_path / "clean" / "manifest.csv").df["id"]) | set(removed["id"])


def test_default_cuts_at_the_estimated_share_and_records_why(scanned, tmp_path):
    """``share="auto"``: as many rows as the estimate (no ground truth used); run.json says so."""
    path, scan_dir, _ = scanned
    res = filter_manifest(path, scan_dir, tmp_path / "auto", detector="kdist")
    est = res.share_estimate
    scores = Scan.load(scan_dir).scores["kdist_score"].to_numpy()
    assert res.rule == "auto" and est is not None and res.n_removed == precision_cut(scores, est, 0.5)
    assert 10 <= res.n_removed <= 20 and res.poisoned_recall == 1.0 and res.poisoned_precision >= 0.5
    assert est.low <= 10 / 197 <= est.high
    exact = filter_manifest(path, scan_dir, tmp_path / "est", detector="kdist", share="estimate")
    assert exact.rule == "estimate" and exact.n_removed == est.n_estimated
    run = json.loads((tmp_path / "auto" / "run.json").read_text())
    assert run["cut"] == {"rule": "auto", "n_removed": res.n_removed, "reason": res.reason}
    assert run["share_estimate"]["n_estimated"] == est.n_estimated and "expected precision is >= 0.5" in res.reason


def test_fdr_cut_is_benjamini_hochberg_on_the_null_pvalues(scanned, tmp_path):
    path, scan_dir, _ = scanned
    res = filter_manifest(path, scan_dir, tmp_path / "fdr", detector="kdist", fdr=0.1)
    scores = Scan.load(scan_dir).scores["kdist_score"].to_numpy()
    p = np.sort(null_pvalues(scores, res.share_estimate))
    passing = [k for k in range(1, len(p) + 1) if p[k - 1] <= 0.1 * k / len(p)]
    assert res.rule == "fdr" and res.n_removed == (max(passing) if passing else 0)
    assert "Benjamini-Hochberg at FDR 0.1" in res.reason


def test_envelope_null_cuts_on_its_own_pvalues_and_is_recorded(scanned, tmp_path):
    """``null="envelope"``: the estimate, the auto cut and the BH cut use the IFR envelope; run.json records it."""
    path, scan_dir, _ = scanned
    scores = Scan.load(scan_dir).scores["kdist_score"].to_numpy()
    res = filter_manifest(path, scan_dir, tmp_path / "env", detector="kdist", null="envelope")
    est = res.share_estimate
    assert est.null["family"] == "envelope" and res.n_removed == precision_cut(scores, est, 0.5)
    assert res.poisoned_recall == 1.0 and res.poisoned_precision >= 0.5  # the ten isolated rows, and few others
    run = json.loads((tmp_path / "env" / "run.json").read_text())
    assert run["config"]["null"] == "envelope" and run["share_estimate"]["null"]["family"] == "envelope"
    fdr = filter_manifest(path, scan_dir, tmp_path / "fdr", detector="kdist", fdr=0.1, null="envelope")
    p = np.sort(null_pvalues(scores, fdr.share_estimate))
    passing = [k for k in range(1, len(p) + 1) if p[k - 1] <= 0.1 * k / len(p)]
    assert fdr.n_removed == (max(passing) if passing else 0) and "IFR envelope" in fdr.reason


def test_share_and_top(scanned, tmp_path):
    path, scan_dir, _ = scanned
    res = filter_manifest(path, scan_dir, tmp_path / "a", detector="kdist", top=10)
    assert res.n_removed == 10 and res.poisoned_recall == 1.0 and res.poisoned_precision == 1.0
    res = filter_manifest(path, scan_dir, tmp_path / "b", detector="kdist", share=0.1)
    assert res.n_removed == math.ceil(0.1 * 197)
    assert filter_manifest(path, scan_dir, tmp_path / "c", detector="kdist", top=0).n_removed == 0


def test_relative_image_paths_are_rebased(tiny_world, tmp_path):
    m = read_manifest(tiny_world / "train" / "manifest.parquet")  # relative image paths
    x = np.random.default_rng(0).normal(size=(len(m), 8)).astype(np.float32)
    Scan(x, ids=m.df["id"]).find_suspects(["kdist"], k=5).save(tmp_path / "scan")
    filter_manifest(m.path, tmp_path / "scan", tmp_path / "deep" / "clean", detector="kdist", top=3)
    kept = read_manifest(tmp_path / "deep" / "clean" / "manifest.parquet")
    assert not kept.df["image"].iat[0].startswith("/")
    assert all(kept.image_path(i).is_file() for i in range(0, len(kept), 50))


def test_bad_requests_are_clear_errors(scanned, tmp_path, tiny_world):
    path, scan_dir, df = scanned
    with pytest.raises(ConfigError, match="give one of --share, --top, --fdr, not --share and --top"):
        filter_manifest(path, scan_dir, tmp_path / "x", detector="kdist", share=0.1, top=3)
    with pytest.raises(ConfigError, match="not --top and --fdr"):
        filter_manifest(path, scan_dir, tmp_path / "x", detector="kdist", top=3, fdr=0.1)
    with pytest.raises(ConfigError, match="'auto', 'estimate' or 'suspects'"):
        filter_manifest(path, scan_dir, tmp_path / "x", detector="kdist", share="most")
    with pytest.raises(ConfigError, match="choose one of: kdist"):
        filter_manifest(path, scan_dir, tmp_path / "x", detector="dao")
    with pytest.raises(ConfigError, match=r"share must be a number in \(0, 1\]"):
        filter_manifest(path, scan_dir, tmp_path / "x", detector="kdist", share=1.5)
    with pytest.raises(ConfigError, match="no scores"):
        filter_manifest(path, tmp_path, tmp_path / "x", detector="kdist")
    with pytest.raises(ConfigError, match="unknown null 'pareto'; choose one of: envelope, gamma"):
        filter_manifest(path, scan_dir, tmp_path / "x", detector="kdist", null="pareto")
    other = write_manifest(df.assign(id=[f"other-{i}" for i in range(200)]), tmp_path / "other.csv")
    with pytest.raises(ConfigError, match="197 of 197 scored ids are not in"):
        filter_manifest(other, scan_dir, tmp_path / "x", detector="kdist")


def test_the_scan_is_read_with_scan_load(scanned, tmp_path, monkeypatch):
    path, scan_dir, _ = scanned
    calls = []
    load = Scan.load.__func__

    def spy(cls, folder):
        calls.append(folder)
        return load(cls, folder)

    monkeypatch.setattr(Scan, "load", classmethod(spy))
    res = filter_manifest(path, scan_dir, tmp_path / "clean", detector="kdist", top=4)
    assert calls == [scan_dir] and res.n_removed == 4
    # a stale score file of an earlier scan in the folder is not read (run.json says which are)
    stale = pd.read_parquet(scan_dir / "scores" / "scores_0.parquet").assign(id="stale")
    stale.to_parquet(scan_dir / "scores" / "scores_5.parquet")
    assert filter_manifest(path, scan_dir, tmp_path / "again", detector="kdist", top=4).n_scored == 197
    (scan_dir / "run.json").unlink()
    with pytest.raises(ConfigError, match="no run.json"):
        filter_manifest(path, scan_dir, tmp_path / "x", detector="kdist")


def test_cli(scanned, tmp_path):
    path, scan_dir, _ = scanned
    r = run_cli("filter", path, scan_dir, "--out", tmp_path / "clean", "--detector", "kdist", "--top", "10")
    assert r.returncode == 0, r.stderr
    assert "removed 10 of 200 rows by kdist, kept 190 (3 unscored rows kept)" in r.stdout
    assert "1.000 of the poisoned rows removed; precision 1.000" in r.stdout
    r = run_cli("filter", path, scan_dir, "--out", tmp_path / "auto", "--detector", "kdist")  # --share auto
    assert r.returncode == 0, r.stderr
    assert "cut: the largest top cut whose expected precision is >= 0.5" in r.stdout
    r = run_cli("filter", path, scan_dir, "--out", tmp_path / "env", "--detector", "kdist", "--null", "envelope")
    assert r.returncode == 0, r.stderr
    assert "IFR envelope" in r.stdout and json.loads((tmp_path / "env" / "run.json").read_text())["config"]["null"] == "envelope"
    r = run_cli("filter", path, scan_dir, "--out", tmp_path / "x", "--detector", "nope")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "choose one of" in r.stderr


def test_ids_to_remove_parquet_and_datacomp_uid_list(scanned, tmp_path):
    path, scan_dir, _ = scanned
    filter_manifest(path, scan_dir, tmp_path / "clean", detector="kdist")
    removed = pd.read_csv(tmp_path / "clean" / "removed.csv", dtype={"id": str})
    ids = pd.read_parquet(tmp_path / "clean" / "remove_ids.parquet")
    assert ids["id"].astype(str).tolist() == removed["id"].tolist() and list(ids.columns) == [
        "id", "kdist_rank", "kdist_score"]
    assert not (tmp_path / "clean" / "keep_uids.npy").exists()  # these ids are not DataComp uids


def test_datacomp_uids_are_sorted_u8_pairs():
    from clipguard.defend.filter import datacomp_uids

    uids = pd.Series(["ffffffffffffffff0000000000000001", "00000000000000010000000000000002",
                      "00000000000000010000000000000001"])
    got = datacomp_uids(uids)
    assert got.dtype == np.dtype("u8,u8")
    assert got.tolist() == [(1, 1), (1, 2), (2**64 - 1, 1)]
    assert datacomp_uids(pd.Series(["abc"])) is None


def test_auto_without_ground_truth_runs_and_records_its_reason(tiny_world, tmp_path):
    """No ``poisoned`` column anywhere: the estimate needs none; the cut and its reason are recorded."""
    m = read_manifest(tiny_world / "train" / "manifest.parquet")
    assert "poisoned" not in m.df.columns
    x = 0.3 * np.random.default_rng(1).normal(size=(len(m), 16)).astype(np.float32)
    x[:, 15] += 3.0
    Scan(x, ids=m.df["id"]).find_suspects(["kdist"], k=5, reference="global").save(tmp_path / "scan")
    res = filter_manifest(m.path, tmp_path / "scan", tmp_path / "clean", detector="kdist")
    run = json.loads((tmp_path / "clean" / "run.json").read_text())
    assert res.rule == "auto" and res.poisoned_recall is None and run["cut"]["reason"] == res.reason
    assert res.n_removed <= 0.005 * len(m) + 1  # one Gaussian cloud: (almost) nothing
    assert ("nothing removed" in res.reason) == (res.share_estimate.share == 0)
    assert res.share_estimate.share == 0  # measured: this seeded cloud shows no excess
    assert "kdist_score separates" in res.reason and "--share F or --top N" in res.reason  # how to cut anyway
