"""Finding, hashing and validating images and their YOLO labels.

An image is its bytes: it is identified by SHA-256, so two files with the same stem in different folders are two
images, and the same bytes under two names are one image (the second name is recorded as a duplicate). Every
problem with a file ends as a `Rejected` with a message that names the file (and line) and says what to do;
nothing here raises on bad data. The decode that validates an image also gives its perceptual hashes (pHash, dHash;
see `labelwise.neardup`), so near duplicates can be found before any model exists.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import imagehash
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.Image import DecompressionBombError

from labelwise.boxes import EDGE_TOLERANCE
from labelwise.fileio import sha256_file
from labelwise.neardup import bits_to_uint64
from labelwise.quoting import quote

if TYPE_CHECKING:
    from labelwise.store import Store

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
# Files that commonly sit beside images and are not images: not worth a quarantine entry.
SIDECAR_SUFFIXES = {".txt", ".json", ".yaml", ".yml", ".csv", ".xml", ".cache", ".md", ".npy", ".db", ".log"}

YoloBox = tuple[int, float, float, float, float]


@dataclass(frozen=True)
class ImageFile:
    path: Path
    sha256: str
    width: int
    height: int
    phash: int  # 64-bit perceptual hashes as unsigned integers, see labelwise.neardup
    dhash: int


@dataclass(frozen=True)
class Rejected:
    path: Path
    reason: str


def find_files(sources: list[Path]) -> Iterator[Path]:
    """Every file under the given files/folders, in a stable order; hidden files and folders are ignored."""
    for source in sources:
        source = Path(source)
        if source.is_file():
            yield source.absolute()
        elif source.is_dir():
            for root, dirs, files in os.walk(source):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith("."):
                        yield Path(root, name).absolute()


def is_candidate(path: Path, explicit: bool) -> bool:
    """Whether a found file should be looked at as an image (sidecars in folders are passed over quietly)."""
    suffix = path.suffix.lower()
    return suffix in IMAGE_SUFFIXES or explicit or suffix not in SIDECAR_SUFFIXES


def inspect_image(path: Path) -> ImageFile | Rejected:
    """Hash and decode an image fully, and compute its perceptual hashes; anything unreadable becomes a Rejected
    with the reason."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return Rejected(path, f"{path}: not an image file (suffix {path.suffix or 'none'}); "
                              f"labelwise reads {', '.join(sorted(IMAGE_SUFFIXES))}. Move it out of the image folder.")
    try:
        (width, height), phash, dhash = _decode(path)
    except DecompressionBombError as exc:
        return Rejected(path, _too_many_pixels(path, exc))
    except _UNREADABLE as exc:
        return Rejected(path, f"{path}: corrupt or unreadable image ({exc.__class__.__name__}: {exc}); "
                              "re-export or remove the file, then run `labelwise add` again.")
    if width < 2 or height < 2:
        return Rejected(path, f"{path}: image is {width}x{height} pixels, too small to label")
    return ImageFile(path, sha256_file(path), width, height, phash, dhash)


# pHash resamples to 32x32: a box reduction to no less than 4x that first costs a tenth of a Lanczos filter over a
# 12-megapixel image and moves at most 2 of the 64 bits (8 photographs of 1920x1080 and 4000x3000, against hashing
# the full image). Every image, at ingest and in the backfill, is hashed this same way, so they stay comparable.
_HASH_INPUT_MIN_SIDE = 128
_BOX_REDUCIBLE_MODES = {"L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "HSV", "I", "F", "PA"}


_UNREADABLE = (UnidentifiedImageError, OSError, ValueError, SyntaxError, DecompressionBombError)


def _too_many_pixels(path: Path, exc: DecompressionBombError) -> str:
    """The quarantine reason for an image Pillow refuses to open for its size (a "decompression bomb").

    Pillow refuses images of more than 2 x Image.MAX_IMAGE_PIXELS (178,956,970 pixels by default) and only warns
    between 1x and 2x. There is deliberately no setting to raise the limit: Ultralytics checks every training image
    with the same `Image.open`, so such an image would be dropped as corrupt when training anyway, and a detector
    trained at 640-1280 px sees nothing of a 200-megapixel image but a blur. Downscaling or tiling is the fix.
    """
    found = re.search(r"\((\d+) pixels\) exceeds limit of (\d+) pixels", str(exc))
    size = (f"{int(found.group(1)):,} pixels, more than the {int(found.group(2)):,} that Pillow opens" if found
            else str(exc))
    return (f"{path}: image too large to open safely ({size}; Pillow refuses it as a possible decompression bomb, "
            "and so does Ultralytics' image check when training). Downscale it or cut it into tiles (for example "
            "with ImageMagick: `magick IMAGE -resize 12000x12000 OUT` or `magick IMAGE -crop 4000x4000 TILE_%d.png`), "
            "add those instead, and remove or move this file.")


def _decode(path: Path) -> tuple[tuple[int, int], int, int]:
    """((width, height), pHash, dHash) of the image as shown (EXIF orientation applied), from a full decode:
    truncated files fail here, not during training. Raises one of _UNREADABLE."""
    with _pillow_open()(path) as img:
        img.load()
        upright = ImageOps.exif_transpose(img) if img.getexif() else img
        return upright.size, *perceptual_hashes(upright)


def _pillow_open():
    """Pillow's own `Image.open`. Importing Ultralytics replaces `Image.open` with a wrapper that, for a file Pillow
    cannot identify, calls `check_requirements("pi-heif")` (a pip install when Ultralytics' autoinstall is on) and
    imports pi_heif, which raises ModuleNotFoundError where it is absent: a corrupt file would then stop `add`, or
    the hash backfill of `select` after scoring, with a traceback. labelwise reads no HEIF (see IMAGE_SUFFIXES)."""
    opener = Image.open
    if getattr(opener, "__module__", "PIL.Image") != "PIL.Image":  # wrapped: the wrapper keeps the original
        opener = getattr(sys.modules.get(opener.__module__), "_image_open", opener)
    return opener


def perceptual_hashes(img: Image.Image) -> tuple[int, int]:
    """(pHash, dHash) of a decoded image as unsigned 64-bit integers (formulas in labelwise.neardup).

    Hashed as shown (EXIF orientation applied by the caller), so a rotated copy of a file matches its upright twin.
    """
    if img.mode not in _BOX_REDUCIBLE_MODES:  # palette, bilevel, 16-bit: Image.reduce refuses these
        img = img.convert("L")
    factor = min(img.size) // _HASH_INPUT_MIN_SIDE
    grey = (img.reduce(factor) if factor > 1 else img).convert("L")  # one greyscale image for both hashes
    return (bits_to_uint64(imagehash.phash(grey, hash_size=8).hash),
            bits_to_uint64(imagehash.dhash(grey, hash_size=8).hash))


def backfill_hashes(store: Store) -> list[tuple[str, str]]:
    """Compute and store the perceptual hashes of every image the store has none for (workspaces made before
    hashes were computed at ingest). Returns (path, reason) of the images that could not be read; they keep no
    hashes and are tried again on the next call."""
    failed: list[tuple[str, str]] = []
    computed: list[tuple[int, int, int]] = []
    for image_id, path in store.images_without_hashes():
        try:
            _, phash, dhash = _decode(path)
        except _UNREADABLE as exc:
            failed.append((str(path), f"{path}: cannot compute perceptual hashes ({exc.__class__.__name__}: {exc}); "
                                      "near duplicates of this image are found by the detector's embedding only"))
            continue
        computed.append((image_id, phash, dhash))
        if len(computed) >= 1000:  # bounded transactions: a killed backfill keeps what it has done
            store.set_image_hashes(computed)
            computed = []
    store.set_image_hashes(computed)
    return failed


def label_path_for(image_path: Path) -> Path:
    """The YOLO label file of an image, by the Ultralytics convention: the last /images/ becomes /labels/."""
    parts = list(image_path.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image_path.with_suffix(".txt")


def parse_yolo_label(text: str, n_classes: int, where: str) -> list[YoloBox]:
    """Parse a YOLO label file into boxes. Raises ValueError naming `where` and the line.

    Each line is, as Ultralytics reads it, either a box `class cx cy w h` or a polygon `class x1 y1 x2 y2 ... xn yn`
    (segmentation labels: an odd number of fields, at least 7, i.e. 3 points or more); a polygon becomes its
    bounding box, as Ultralytics' `segments2boxes` does. All values are normalised to the image side. An empty file
    is a valid "no objects" image; a UTF-8 byte-order mark is allowed.

    A box edge or polygon point may lie up to `labelwise.boxes.EDGE_TOLERANCE` outside [0, 1] (float noise from
    exports) and is then clipped to the image; further out, or an empty box, is refused with the value named.

    The one YOLO txt parser of labelwise: every reader of YOLO label files (folders, archives, CVAT's "YOLO 1.1")
    uses it, with its own class-id mapping applied afterwards.
    """
    boxes: list[YoloBox] = []
    for line_no, raw in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        fields = line.split()
        here = f"{where}:{line_no}"
        if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
            hint = " (a sixth number looks like a confidence: this is a prediction file, not labels)" \
                if len(fields) == 6 else ""
            raise ValueError(f"{here}: {len(fields)} fields, expected 5 (class cx cy w h) or a polygon "
                             f"(class x1 y1 x2 y2 ... xn yn, 3 points or more){hint}: {quote(line)}")
        try:
            cls_f = float(fields[0])
            values = [float(v) for v in fields[1:]]
        except ValueError:
            raise ValueError(f"{here}: not numbers: {quote(line)}") from None
        # float() takes "inf" and "nan": compare before int(), which would raise without naming the file
        if not (0 <= cls_f < n_classes and cls_f == math.floor(cls_f)):
            raise ValueError(f"{here}: unknown class id {quote(fields[0])} (classes are 0..{n_classes - 1}); "
                             "fix the id or add the class to labelwise.yaml")
        bad = next((v for v in values if not math.isfinite(v)), None)
        if bad is not None:
            raise ValueError(f"{here}: coordinate {bad} is not a finite number; fix the box: {quote(line)}")
        if len(fields) == 5:
            cx, cy, w, h = values
            if w <= 0 or h <= 0:
                raise ValueError(f"{here}: coordinates must be in [0, 1] with w, h > 0: {quote(line)}")
            corners = (("left edge cx - w/2", cx - w / 2), ("top edge cy - h/2", cy - h / 2),
                       ("right edge cx + w/2", cx + w / 2), ("bottom edge cy + h/2", cy + h / 2))
        else:
            corners = tuple((f"{'xy'[i % 2]}{i // 2 + 1}", v) for i, v in enumerate(values))
        for name, v in corners:
            if not -EDGE_TOLERANCE <= v <= 1 + EDGE_TOLERANCE:
                raise ValueError(f"{here}: box reaches outside the image: {name} = {v:g} is outside [0, 1] by more "
                                 f"than {EDGE_TOLERANCE:g}; fix the box: {quote(line)}")
        xs = [min(max(v, 0.0), 1.0) for name, v in corners[0::2]]
        ys = [min(max(v, 0.0), 1.0) for name, v in corners[1::2]]
        x1, x2, y1, y2 = min(xs), max(xs), min(ys), max(ys)
        if x2 <= x1 or y2 <= y1:
            raise ValueError(f"{here}: the box is empty (width or height 0 within the image): {quote(line)}")
        if len(fields) == 5 and x1 == cx - w / 2 and x2 == cx + w / 2 and y1 == cy - h / 2 and y2 == cy + h / 2:
            boxes.append((int(cls_f), cx, cy, w, h))  # inside the image: the numbers exactly as written
        else:
            boxes.append((int(cls_f), (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1))
    return boxes


def read_yolo_label(path: Path, n_classes: int) -> list[YoloBox]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read label file ({exc})") from None
    return parse_yolo_label(text, n_classes, str(path))


def format_yolo_label(boxes: list[YoloBox]) -> str:
    return "".join(f"{int(c)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n" for c, cx, cy, w, h in boxes)
