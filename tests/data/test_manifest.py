import pandas as pd
import pytest

from clipguard.data.manifest import read_manifest, write_manifest
from clipguard.errors import ManifestError


@pytest.mark.parametrize("ext", [".csv", ".parquet", ".jsonl"])
def test_round_trip(tmp_path, ext):
    df = pd.DataFrame({"id": ["a", "b"], "image": ["x.png", "y.png"], "caption": ["one", "two"],
                       "poisoned": [False, True]})
    path = write_manifest(df, tmp_path / f"m{ext}")
    m = read_manifest(path)
    assert m.df["id"].tolist() == ["a", "b"]
    assert m.df["caption"].tolist() == ["one", "two"]
    assert m.df["poisoned"].astype(bool).tolist() == [False, True]
    assert m.image_path(1) == tmp_path / "y.png"
    assert m.has_ground_truth


def test_wrong_columns_names_expected(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("url,text\nx.png,hello\n")
    with pytest.raises(ManifestError) as e:
        read_manifest(p)
    msg = str(e.value)
    assert "id" in msg and "image" in msg and "caption" in msg and "found: url, text" in msg


def test_duplicate_ids_refused(tmp_path):
    p = tmp_path / "dup.csv"
    p.write_text("id,image,caption\n1,a.png,x\n1,b.png,y\n")
    with pytest.raises(ManifestError, match="not unique"):
        read_manifest(p)


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(ManifestError, match="unknown manifest format"):
        read_manifest(tmp_path / "m.xlsx").df  # noqa: B018
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "none.csv")


def test_folder_resolves_to_manifest(tmp_path):
    df = pd.DataFrame({"id": ["a"], "image": ["x.png"], "caption": ["c"]})
    write_manifest(df, tmp_path / "manifest.parquet")
    assert read_manifest(tmp_path).path == tmp_path / "manifest.parquet"
