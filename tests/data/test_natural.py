"""Planting a natural backdoor and mismatched pairs (data/natural.py)."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clipguard.data.manifest import read_manifest, write_manifest
from clipguard.data.natural import draw_placeholder, plant_natural
from clipguard.errors import ConfigError
from tests_helpers import assert_one_line_error, run_cli


def test_plant_writes_ground_truth_and_keeps_the_size(tiny_world, tmp_path):
    man = read_manifest(tiny_world / "train" / "manifest.parquet")
    res = plant_natural(man, tmp_path / "p", natural_share=0.05, swapped_share=0.05, placeholder_share=0.02,
                        progress=False)
    out = read_manifest(res.manifest_path)
    assert len(out) == len(man) == 600
    assert out.df["plant"].value_counts().to_dict() == {"": 528, "natural": 30, "swapped": 30, "placeholder": 12}
    nat = out.df[out.df["natural"]]
    assert (nat["caption"] == "a birthday cake with candles").all() and not out.df.loc[nat.index, "mismatched"].any()
    sw = out.df[out.df["plant"] == "swapped"]
    assert (sw["caption"] != sw["original_caption"]).all()
    donors = man.df.set_index("id").loc[sw["caption_from"]]
    assert (donors["caption"].to_numpy() == sw["caption"].to_numpy()).all()
    assert (donors["shapes"].to_numpy() != sw["shapes"].to_numpy()).all()  # the caption describes other shapes
    ph = out.df[out.df["plant"] == "placeholder"]
    assert (ph["caption"] == ph["original_caption"]).all() and ph["image"].nunique() == 1
    # motif copies are near-identical but not equal; every path resolves
    arrays = [np.asarray(Image.open(out.image_path(i)), dtype=float) for i in nat.index[:5]]
    clean = [np.asarray(Image.open(man.image_path(i)), dtype=float) for i in range(20)]
    clean_gap = np.mean([np.abs(clean[i] - clean[i + 1]).mean() for i in range(19)])
    motif_gap = np.mean([np.abs(arrays[i] - arrays[i + 1]).mean() for i in range(4)])
    assert 0 < motif_gap < 0.6 * clean_gap, (motif_gap, clean_gap)
    assert all(out.image_path(i).is_file() for i in range(len(out)))
    assert np.array_equal(np.asarray(Image.open(out.image_path(int(ph.index[0])))), np.asarray(draw_placeholder(32)))
    assert not (tmp_path / "p" / "skipped.csv").exists()  # the reader left no line out: no list


def test_lines_left_out_when_read_are_listed_in_skipped_csv(tiny_world, tmp_path):
    """A CSV line with more fields than the header is left out by the reader: `clipguard plant` lists it in
    skipped.csv (row -1, its id, the reason) and plant.json counts it."""
    m = read_manifest(tiny_world / "train" / "manifest.parquet")
    df = m.df.iloc[:100].copy()
    df["image"] = [str(m.root / p) for p in df["image"]]  # absolute: the manifest lives elsewhere
    path = write_manifest(df, tmp_path / "data" / "manifest.csv", sources=[m.path])
    with open(path, "a") as f:  # two lines with one field too many, e.g. an unquoted comma in a caption
        f.write("\n".join(",".join([ident] + ["x"] * len(df.columns)) for ident in ("bad-a", "bad-b")) + "\n")
    r = run_cli("plant", path, "--out", tmp_path / "p", "--natural-share", "0.05")
    assert r.returncode == 0, r.stderr
    skipped = pd.read_csv(tmp_path / "p" / "skipped.csv", dtype={"id": str})
    assert skipped.columns.tolist() == ["row", "id", "reason"]
    assert skipped[["row", "id"]].values.tolist() == [[-1, "bad-a"], [-1, "bad-b"]]
    assert all(why.startswith("too many fields: line ") for why in skipped["reason"])
    spec = json.loads((tmp_path / "p" / "plant.json").read_text())
    assert spec["rows_skipped_when_read"] == len(skipped) == 2 and spec["read_skip_counts"] == {"too many fields": 2}
    assert spec["n_total"] == 100 and len(read_manifest(tmp_path / "p" / "manifest.parquet")) == 100


def test_plant_is_deterministic_per_seed(tiny_world, tmp_path):
    man = read_manifest(tiny_world / "train" / "manifest.parquet")
    a = plant_natural(man, tmp_path / "a", seed=1, progress=False, natural_share=0.02)
    b = plant_natural(man, tmp_path / "b", seed=1, progress=False, natural_share=0.02)
    c = plant_natural(man, tmp_path / "c", seed=2, progress=False, natural_share=0.02)
    assert a.ids == b.ids and a.ids != c.ids
    first = a.ids["natural"][0]
    assert (tmp_path / "a" / "images" / f"{first}.png").read_bytes() == (tmp_path / "b" / "images" / f"{first}.png").read_bytes()
    pd.testing.assert_frame_equal(pd.read_parquet(a.manifest_path).drop(columns="image"),
                                  pd.read_parquet(b.manifest_path).drop(columns="image"))


def test_bad_shares_are_one_line(tiny_world, tmp_path):
    man = read_manifest(tiny_world / "train" / "manifest.parquet")
    with pytest.raises(ConfigError, match="leave some rows clean"):
        plant_natural(man, tmp_path / "x", natural_share=0.5, swapped_share=0.5, progress=False)
    with pytest.raises(ConfigError, match="caption is empty"):
        plant_natural(man, tmp_path / "x", caption=" ", progress=False)
    r = run_cli("plant", tiny_world / "train" / "manifest.parquet", "--out", tmp_path / "y", "--natural-share", "1.5")
    assert_one_line_error(r, "natural_share")
