"""Unpacking archives of labels people send back: only label files, within limits that fit labels, cleaned up after.

(The path and link checks are tested in tests/test_cvat.py, where they were first needed.)
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from labelwise.archive import ArchiveError, safe_extract


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
