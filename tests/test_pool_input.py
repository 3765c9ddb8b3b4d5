"""Hostile or odd input to the pool: huge images, label lines Ultralytics accepts, non-finite numbers, huge lines.

Each bad file ends as a quarantine entry (or a per-file ValueError) that names the file and says what to do; nothing
here may stop `init` / `add` half-way with a traceback.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelwise.loop import Workspace
from labelwise.boxes import EDGE_TOLERANCE
from labelwise.pool import ImageFile, Rejected, inspect_image, parse_yolo_label, read_yolo_label
from labelwise.quoting import QUOTE_LIMIT, quote


def _image(path: Path, seed: int, size=(64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG of a few dozen bytes whose header declares width x height greyscale pixels (no pixel data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


# -- 1. decompression bombs -------------------------------------------------------------------------------------------


def test_an_image_over_pillows_pixel_limit_is_quarantined_with_its_pixel_count(tmp_path):
    bomb = _png_header_only(tmp_path / "huge.png", 20000, 10000)  # 200 megapixels, over 2 x MAX_IMAGE_PIXELS
    found = inspect_image(bomb)
    assert isinstance(found, Rejected)
    assert str(bomb) in found.reason
    assert "200,000,000 pixels" in found.reason
    assert "Downscale" in found.reason and "tiles" in found.reason


def test_the_limit_is_pillows_own(tmp_path, monkeypatch):
    path = _image(tmp_path / "a.png", 1)  # 64 x 48 = 3072 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # refused above 2000
    found = inspect_image(path)
    assert isinstance(found, Rejected) and "3,072 pixels" in found.reason and "2,000" in found.reason
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # 1x to 2x: Pillow only warns, the image is fine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        assert isinstance(inspect_image(path), ImageFile)


def test_add_quarantines_a_decompression_bomb_and_goes_on(tmp_path):
    pool = tmp_path / "pool"
    _png_header_only(pool / "a_huge.png", 20000, 10000)
    _image(pool / "b_fine.png", 2)
    ws = Workspace.create(tmp_path / "ws", images=[pool], classes=["x"], model="yolo11n.yaml")
    report = ws.ingest_sources(progress=False)
    assert report.added == 1
    reasons = dict(ws.store.quarantined())
    assert "200,000,000 pixels" in reasons[str(pool / "a_huge.png")]


# -- 2. label lines Ultralytics accepts ----------------------------------------------------------------------------------

POLYGON = "1 0.1 0.2 0.5 0.15 0.6 0.7 0.2 0.65"  # 4 points: box x 0.1..0.6, y 0.15..0.7


def test_a_polygon_line_becomes_its_bounding_box():
    (cls, cx, cy, w, h), = parse_yolo_label(POLYGON + "\n", 2, "labels/x.txt")
    assert cls == 1
    assert (cx, cy, w, h) == pytest.approx((0.35, 0.425, 0.5, 0.55))


def test_boxes_and_polygons_match_what_ultralytics_reads(tmp_path):
    utils = pytest.importorskip("ultralytics.data.utils")
    image = _image(tmp_path / "images" / "a.png", 1)
    for n, text in enumerate([POLYGON + "\n0 0.3 0.3 0.2 0.2 0.25 0.4\n",  # two polygons (3 and 4 points)
                              "0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n"]):
        label = tmp_path / "labels" / f"a{n}.txt"
        label.parent.mkdir(exist_ok=True)
        label.write_text(text)
        lb = utils.verify_image_label((str(image), str(label), "", False, 2, 0, 0, False))[1]
        assert lb is not None, "Ultralytics refused the label file"
        ours = np.array(parse_yolo_label(text, 2, str(label)))
        np.testing.assert_allclose(ours, lb, atol=1e-6)


@pytest.mark.parametrize("text, want", [
    ("0 0.5 0.5 1.000001 0.2", (0, 0.5, 0.5, 1.0, 0.2)),            # edges at -5e-7 and 1 + 5e-7
    ("0 0.0004 0.5 0.001 0.2", (0, 0.00045, 0.5, 0.0009, 0.2)),      # left edge -1e-4: clipped to 0
    ("0 0.9998 0.9998 0.001 0.001", (0, 0.99965, 0.99965, 0.0007, 0.0007)),  # right, bottom edges 1.0003
    ("0 -1e-6 0.2 0.3 0.2 0.3 0.6", (0, 0.15, 0.4, 0.3, 0.4)),      # polygon point a hair left of the image
    ("0 0.5 0.5 1.0000001 0.5 0.7 1.0", (0, 0.75, 0.75, 0.5, 0.5)),
])
def test_coordinates_within_the_edge_tolerance_are_clipped(text, want):
    (got,) = parse_yolo_label(text + "\n", 2, "labels/x.txt")
    assert got[0] == want[0]
    assert got[1:] == pytest.approx(want[1:], abs=1e-12)
    assert 0 <= got[1] - got[3] / 2 + 1e-15 and got[1] + got[3] / 2 <= 1 + 1e-15


@pytest.mark.parametrize("text, value", [
    ("0 0.5 0.5 1.01 0.2", "left edge cx - w/2 = -0.005"),
    ("0 0.5 0.995 0.2 0.02", "bottom edge cy + h/2 = 1.005"),
    ("0 0.1 0.2 0.5 0.15 1.002 0.7", "x3 = 1.002"),
    ("0 0.1 -0.0011 0.5 0.15 0.6 0.7", "y1 = -0.0011"),
])
def test_coordinates_beyond_the_edge_tolerance_are_refused_naming_the_value(text, value):
    with pytest.raises(ValueError) as info:
        parse_yolo_label("0 0.5 0.5 0.1 0.1\n" + text + "\n", 2, "labels/x.txt")
    message = str(info.value)
    assert message.startswith("labels/x.txt:2:") and value in message and "outside" in message


def test_the_tolerance_is_the_one_of_labelwise_boxes(monkeypatch):
    import labelwise.pool

    assert labelwise.pool.EDGE_TOLERANCE is EDGE_TOLERANCE
    monkeypatch.setattr(labelwise.pool, "EDGE_TOLERANCE", 0.02)
    assert parse_yolo_label("0 0.5 0.5 1.02 0.2", 1, "x")[0][3] == pytest.approx(1.0)


@pytest.mark.parametrize("text, fragment", [
    ("0 0.1 0.2 0.5 0.15 0.6 0.7 0.2", "8 fields"),                  # an odd number of coordinates
    ("0 0.1 0.2 0.5", "4 fields"),
    ("0 0.5 0.5 0.2 0.2 0.87", "prediction file"),
    ("0 0.1 0.2 0.5 0.2 0.9 0.2", "empty"),                           # a polygon on one line
])
def test_lines_that_are_neither_box_nor_polygon_are_refused(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_yolo_label(text, 2, "labels/x.txt")


def test_a_byte_order_mark_is_allowed():
    assert parse_yolo_label("\ufeff0 0.5 0.5 0.2 0.2\n", 1, "x") == [(0, 0.5, 0.5, 0.2, 0.2)]


def test_add_takes_polygon_labels_instead_of_quarantining_the_image(tmp_path):
    images = tmp_path / "d" / "images"
    _image(images / "seg.png", 1)
    _image(images / "noise.png", 2)
    labels = tmp_path / "d" / "labels"
    labels.mkdir(parents=True)
    (labels / "seg.txt").write_text(POLYGON + "\n")
    (labels / "noise.txt").write_text("0 0.5 0.5 1.0000002 0.3\n")
    ws = Workspace.create(tmp_path / "ws", images=[images], classes=["a", "b"], labeled=[images], val_fraction=0.0,
                          model="yolo11n.yaml")
    report = ws.ingest_sources(progress=False)
    assert report.quarantined == [] and report.labeled == 2
    seg = next(i for i in ws.store.images() if i.path.name == "seg.png")
    assert ws.store.label(seg.id)[0][0] == 1
    assert ws.store.label(seg.id)[0][1:] == pytest.approx((0.35, 0.425, 0.5, 0.55))


# -- 3. non-finite numbers ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ["inf", "-inf", "nan", "NaN", "1e400", "Infinity"])
def test_a_non_finite_class_id_is_a_value_error_naming_file_and_line(cls):
    with pytest.raises(ValueError) as info:
        parse_yolo_label(f"0 0.5 0.5 0.1 0.1\n{cls} 0.5 0.5 0.2 0.2\n", 2, "labels/x.txt")
    assert str(info.value).startswith("labels/x.txt:2: unknown class id")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_coordinate_is_a_value_error_naming_file_and_line(value):
    for text in (f"0 0.5 {value} 0.2 0.2", f"0 0.1 0.2 0.5 {value} 0.6 0.7"):
        with pytest.raises(ValueError) as info:
            parse_yolo_label(text, 2, "labels/x.txt")
        assert str(info.value).startswith("labels/x.txt:1:") and "not a finite number" in str(info.value)


def test_add_quarantines_a_non_finite_class_and_goes_on(tmp_path):
    images = tmp_path / "d" / "images"
    labels = tmp_path / "d" / "labels"
    labels.mkdir(parents=True)
    for n, cls in enumerate(["inf", "nan", "0"]):
        _image(images / f"{n}.png", n)
        (labels / f"{n}.txt").write_text(f"{cls} 0.5 0.5 0.2 0.2\n")
    ws = Workspace.create(tmp_path / "ws", images=[images], classes=["a"], labeled=[images], val_fraction=0.0,
                          model="yolo11n.yaml")
    report = ws.add([images], labeled=True, progress=False)
    assert report.labeled == 1
    reasons = dict(ws.store.quarantined())
    assert "0.txt:1: unknown class id 'inf'" in reasons[str(images / "0.png")]
    assert "1.txt:1: unknown class id 'nan'" in reasons[str(images / "1.png")]


# -- 4. a huge line is quoted cut -----------------------------------------------------------------------------------------


def test_quote_cuts_long_text_and_says_how_long_it_was():
    assert quote("0 0.5 0.5") == "'0 0.5 0.5'"
    assert quote(b"ab") == "b'ab'"
    cut = quote("\x00" * 20_000_000)
    assert len(cut) < QUOTE_LIMIT + 40 and cut.startswith("'\\x00\\x00") and "20,000,000 characters" in cut
    exact = "x" * (QUOTE_LIMIT - 2)
    assert quote(exact) == repr(exact)  # fits with its quotes: not cut


@pytest.mark.parametrize("line", [
    "\x00" * 2_000_000,                          # one field
    "0 " + "0.5 " * 1_000_000,                   # a polygon of an odd number of coordinates
    "0 0.5 0.5 0.2 " + "9" * 1_000_000,          # a huge number (inf)
    "9" * 1_000_000 + " 0.5 0.5 0.2 0.2",        # a huge class id
    "0 0.5 0.5 0.2 0.2 " + "x" * 1_000_000,      # six fields
])
def test_a_huge_label_line_gives_a_short_message(line):
    with pytest.raises(ValueError) as info:
        parse_yolo_label(line, 2, "labels/x.txt")
    message = str(info.value)
    assert message.startswith("labels/x.txt:1:") and len(message) < 600


def test_a_label_file_of_one_huge_line_of_nul_bytes_gives_a_short_message(tmp_path):
    label = tmp_path / "a.txt"
    label.write_bytes(b"\x00" * 20_000_000)  # what a 20 KB zip can hold
    with pytest.raises(ValueError) as info:
        read_yolo_label(label, 2)
    assert len(str(info.value)) < 600 and "20,000,000 characters" in str(info.value)


# -- Ultralytics' Image.open patch ---------------------------------------------------------------------------------------


def test_a_corrupt_image_is_quarantined_also_after_ultralytics_patched_image_open(tmp_path, monkeypatch):
    patches = pytest.importorskip("ultralytics.utils.patches")
    checks = pytest.importorskip("ultralytics.utils.checks")
    monkeypatch.setattr(checks, "check_requirements", lambda *a, **k: None)  # never pip install from a test
    monkeypatch.setattr(patches, "_pil_plugins_registered", False)
    monkeypatch.setattr(Image, "open", patches.image_open)  # what `import ultralytics` does
    monkeypatch.setitem(__import__("sys").modules, "pi_heif", None)  # pi-heif not installed
    (tmp_path / "broken.png").write_bytes(b"garbage")
    found = inspect_image(tmp_path / "broken.png")
    assert isinstance(found, Rejected) and "corrupt or unreadable" in found.reason
    assert isinstance(inspect_image(_image(tmp_path / "fine.png", 1)), ImageFile)
