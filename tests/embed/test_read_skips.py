"""The lines a manifest's reader left out are counted once by a sharded embedding (with shard 0), and again
when a finished shard is reused."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
from PIL import Image

from clipguard.data.manifest import read_manifest
from clipguard.embed import embed_dataset
from clipguard.models import create_model


def test_lines_left_out_are_counted_once_over_shards_and_on_resume(tmp_path):
    rows = []
    for i in range(4):
        Image.fromarray(np.full((24, 24, 3), 60 * i, np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"r{i},{i}.png,a photo of shape {i}")
    rows.insert(2, "bad,1.png,a photo, of a comma")
    (tmp_path / "m.csv").write_text("id,image,caption\n" + "\n".join(rows) + "\n")
    bundle, m = create_model("tiny-rn"), read_manifest(tmp_path / "m.csv")
    for _ in range(2):  # the second run reuses every shard
        res = embed_dataset(bundle, m, tmp_path / "emb", shard_size=1, batch_size=2, progress=False, device="cpu")
        assert res.n_embedded == 4 and res.skip_counts == {"too many fields": 1}
    run = json.loads((tmp_path / "emb" / "run.json").read_text())
    assert run["skip_counts"] == {"too many fields": 1} and run["rows_skipped_when_read"] == 1
    lists = {p.name: pd.read_csv(p, dtype={"id": str}) for p in sorted((tmp_path / "emb" / "skipped").glob("*.csv"))}
    assert lists["skipped_0.csv"][["row", "id"]].values.tolist() == [[-1, "bad"]]
    assert all(len(df) == 0 for name, df in lists.items() if name != "skipped_0.csv") and len(lists) == 4
