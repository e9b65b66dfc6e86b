"""scan_dataset: embed a manifest with a model, then scan the embeddings (ported from tests/detect)."""
import json

import pytest

from clipguard.errors import ConfigError
from clipguard.models import create_model, save_model
from clipguard.pipeline import scan_dataset
from tests_helpers import make_bad_manifest


def test_scan_dataset_embeds_then_scans(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    manifest = make_bad_manifest(data, n_good=40)
    save_model(create_model("tiny-rn"), tmp_path / "model")
    with pytest.raises(ConfigError, match="k must be"):  # checked before embedding
        scan_dataset(tmp_path / "model", manifest, tmp_path / "bad", k=0, progress=False)
    assert not (tmp_path / "bad").exists()
    res = scan_dataset(tmp_path / "model", manifest, tmp_path / "out", k=5, progress=False)
    assert res.emb_dir == tmp_path / "out" / "embeddings"
    assert res.embed.n_embedded == 40 and res.embed.n_skipped == 3
    assert (res.emb_dir / "text_emb" / "text_emb_0.npy").is_file()
    assert len(res.scan.scores) == 40 and "fused" in res.scan.detectors
    assert "clipscore" in res.scan.detectors and res.scan.skipped_detectors == {}
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["config"]["k"] == 5 and run["config"]["emb_dir"] == str(res.emb_dir)
    # resumable: the second run reuses the embedded shard and gives the same scores
    again = scan_dataset(tmp_path / "model", manifest, tmp_path / "out", k=5, progress=False)
    assert again.embed.shards_reused == [0] and again.embed.shards_written == []
    assert again.scan.scores.equals(res.scan.scores)
