"""Unpacking archives of labels people send back: only label files, within limits that fit labels, cleaned up after.

(The path and link checks are tested in tests/test_cvat.py, where they were first needed.)
"""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import pytest

from labelwise.archive import (
    LABEL_SUFFIXES,
    MAX_FILE_BYTES,
    MAX_RATIO,
    ArchiveError,
    _copy_at_most,
    extracted,
    safe_extract,
)


def _zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


# -- messages quote member names cut -------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [_zip, _tar])
def test_a_huge_member_name_gives_a_short_message(tmp_path, make):
    archive = make(tmp_path / f"bad.{'zip' if make is _zip else 'tar.gz'}", {"../" + "a" * 60_000 + ".txt": b"x"})
    with pytest.raises(ArchiveError) as info:
        safe_extract(archive, tmp_path / "t")
    assert "leave the target" in str(info.value) and len(str(info.value)) < 600


# -- only label files, within limits that fit labels ----------------------------------------------------------------------


def _zeros_zip(path: Path, name: str, chunks: int, extra: dict[str, bytes] | None = None) -> Path:
    """A valid zip whose member `name` is `chunks` x 16 MiB of zero bytes, deflated to ~16 KB a chunk: written
    directly (one deflate block reused after each full flush) instead of compressing a gigabyte in the test."""
    chunk = bytes(1 << 24)
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = co.compress(chunk) + co.flush(zlib.Z_FULL_FLUSH)
    data = block * chunks + co.flush(zlib.Z_FINISH)
    crc = 0
    for _ in range(chunks):
        crc = zlib.crc32(chunk, crc)
    size, raw = len(chunk) * chunks, name.encode()
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0x21, crc, len(data), size, len(raw), 0)
    central = struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 8, 0, 0x21, crc, len(data), size,
                          len(raw), 0, 0, 0, 0, 0, 0)
    body = local + raw + data
    out = body + central + raw + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(central) + len(raw),
                                             len(body), 0)
    path.write_bytes(out)
    if extra:
        with zipfile.ZipFile(path, "a") as zf:
            for member, content in extra.items():
                zf.writestr(member, content)
    return path


def test_the_zeros_zip_is_what_it_says(tmp_path):
    archive = _zeros_zip(tmp_path / "z.zip", "a.bin", 2, {"b.txt": b"0 0.5 0.5 0.2 0.2\n"})
    with zipfile.ZipFile(archive) as zf:
        assert zf.read("a.bin") == bytes(2 << 24)  # CRC checked on the way
        assert zf.read("b.txt") == b"0 0.5 0.5 0.2 0.2\n"


def test_a_small_zip_of_a_huge_non_label_file_unpacks_only_the_labels_and_leaves_nothing(tmp_path):
    archive = _zeros_zip(tmp_path / "export.zip", "images/big.png", 66,  # 1.1 GB of zeros in 1 MB
                         {"labels/a.txt": b"0 0.5 0.5 0.2 0.2\n"})
    assert archive.stat().st_size < 2 * 1024**2
    imports = tmp_path / "ws" / "imports"
    with extracted(archive, dir=imports) as folder:
        assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == ["labels/a.txt"]
        assert folder.parent.parent == imports
    assert list(imports.iterdir()) == []  # nothing stays in ws/imports


def test_a_small_zip_of_a_huge_label_file_is_refused_before_anything_is_written(tmp_path):
    archive = _zeros_zip(tmp_path / "export.zip", "labels/big.txt", 66)
    with pytest.raises(ArchiveError) as info:
        safe_extract(archive, tmp_path / "t")
    assert "labels/big.txt" in str(info.value) and "1,107,296,256 bytes" in str(info.value)
    assert f"{MAX_FILE_BYTES:,}" in str(info.value)
    assert not (tmp_path / "t").exists() or not any((tmp_path / "t").iterdir())


def test_a_compression_bomb_of_label_files_is_refused(tmp_path):
    # 30 label files of 1 MiB of zeros: each under the per-file limit, 30 MiB in all, in a tar.gz of ~30 KB
    archive = _tar(tmp_path / "bomb.tar.gz", {f"labels/{n}.txt": bytes(1 << 20) for n in range(30)})
    with pytest.raises(ArchiveError, match=f"more than {MAX_RATIO} times the archive"):
        safe_extract(archive, tmp_path / "t")
    assert not (tmp_path / "t").exists() or not any((tmp_path / "t").iterdir())
    # a few MB of zeros is no threat: the ratio applies only to archives that unpack to more than 10 MB
    small = _tar(tmp_path / "small.tar.gz", {"labels/a.txt": bytes(1 << 20)})
    assert [p.name for p in safe_extract(small, tmp_path / "t2")] == ["a.txt"]


@pytest.mark.parametrize("make", [_zip, _tar])
def test_the_limits_are_checked(tmp_path, make):
    ext = "zip" if make is _zip else "tar.gz"
    archive = make(tmp_path / f"a.{ext}", {f"l/{n}.txt": b"0 0.5 0.5 0.2 0.2\n" * 10 for n in range(5)})
    with pytest.raises(ArchiveError, match="a label file may have"):
        safe_extract(archive, tmp_path / "t1", max_file_bytes=100)
    with pytest.raises(ArchiveError, match="limit of 500 bytes"):
        safe_extract(archive, tmp_path / "t2", max_bytes=500)
    with pytest.raises(ArchiveError, match="more than 4 members"):
        safe_extract(archive, tmp_path / "t3", max_members=4)
    assert len(safe_extract(archive, tmp_path / "t4")) == 5


def test_a_member_holding_more_than_it_declares_is_refused():
    with pytest.raises(ArchiveError, match="more than the 2 bytes it declares"):
        _copy_at_most(io.BytesIO(b"abc"), io.BytesIO(), 2, Path("a.zip"), PurePosixPath("x.txt"))
    out = io.BytesIO()
    _copy_at_most(io.BytesIO(b"ab"), out, 2, Path("a.zip"), PurePosixPath("x.txt"))
    assert out.getvalue() == b"ab"


@pytest.mark.parametrize("make", [_zip, _tar])
def test_what_the_export_readers_need_is_unpacked_and_nothing_else(tmp_path, make):
    members = {
        "annotations.xml": b"<annotations/>",                                   # CVAT for images 1.1
        "obj.names": b"fish\n", "obj.data": b"classes = 1\n", "train.txt": b"obj_train_data/a.jpg\n",  # YOLO 1.1
        "obj_train_data/a.txt": b"0 0.5 0.5 0.2 0.2\n",
        "data.yaml": b"names: [fish]\n", "export.json": b"[]", "classes.txt": b"fish\n",
        "obj_train_data/a.jpg": b"\xff\xd8 pixels", "images/b.PNG": b"png", "notes.docx": b"doc",
        "__MACOSX/obj_train_data/._a.txt": b"\x00\x05\x16\x07 resource fork",
    }
    archive = make(tmp_path / ("e.zip" if make is _zip else "e.tar.gz"), members)
    written = safe_extract(archive, tmp_path / "t")
    assert sorted(p.relative_to(tmp_path / "t").as_posix() for p in written) == sorted(
        ["annotations.xml", "obj.names", "obj.data", "train.txt", "obj_train_data/a.txt", "data.yaml",
         "export.json", "classes.txt"])
    assert {PurePosixPath(p).suffix for p in ["a.txt", "a.xml", "a.names", "a.data", "a.yaml", "a.json"]} <= LABEL_SUFFIXES
    everything = safe_extract(archive, tmp_path / "all", suffixes=None)  # for archives labelwise wrote itself
    assert len(everything) == len(members)


@pytest.mark.parametrize("make", [_zip, _tar])
def test_non_label_members_are_still_checked(tmp_path, make):
    archive = make(tmp_path / ("e.zip" if make is _zip else "e.tar.gz"), {"a.txt": b"", "../evil.png": b"x"})
    with pytest.raises(ArchiveError, match="leave the target"):
        safe_extract(archive, tmp_path / "t")


def test_extracted_removes_its_folder_also_on_an_error(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"l/a.txt": b"0 0.5 0.5 0.2 0.2\n"})
    with pytest.raises(RuntimeError):
        with extracted(archive, dir=tmp_path / "imports") as folder:
            assert (folder / "l" / "a.txt").read_bytes() == b"0 0.5 0.5 0.2 0.2\n"
            raise RuntimeError("the import failed")
    assert not folder.exists() and list((tmp_path / "imports").iterdir()) == []
    bad = _zip(tmp_path / "b.zip", {"../x.txt": b""})
    with pytest.raises(ArchiveError):
        with extracted(bad, dir=tmp_path / "imports"):
            pass
    assert list((tmp_path / "imports").iterdir()) == []
