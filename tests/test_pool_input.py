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
from labelwise.pool import ImageFile, Rejected, inspect_image


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
    ws = Workspace.create(tmp_path / "ws", images=[pool], classes=["x"])
    report = ws.ingest_sources(progress=False)
    assert report.added == 1
    reasons = dict(ws.store.quarantined())
    assert "200,000,000 pixels" in reasons[str(pool / "a_huge.png")]
