import struct
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clipguard.data import ImageCaptionDataset, read_manifest
from clipguard.data.dataset import collate_skipping, load_rgb, record_errors, skip_reason
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


def test_every_image_mode_loads_as_upright_8_bit_rgb(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.new("RGB", (16, 32), (200, 200, 0)).save(tmp_path / "rot.jpg", exif=exif)
    assert load_rgb(tmp_path / "rot.jpg").size == (32, 16)
    Image.fromarray(np.full((4, 4), 40000, np.uint16)).save(tmp_path / "deep.png")  # 16-bit grey
    assert np.asarray(load_rgb(tmp_path / "deep.png"))[0, 0].tolist() == [156, 156, 156]  # 40000 >> 8, not 255
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    r, g, b = np.asarray(load_rgb(tmp_path / "cmyk.jpg"))[0, 0].tolist()
    assert r > 200 and g < 60 and b < 60  # red
    for mode, value in (("L", 7), ("LA", (7, 9)), ("RGBA", (1, 2, 3, 4)), ("P", 3)):
        Image.new(mode, (3, 3), value).save(tmp_path / f"{mode}.png")
        im = load_rgb(tmp_path / f"{mode}.png")
        assert im.mode == "RGB" and im.size == (3, 3), mode


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path):
    for side, error in ((40_000, Image.DecompressionBombError), (10_000, Image.DecompressionBombWarning)):
        header = _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
        (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + header + _chunk(b"IDAT", zlib.compress(b"\0"))
                                            + _chunk(b"IEND", b""))
        with pytest.raises(error) as e:
            load_rgb(tmp_path / "bomb.png")
        assert skip_reason(e.value).startswith("image too large: ")
