"""The PNG heat maps."""
import numpy as np
import pytest
from PIL import Image

from clipguard.analyze import save_heatmap
from clipguard.analyze.heatmap import CELL, MARGIN, TITLE, rate_colour
from clipguard.errors import ConfigError


def test_heatmap_png_cells_follow_the_rates(tmp_path):
    a = np.zeros((3, 4))
    b = np.zeros((3, 4))
    b[2, 1] = 1.0
    path = save_heatmap(tmp_path / "h.png", [("clean", a), ("triggered", b)])
    img = Image.open(path)
    assert img.format == "PNG" and img.height == TITLE + 3 * CELL + 24
    x0 = MARGIN + max(4 * CELL, 260) + 24  # the second panel
    corner = (x0 + 1 * CELL + CELL - 4, TITLE + 2 * CELL + 3)  # inside cell (layer 2, head 1), off the text
    assert img.getpixel(corner) == rate_colour(1.0) == (128, 0, 16)
    assert img.getpixel((MARGIN + CELL - 4, TITLE + 3)) == (255, 255, 255)


def test_heatmap_refuses_mismatched_panels(tmp_path):
    with pytest.raises(ConfigError, match="differ in shape"):
        save_heatmap(tmp_path / "h.png", [("a", np.zeros((2, 2))), ("b", np.zeros((3, 2)))])
