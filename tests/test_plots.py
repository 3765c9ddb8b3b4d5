"""Figures: the PNG exists, opens, has the size asked for, shows something, and is written atomically."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from labelwise.plots import learning_curves, per_class_ap, rare_classes_from_counts

CURVES = {
    "random": [([100, 200, 300, 400], [0.30, 0.40, 0.47, 0.52]), ([100, 200, 300, 400], [0.28, 0.41, 0.45, 0.55])],
    "hybrid": [([100, 200, 300, 400], [0.30, 0.48, 0.58, 0.63]), ([100, 200, 300, 400], [0.29, 0.46, 0.57, 0.66])],
}
AP = {
    "random": {"fish": 0.8, "jellyfish": 0.7, "penguin": 0.6, "starfish": 0.2, "stingray": 0.25, "puffin": 0.1},
    "hybrid": {"fish": 0.82, "jellyfish": 0.72, "penguin": 0.65, "starfish": 0.4, "stingray": 0.45, "puffin": 0.3},
}
COUNTS = {"fish": 1961, "jellyfish": 385, "penguin": 330, "shark": 259, "puffin": 175, "stingray": 136,
          "starfish": 78}


def open_rgb(path) -> np.ndarray:
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def assert_not_blank(pixels: np.ndarray) -> None:
    # A blank (all-white or single-colour) canvas has one colour; a drawn plot has many and real contrast.
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 20
    assert pixels.std() > 10
    # and the drawing is not just the frame: a good share of pixels is not white
    assert (pixels.min(axis=2) < 200).mean() > 0.01


def test_learning_curves_png_has_the_requested_size_and_content(tmp_path):
    out = tmp_path / "figures" / "learning_curve.png"
    returned = learning_curves(CURVES, out, target=0.535, stopping_marks={"min_gain": 300, "knee": 200})
    assert returned == out and out.is_file()
    pixels = open_rgb(out)
    assert pixels.shape == (500, 800, 3)  # 8 x 5 inches at 100 dpi, not cropped
    assert_not_blank(pixels)
    # the strategy colours are drawn: hybrid's blue line and random's grey dashes
    flat = pixels.reshape(-1, 3).astype(int)
    assert (np.abs(flat - [0x1F, 0x77, 0xB4]).sum(axis=1) < 30).sum() > 100
    assert (np.abs(flat - [0x55, 0x55, 0x55]).sum(axis=1) < 30).sum() > 50
    assert [p.name for p in out.parent.iterdir()] == ["learning_curve.png"]  # no temporary file left behind


def test_learning_curves_custom_size_single_seed_and_std_band(tmp_path):
    out = learning_curves({"entropy": [([50, 100, 150], [0.1, 0.2, 0.25])]}, tmp_path / "lc.png",
                          band="std", figsize=(4, 3), dpi=50)
    assert open_rgb(out).shape == (150, 200, 3)
    with pytest.raises(ValueError):
        learning_curves(CURVES, tmp_path / "bad.png", band="quartiles")


def test_learning_curves_draw_the_full_pool_reference_line(tmp_path):
    # 0.7 is above every curve: the line must widen the y range to stay in view
    reddish = lambda p: int(((p[..., 0] > 170) & (p[..., 1] < 130) & (p[..., 2] < 130)).sum())  # noqa: E731
    without = open_rgb(learning_curves(CURVES, tmp_path / "a.png"))
    with_line = open_rgb(learning_curves(CURVES, tmp_path / "b.png", reference=0.7))
    assert reddish(without) < 20 and reddish(with_line) > 300


def test_learning_curves_default_band_is_the_confidence_interval_of_the_mean(tmp_path):
    # two seeds: the 95% t interval (t = 12.7 with one degree of freedom) is far wider than the min-max band, so the
    # shaded (light) area grows
    ci = open_rgb(learning_curves(CURVES, tmp_path / "ci.png", title=None))
    minmax = open_rgb(learning_curves(CURVES, tmp_path / "mm.png", band="minmax", title=None))
    light_blue = lambda p: int(((p[..., 2] > 200) & (p[..., 0] < 235) & (p[..., 0] > 150)).sum())  # noqa: E731
    assert light_blue(ci) > 1.5 * light_blue(minmax)


def test_learning_curves_overwrites_an_existing_file(tmp_path):
    out = tmp_path / "lc.png"
    out.write_bytes(b"old")
    learning_curves(CURVES, out)
    assert open_rgb(out).shape == (500, 800, 3)


def test_per_class_ap_png_highlights_rare_classes(tmp_path):
    out = per_class_ap(AP, tmp_path / "ap.png", class_counts=COUNTS)
    pixels = open_rgb(out)
    assert pixels.shape == (500, 1000, 3)
    assert_not_blank(pixels)
    # the rare-class shading (red at 8% alpha on white) is present
    flat = pixels.reshape(-1, 3).astype(int)
    shaded = (flat[:, 0] > 240) & (flat[:, 1] < 240) & (flat[:, 1] > 220) & (flat[:, 2] < 240)
    assert shaded.sum() > 1000


def test_per_class_ap_without_counts_or_rare_classes(tmp_path):
    out = per_class_ap({"random": {"a": 0.5, "b": 0.3}}, tmp_path / "ap.png", figsize=(6, 4), dpi=80)
    pixels = open_rgb(out)
    assert pixels.shape == (320, 480, 3)
    assert_not_blank(pixels)


def test_rare_classes_from_counts_picks_the_aquarium_rare_three():
    assert sorted(rare_classes_from_counts(COUNTS)) == ["puffin", "starfish", "stingray"]
    assert rare_classes_from_counts({}) == []
