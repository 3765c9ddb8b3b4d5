"""Finding, hashing and validating images and their YOLO labels.

An image is its bytes: it is identified by SHA-256, so two files with the same stem in different folders are two
images, and the same bytes under two names are one image (the second name is recorded as a duplicate). Every
problem with a file ends as a `Rejected` with a message that names the file (and line) and says what to do;
nothing here raises on bad data.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from labelwise.fileio import sha256_file

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
    """Hash and decode an image fully; anything unreadable becomes a Rejected with the reason."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return Rejected(path, f"{path}: not an image file (suffix {path.suffix or 'none'}); "
                              f"labelwise reads {', '.join(sorted(IMAGE_SUFFIXES))}. Move it out of the image folder.")
    try:
        with Image.open(path) as img:
            img.load()  # a full decode: truncated files fail here, not during training
            width, height = ImageOps.exif_transpose(img).size if img.getexif() else img.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        return Rejected(path, f"{path}: corrupt or unreadable image ({exc.__class__.__name__}: {exc}); "
                              "re-export or remove the file, then run `labelwise add` again.")
    if width < 2 or height < 2:
        return Rejected(path, f"{path}: image is {width}x{height} pixels, too small to label")
    return ImageFile(path, sha256_file(path), width, height)


def label_path_for(image_path: Path) -> Path:
    """The YOLO label file of an image, by the Ultralytics convention: the last /images/ becomes /labels/."""
    parts = list(image_path.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image_path.with_suffix(".txt")


def parse_yolo_label(text: str, n_classes: int, where: str) -> list[YoloBox]:
    """Parse YOLO txt (`class cx cy w h` per line, normalised). Raises ValueError naming `where` and the line.

    An empty file is a valid "no objects" image. Coordinates must lie in [0, 1] (a rounding slack of 1e-6 is
    allowed) and the box must lie inside the image; nothing is clamped silently.
    """
    boxes: list[YoloBox] = []
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 5:
            raise ValueError(f"{where}:{line_no}: {len(fields)} fields, expected 5 (class cx cy w h): {line!r}")
        try:
            cls_f = float(fields[0])
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError:
            raise ValueError(f"{where}:{line_no}: not numbers: {line!r}") from None
        if cls_f != int(cls_f) or not 0 <= int(cls_f) < n_classes:
            raise ValueError(f"{where}:{line_no}: unknown class id {fields[0]} (classes are 0..{n_classes - 1}); "
                             "fix the id or add the class to labelwise.yaml")
        eps = 1e-6
        if not all(-eps <= v <= 1 + eps for v in (cx, cy, w, h)) or w <= 0 or h <= 0:
            raise ValueError(f"{where}:{line_no}: coordinates must be in [0, 1] with w, h > 0: {line!r}")
        if cx - w / 2 < -eps or cy - h / 2 < -eps or cx + w / 2 > 1 + eps or cy + h / 2 > 1 + eps:
            raise ValueError(f"{where}:{line_no}: box reaches outside the image: {line!r}")
        boxes.append((int(cls_f), cx, cy, w, h))
    return boxes


def read_yolo_label(path: Path, n_classes: int) -> list[YoloBox]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read label file ({exc})") from None
    return parse_yolo_label(text, n_classes, str(path))


def format_yolo_label(boxes: list[YoloBox]) -> str:
    return "".join(f"{int(c)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n" for c, cx, cy, w, h in boxes)
