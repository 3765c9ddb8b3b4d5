"""Safe unpacking of archives people send back (CVAT exports, zipped label folders).

Every member is checked before anything is written: no absolute path, no drive letter, no `..`, no link, no device
or other special file, no two members with the same name. Only label files are unpacked (`LABEL_SUFFIXES`; images
and anything else in the archive are passed over, never decompressed to disk), within limits that fit labels
(`MAX_FILE_BYTES`, `MAX_TOTAL_BYTES`, `MAX_MEMBERS`, `MAX_RATIO`). A bad archive raises `ArchiveError` naming the
archive and the member, and leaves the target untouched.

`extracted(archive)` unpacks into a temporary folder and removes it afterwards: what an import reads from an
archive is not kept.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Collection, Iterator
from pathlib import Path, PurePosixPath

from labelwise.quoting import quote

__all__ = ["ArchiveError", "LABEL_SUFFIXES", "extracted", "is_label_member", "safe_extract", "safe_member_path"]

# What the label readers take from an unpacked archive: YOLO txt (and classes.txt, CVAT's train.txt), CVAT for
# images 1.1 (.xml), CVAT YOLO 1.1 (obj.names, obj.data), Ultralytics/Roboflow data.yaml, JSON exports (Label
# Studio, COCO). Anything else, the images of an export above all, is not unpacked.
LABEL_SUFFIXES = frozenset({".txt", ".xml", ".names", ".data", ".yaml", ".yml", ".json"})

# Limits that fit labels and no more. A YOLO label file is ~40 bytes a box and a CVAT XML ~150 bytes a box: 50 MB
# is a third of a million boxes in one file, and a batch of labels a few MB. 1 GB in all and a million files are
# far beyond any batch while keeping a workspace's disk safe.
MAX_FILE_BYTES = 50 * 1024**2
MAX_TOTAL_BYTES = 1024**3
MAX_MEMBERS = 1_000_000
# Compression-bomb guard: label text deflates 3 to 20 times (repetitive XML the most); an archive whose label files
# unpack to more than MAX_RATIO times its own size is refused once they exceed RATIO_FLOOR_BYTES (below that the
# ratio is harmless). The limits above are checked on the sizes the archive declares, and again on the bytes
# actually written.
MAX_RATIO = 100
RATIO_FLOOR_BYTES = 10 * 1024**2


class ArchiveError(ValueError):
    """The archive is unsafe or unreadable; the message names the archive and the member."""


def safe_member_path(name: str, archive: Path | str = "archive") -> PurePosixPath | None:
    """The relative path a member may take inside the target, or None for a directory entry of the root.

    Raises ArchiveError for absolute paths, drive letters, backslash tricks and any `..` component.
    """
    raw = name.replace("\\", "/")
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":") or "\x00" in raw:
        raise ArchiveError(f"{archive}: member {quote(name)} has an absolute path; refusing to unpack the archive")
    parts = [p for p in PurePosixPath(raw).parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ArchiveError(f"{archive}: member {quote(name)} would leave the target folder ('..'); refusing to unpack the archive")
    return PurePosixPath(*parts) if parts else None


def is_label_member(rel: PurePosixPath, suffixes: Collection[str] = LABEL_SUFFIXES) -> bool:
    """Whether a member is unpacked: a label file by its suffix, and not macOS resource-fork litter
    (`__MACOSX/`, `._name.txt`), which has the suffix of the file it belongs to but holds no text."""
    return rel.suffix.lower() in suffixes and "__MACOSX" not in rel.parts and not rel.name.startswith("._")


class _Limits:
    """The limits of one unpacking, checked as members are listed (declared sizes) and as they are written."""

    def __init__(self, archive: Path, max_bytes: int, max_members: int, max_file_bytes: int, max_ratio: float,
                 suffixes: Collection[str] | None) -> None:
        self.archive = archive
        self.suffixes = None if suffixes is None else frozenset(suffixes)
        self.max_bytes, self.max_members = max_bytes, max_members
        self.max_file_bytes, self.max_ratio = max_file_bytes, max_ratio
        self.archive_bytes = archive.stat().st_size
        self.count = 0
        self.total = 0

    def wanted(self, rel: PurePosixPath) -> bool:
        return self.suffixes is None or is_label_member(rel, self.suffixes)

    def member(self, name: str) -> None:
        self.count += 1
        if self.count > self.max_members:
            raise ArchiveError(f"{self.archive}: more than {self.max_members:,} members; refusing to unpack the "
                               "archive (a batch of labels has far fewer files)")

    def add(self, name: str, size: int) -> None:
        if size > self.max_file_bytes:
            raise ArchiveError(f"{self.archive}: member {quote(name)} unpacks to {size:,} bytes, more than the "
                               f"{self.max_file_bytes:,} a label file may have; refusing to unpack the archive")
        self.total += size
        if self.total > self.max_bytes:
            raise ArchiveError(f"{self.archive}: its label files unpack to more than the limit of "
                               f"{self.max_bytes:,} bytes; refusing to unpack the archive")
        if self.total > RATIO_FLOOR_BYTES and self.total > self.max_ratio * self.archive_bytes:
            raise ArchiveError(f"{self.archive}: its label files unpack to {self.total:,} bytes, more than "
                               f"{self.max_ratio:g} times the archive's {self.archive_bytes:,} bytes (a compression "
                               "bomb?); refusing to unpack the archive")


def safe_extract(
    archive: Path | str,
    target: Path | str,
    *,
    max_bytes: int = MAX_TOTAL_BYTES,
    max_members: int = MAX_MEMBERS,
    max_file_bytes: int = MAX_FILE_BYTES,
    max_ratio: float = MAX_RATIO,
    suffixes: Collection[str] | None = LABEL_SUFFIXES,
) -> list[Path]:
    """Unpack the label files of a .zip or a tar (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz) into `target`; returns
    the files written. Other members (images, ...) are checked like every member but not unpacked.
    `suffixes`: which files are label files (lower case, with the dot); None unpacks every file (for an archive
    labelwise wrote itself, e.g. a CVAT task archive in a test), within the same limits.

    All members are validated first; the files are unpacked into a temporary folder beside `target` and moved in,
    so a failure half-way leaves nothing behind in `target`. Existing files in `target` are never overwritten.
    `extracted` is the same into a temporary folder that is removed afterwards.
    """
    archive = Path(archive)
    target = Path(target)
    if not archive.is_file():
        raise ArchiveError(f"{archive}: no such archive file")
    limits = _Limits(archive, max_bytes, max_members, max_file_bytes, max_ratio, suffixes)
    if zipfile.is_zipfile(archive):
        members = _zip_members(archive, limits)
        opener = _zip_reader
    elif tarfile.is_tarfile(archive):
        members = _tar_members(archive, limits)
        opener = _tar_reader
    else:
        raise ArchiveError(f"{archive}: not a zip or tar archive")

    target.mkdir(parents=True, exist_ok=True)
    for rel, _, _ in members:
        if (target / rel).exists() and not (target / rel).is_dir():
            raise ArchiveError(f"{archive}: member {quote(str(rel))} already exists in {target}; unpack into an empty folder")
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
    written: list[Path] = []
    try:
        with opener(archive) as read:
            for rel, key, size in members:
                dest = staging / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                with read(key) as src, open(dest, "xb") as dst:
                    _copy_at_most(src, dst, size, archive, rel)
        for rel, _, _ in members:
            final = target / rel
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel, final)
            written.append(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


@contextlib.contextmanager
def extracted(archive: Path | str, *, dir: Path | str | None = None, **limits) -> Iterator[Path]:
    """`with extracted(archive) as folder:` the archive's label files unpacked (as `safe_extract` does, same
    keyword limits) into a new temporary folder, which is removed with everything in it when the block ends, also
    on an error. `dir`: where the temporary folder is made (default: the system's temporary folder); give one on
    the workspace's disk for big archives."""
    if dir is not None:
        Path(dir).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".labelwise-unpack-", dir=dir))
    try:
        safe_extract(archive, tmp / "files", **limits)
        yield tmp / "files"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _copy_at_most(src, dst, size: int, archive: Path, rel: PurePosixPath) -> None:
    """Copy a member, refusing it if it holds more than the `size` it declared (the limits were checked on that)."""
    left = size
    while chunk := src.read(min(1 << 20, left + 1)):
        left -= len(chunk)
        if left < 0:
            raise ArchiveError(f"{archive}: member {quote(str(rel))} holds more than the {size:,} bytes it "
                               "declares; refusing to unpack the archive")
        dst.write(chunk)


def _zip_members(archive: Path, limits: _Limits) -> list[tuple[PurePosixPath, object, int]]:
    members: list[tuple[PurePosixPath, object, int]] = []
    seen: set[str] = set()
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"{archive}: cannot read the zip archive ({exc})") from None
    for info in infos:
        mode = (info.external_attr >> 16) if info.create_system == 3 else 0
        kind = stat.S_IFMT(mode)  # 0 when the archiver recorded permissions only
        if kind and stat.S_ISLNK(mode):
            raise ArchiveError(f"{archive}: member {quote(info.filename)} is a symbolic link; refusing to unpack the archive")
        if kind and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise ArchiveError(f"{archive}: member {quote(info.filename)} is not a regular file; refusing to unpack the archive")
        rel = safe_member_path(info.filename, archive)
        if info.is_dir() or rel is None:
            continue
        key = str(rel)
        if key in seen:
            raise ArchiveError(f"{archive}: member {quote(info.filename)} appears twice; refusing to unpack the archive")
        seen.add(key)
        limits.member(info.filename)
        if limits.wanted(rel):
            limits.add(info.filename, info.file_size)
            members.append((rel, info, info.file_size))
    return members


def _tar_members(archive: Path, limits: _Limits) -> list[tuple[PurePosixPath, object, int]]:
    members: list[tuple[PurePosixPath, object, int]] = []
    seen: set[str] = set()
    try:
        with tarfile.open(archive) as tf:
            for info in tf:  # one at a time: the member limit stops a tar of millions of entries early
                rel = _tar_member(archive, info, seen, limits)
                if rel is not None and limits.wanted(rel):
                    limits.add(info.name, info.size)
                    members.append((rel, info.name, info.size))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveError(f"{archive}: cannot read the tar archive ({exc})") from None
    return members


def _tar_member(archive: Path, info: tarfile.TarInfo, seen: set[str], limits: _Limits) -> PurePosixPath | None:
    if info.issym() or info.islnk():
        raise ArchiveError(f"{archive}: member {quote(info.name)} is a link; refusing to unpack the archive")
    if not (info.isfile() or info.isdir()):
        raise ArchiveError(f"{archive}: member {quote(info.name)} is not a regular file; refusing to unpack the archive")
    rel = safe_member_path(info.name, archive)
    if info.isdir() or rel is None:
        return None
    key = str(rel)
    if key in seen:
        raise ArchiveError(f"{archive}: member {quote(info.name)} appears twice; refusing to unpack the archive")
    seen.add(key)
    limits.member(info.name)
    return rel


class _zip_reader:
    def __init__(self, archive: Path) -> None:
        self.zf = zipfile.ZipFile(archive)

    def __enter__(self):
        return lambda info: self.zf.open(info)

    def __exit__(self, *exc) -> None:
        self.zf.close()


class _tar_reader:
    def __init__(self, archive: Path) -> None:
        self.tf = tarfile.open(archive)

    def __enter__(self):
        def read(name: str):
            fh = self.tf.extractfile(name)
            if fh is None:
                raise ArchiveError(f"member {quote(name)} cannot be read")
            return fh

        return read

    def __exit__(self, *exc) -> None:
        self.tf.close()
