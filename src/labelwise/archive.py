"""Safe unpacking of archives people send back (CVAT exports, zipped label folders).

Every member is checked before anything is written: no absolute path, no drive letter, no `..`, no link, no device
or other special file, no two members with the same name, and no more than `max_bytes` unpacked in total. A bad
archive raises `ArchiveError` naming the archive and the member, and leaves the target untouched.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from labelwise.quoting import quote

__all__ = ["ArchiveError", "safe_extract", "safe_member_path"]

DEFAULT_MAX_BYTES = 20 * 1024**3
DEFAULT_MAX_MEMBERS = 1_000_000


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


def _check_total(archive: Path, total: int, count: int, max_bytes: int, max_members: int) -> None:
    if count > max_members:
        raise ArchiveError(f"{archive}: more than {max_members} members; refusing to unpack the archive")
    if total > max_bytes:
        raise ArchiveError(f"{archive}: unpacks to {total} bytes, more than the limit of {max_bytes}; refusing to unpack")


def safe_extract(
    archive: Path | str,
    target: Path | str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> list[Path]:
    """Unpack a .zip or a tar (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz) into `target`; returns the files written.

    All members are validated first; the files are unpacked into a temporary folder beside `target` and moved in,
    so a failure half-way leaves nothing behind in `target`. Existing files in `target` are never overwritten.
    """
    archive = Path(archive)
    target = Path(target)
    if not archive.is_file():
        raise ArchiveError(f"{archive}: no such archive file")
    if zipfile.is_zipfile(archive):
        members = _zip_members(archive, max_bytes, max_members)
        opener = _zip_reader
    elif tarfile.is_tarfile(archive):
        members = _tar_members(archive, max_bytes, max_members)
        opener = _tar_reader
    else:
        raise ArchiveError(f"{archive}: not a zip or tar archive")

    target.mkdir(parents=True, exist_ok=True)
    for rel, _ in members:
        if (target / rel).exists() and not (target / rel).is_dir():
            raise ArchiveError(f"{archive}: member {quote(str(rel))} already exists in {target}; unpack into an empty folder")
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
    written: list[Path] = []
    try:
        with opener(archive) as read:
            for rel, key in members:
                dest = staging / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                with read(key) as src, open(dest, "xb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        for rel, _ in members:
            final = target / rel
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel, final)
            written.append(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


def _zip_members(archive: Path, max_bytes: int, max_members: int) -> list[tuple[PurePosixPath, object]]:
    members: list[tuple[PurePosixPath, object]] = []
    seen: set[str] = set()
    total = 0
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
        total += info.file_size
        members.append((rel, info))
        _check_total(archive, total, len(members), max_bytes, max_members)
    return members


def _tar_members(archive: Path, max_bytes: int, max_members: int) -> list[tuple[PurePosixPath, object]]:
    members: list[tuple[PurePosixPath, object]] = []
    seen: set[str] = set()
    total = 0
    try:
        with tarfile.open(archive) as tf:
            infos = tf.getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveError(f"{archive}: cannot read the tar archive ({exc})") from None
    for info in infos:
        if info.issym() or info.islnk():
            raise ArchiveError(f"{archive}: member {quote(info.name)} is a link; refusing to unpack the archive")
        if not (info.isfile() or info.isdir()):
            raise ArchiveError(f"{archive}: member {quote(info.name)} is not a regular file; refusing to unpack the archive")
        rel = safe_member_path(info.name, archive)
        if info.isdir() or rel is None:
            continue
        key = str(rel)
        if key in seen:
            raise ArchiveError(f"{archive}: member {quote(info.name)} appears twice; refusing to unpack the archive")
        seen.add(key)
        total += info.size
        members.append((rel, info.name))
        _check_total(archive, total, len(members), max_bytes, max_members)
    return members


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
