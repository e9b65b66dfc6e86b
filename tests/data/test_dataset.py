import pandas as pd

from clipguard.data import ImageCaptionDataset, read_manifest
from clipguard.data.dataset import collate_skipping, record_errors
from tests_helpers import make_bad_manifest


def test_bad_rows_are_skipped_and_counted(tmp_path):
    m = read_manifest(make_bad_manifest(tmp_path))
    ds = ImageCaptionDataset(m)
    assert ds.rows == [0, 2]  # missing file and empty caption are caught up front
    items = [ds[j] for j in range(len(ds))]
    batch = collate_skipping(items)
    record_errors(batch, ds)
    assert batch["index"].tolist() == [0]
    counts = ds.skip_log.counts()
    assert counts == {"missing image": 1, "empty caption": 1, "unreadable image": 1}
    ids = sorted(e[1] for e in ds.skip_log.entries)
    assert ids == ["corrupt", "empty", "missing"]
    out = ds.skip_log.save(tmp_path / "skipped.csv")
    assert len(pd.read_csv(out)) == 3
