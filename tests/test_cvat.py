"""CVAT through its files, checked in both directions with datumaro (CVAT's own dataset library).

datumaro lives in its own venv (.venv-datumaro, made by `make test` via scripts/label-studio.sh): it needs pillow 12 and
opencv-python-headless 4, which would clobber the detector's pillow and opencv in .venv. The tests run it as a
subprocess and exchange JSON. The tests that need it carry the `server` marker (they need a third-party tool installed
by `make test`, like the Label Studio tests), so `make test-fast` and LABELWISE_SKIP_SERVER=1 leave them out.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from labelwise.annotation.base import AnnotationError, Batch, BatchItem
from labelwise.annotation.cvat import CvatFilesBackend, export_task_archive, from_config, import_export, parse_cvat_xml
from labelwise.archive import ArchiveError, safe_extract

REPO = Path(__file__).resolve().parents[1]
DM_PY = Path(os.environ.get("DM_VENV", REPO / ".venv-datumaro")) / "bin" / "python"
CLASSES = ("fish", "jellyfish", "penguin", "shark")
SPECS = [(640, 480, "a/tank.jpg"), (480, 640, "b/tank.jpg"), (333, 777, "c/odd.png"), (100, 40, "c/thin.png")]

READ = r"""
import json, sys, datumaro as dm
path, fmt = sys.argv[1], sys.argv[2]
ds = dm.Dataset.import_from(path, fmt)
cats = [c.name for c in ds.categories()[dm.AnnotationType.label]]
out = {"labels": cats, "items": {}}
for item in ds:
    h, w = item.media.size
    out["items"][item.id] = {"size": [w, h], "boxes": [[cats[a.label], a.x, a.y, a.w, a.h] for a in item.annotations if a.type == dm.AnnotationType.bbox]}
print(json.dumps(out))
"""

WRITE = r"""
import json, sys, datumaro as dm
spec = json.load(sys.stdin)
items = [dm.DatasetItem(id=it["id"], media=dm.Image.from_file(it["path"]),
                        annotations=[dm.Bbox(*b[1:], label=spec["labels"].index(b[0])) for b in it["boxes"]])
         for it in spec["items"]]
ds = dm.Dataset.from_iterable(items, categories=spec["labels"])
ds.export(sys.argv[1], sys.argv[2], save_media=True)
"""


def datumaro(script: str, *args: str, stdin: str | None = None) -> str:
    if os.environ.get("LABELWISE_SKIP_SERVER") == "1":
        pytest.skip("LABELWISE_SKIP_SERVER=1: tests that need the third-party tool venvs skipped on purpose")
    if not DM_PY.exists():
        pytest.fail(f"datumaro is not installed in {DM_PY.parent.parent}. Run `make test` (scripts/label-studio.sh init "
                    "installs it), or `bash scripts/label-studio.sh datumaro`.", pytrace=False)
    proc = subprocess.run([str(DM_PY), "-c", script, *args], input=stdin, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def make_batch(root: Path, round_: int = 2) -> Batch:
    items = []
    for rank, (w, h, rel) in enumerate(SPECS, start=1):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.frombytes("RGB", (w, h), os.urandom(w * h * 3)).save(path)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        preds = ((rank % 4, 0.5, 0.5, 0.5, 0.25, 0.8), (0, 0.25, 0.75, 0.125, 0.25, 0.3))
        items.append(BatchItem(rank, sha, path, w, h, rank, 1 / rank, {}, "", preds))
    return Batch(round_, f"r{round_}-cafe", CLASSES, tuple(items))


@pytest.mark.server
def test_datumaro_reads_our_task_archive(tmp_path):
    batch = make_batch(tmp_path / "pool")
    out = export_task_archive(batch, tmp_path / "out" / "round-2.zip")
    safe_extract(out, tmp_path / "unpacked", suffixes=None)  # our own archive: the images too
    assert (tmp_path / "unpacked" / "images.txt").read_text().split() == [f"images/{i.staged_name}" for i in batch.items]
    got = json.loads(datumaro(READ, str(tmp_path / "unpacked"), "cvat"))
    assert got["labels"] == list(CLASSES)
    assert set(got["items"]) == {Path(i.staged_name).stem for i in batch.items}  # same stem, two folders: no collision
    for item in batch.items:
        entry = got["items"][Path(item.staged_name).stem]
        assert entry["size"] == [item.width, item.height]
        want = [[CLASSES[c], (cx - w / 2) * item.width, (cy - h / 2) * item.height, w * item.width, h * item.height] for c, cx, cy, w, h, _ in item.predictions]
        assert [b[0] for b in entry["boxes"]] == [b[0] for b in want]
        for g, k in zip(entry["boxes"], want):
            assert g[1:] == pytest.approx(k[1:], abs=0.011)  # datumaro keeps CVAT's two decimals


def known_boxes(item):
    # pixel boxes with two-decimal corners (what CVAT writes), in a class order that is NOT ours
    W, H = item.width, item.height
    return [["shark", 10.0, 20.0, W / 2, H / 4], ["fish", 0.0, 0.0, float(W), float(H)], ["penguin", W - 12.5, H - 8.25, 12.5, 8.25]]


@pytest.mark.server
@pytest.mark.parametrize("fmt", ["cvat", "yolo"])
def test_we_import_what_datumaro_exports(tmp_path, fmt):
    batch = make_batch(tmp_path / "pool")
    spec = {
        "labels": ["shark", "penguin", "fish", "jellyfish"],
        "items": [{"id": Path(i.staged_name).stem, "path": str(i.path), "boxes": known_boxes(i) if n < 3 else []} for n, i in enumerate(batch.items)],
    }
    export_dir = tmp_path / "export"
    datumaro(WRITE, str(export_dir), fmt, stdin=json.dumps(spec))
    archive = tmp_path / f"export-{fmt}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(export_dir.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(export_dir).as_posix())
    result = import_export(archive, batch)
    assert result.problems == ()
    got = {a.sha256: a for a in result.labels}
    assert set(got) == {i.sha256 for i in batch.items}
    for n, item in enumerate(batch.items):
        ann = got[item.sha256]
        assert ann.status == "labeled"
        want = [] if n >= 3 else [(CLASSES.index(lab), (x + w / 2) / item.width, (y + h / 2) / item.height, w / item.width, h / item.height) for lab, x, y, w, h in known_boxes(item)]
        assert [b[0] for b in ann.boxes] == [b[0] for b in want]
        for g, k in zip(ann.boxes, want):
            assert g[1:] == pytest.approx(k[1:], abs=1e-6)
    assert import_export(export_dir, batch) == result  # an unpacked folder reads the same


def test_problems_name_file_and_line(tmp_path):
    batch = make_batch(tmp_path / "pool")
    a, b, c, d = batch.items
    xml = f"""<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <image id="0" name="{a.staged_name}" width="640" height="480">
    <box label="starfish" xtl="1" ytl="1" xbr="10" ybr="10" occluded="0"/>
  </image>
  <image id="1" name="images/{b.staged_name}" width="480" height="640">
    <box label="fish" xtl="1" ytl="1" xbr="10" ybr="10" rotation="15" occluded="0"/>
    <polygon label="fish" points="1,1;5,5;1,5" occluded="0"/>
  </image>
  <image id="2" name="odd.png" width="333" height="777">
    <box label="shark" xtl="300" ytl="1" xbr="340" ybr="10" occluded="0"/>
  </image>
  <image id="3" name="thin.png" width="100" height="40">
  </image>
  <image id="4" name="stranger.jpg" width="10" height="10"/>
</annotations>
"""
    path = tmp_path / "annotations.xml"
    path.write_text(xml)
    result = parse_cvat_xml(path, batch)
    assert [(lab.sha256, lab.boxes, lab.status) for lab in result.labels] == [(d.sha256, (), "labeled")]  # original name, unique
    problems: dict = {}
    for p in result.problems:  # one Problem per bad shape, each one line
        problems[p.sha256] = problems.get(p.sha256, "") + str(p) + "\n"
        assert "\n" not in str(p) and p.task_id == "annotations.xml"
    assert [p.region for p in result.problems if p.sha256 == b.sha256] == ["line 8", "line 9"]
    assert "line 5: unknown label 'starfish'" in problems[a.sha256] and "xml line 4 " in problems[a.sha256]
    assert "rotated by 15" in problems[b.sha256] and "line 9: a polygon" in problems[b.sha256]
    assert "line 12:" in problems[c.sha256] and "outside" in problems[c.sha256]
    assert "stranger.jpg" in problems[None] and "line 16 " in problems[None]
    # a file changed since selection
    d.path.write_bytes(d.path.read_bytes() + b"x")
    changed = {p.sha256: p.message for p in parse_cvat_xml(path, batch).problems}
    assert parse_cvat_xml(path, batch).held == (a.sha256, b.sha256, c.sha256, d.sha256)
    assert "changed" in changed[d.sha256] and "line 14" in changed[d.sha256]
    # an ambiguous original name (two tank.jpg) is not guessed
    path.write_text(f'<annotations><image id="0" name="tank.jpg" width="640" height="480"/></annotations>')
    res = parse_cvat_xml(path, batch)
    assert res.labels == () and "not unique" in res.problems[0].message


def test_doctype_and_garbage_are_refused(tmp_path):
    batch = make_batch(tmp_path / "pool")
    bomb = tmp_path / "bomb.xml"
    bomb.write_text('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xx">]><annotations>&x;</annotations>')
    with pytest.raises(AnnotationError, match="DOCTYPE"):
        parse_cvat_xml(bomb, batch)
    (tmp_path / "bad.xml").write_text("<annotations><image></annotations>")
    with pytest.raises(AnnotationError, match="bad.xml: not well-formed XML"):
        parse_cvat_xml(tmp_path / "bad.xml", batch)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AnnotationError, match="neither"):
        import_export(empty, batch)


def test_files_backend_round(tmp_path):
    batch = make_batch(tmp_path / "pool")
    be = from_config({}, None, tmp_path / "ws", CLASSES)
    assert isinstance(be, CvatFilesBackend)
    be.push(batch)
    archive = tmp_path / "ws" / "cvat" / "outbox" / "round-2.zip"
    mtime = archive.stat().st_mtime_ns
    be.push(batch)
    assert archive.stat().st_mtime_ns == mtime  # idempotent
    assert be.progress(batch).done == 0
    # a person returns the pre-annotations unchanged: CVAT's export is our XML
    with zipfile.ZipFile(archive) as zf:
        (be.inbox / "annotations.xml").write_bytes(zf.read("annotations.xml"))
    assert be.progress(batch).done == 4
    labels = {a.sha256: a for a in be.pull(batch).labels}
    for item in batch.items:
        assert [b[0] for b in labels[item.sha256].boxes] == [p[0] for p in item.predictions]
        for g, p in zip(labels[item.sha256].boxes, item.predictions):
            assert g[1:] == pytest.approx(p[1:5], abs=1.1e-3 / min(item.width, item.height))
    with pytest.raises(AnnotationError, match="environment"):
        from_config({"url": "http://cvat", "password": "x"}, None, tmp_path, CLASSES)


# --- safe unpacking ---------------------------------------------------------------------------------------------------


def _zip(path: Path, members: dict[str, bytes], link: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if link:
            info = zipfile.ZipInfo(link)
            info.create_system = 3
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")
    return path


@pytest.mark.parametrize(
    "members, link, words",
    [
        ({"ok.txt": b"1", "../evil.txt": b"x"}, None, "leave the target"),
        ({"a/../../evil.txt": b"x"}, None, "leave the target"),
        ({"/etc/evil.txt": b"x"}, None, "absolute"),
        ({"C:/evil.txt": b"x"}, None, "absolute"),
        ({"ok.txt": b"1"}, "link", "symbolic link"),
    ],
)
def test_safe_extract_refuses_escapes(tmp_path, members, link, words):
    archive = _zip(tmp_path / "bad.zip", members, link)
    target = tmp_path / "target"
    with pytest.raises(ArchiveError, match=words):
        safe_extract(archive, target)
    assert not target.exists() or not any(target.iterdir())
    assert not (tmp_path / "evil.txt").exists()


def test_safe_extract_tar_and_zip(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "a.txt").write_text("a")
    os.symlink("/etc/passwd", src / "link")
    with tarfile.open(tmp_path / "bad.tar.gz", "w:gz") as tf:
        tf.add(src / "d" / "a.txt", "d/a.txt")
        tf.add(src / "link", "link")
    with pytest.raises(ArchiveError, match="is a link"):
        safe_extract(tmp_path / "bad.tar.gz", tmp_path / "t1")
    with tarfile.open(tmp_path / "good.tgz", "w:gz") as tf:
        tf.add(src / "d" / "a.txt", "d/a.txt")
    assert safe_extract(tmp_path / "good.tgz", tmp_path / "t2") == [tmp_path / "t2" / "d" / "a.txt"]
    good = _zip(tmp_path / "good.zip", {"x/y.txt": b"yy", "./z.txt": b"z"})
    written = safe_extract(good, tmp_path / "t3")
    assert sorted(p.read_bytes() for p in written) == [b"yy", b"z"]
    with pytest.raises(ArchiveError, match="already exists"):
        safe_extract(good, tmp_path / "t3")
    with pytest.raises(ArchiveError, match="limit"):
        safe_extract(good, tmp_path / "t4", max_bytes=1)
    (tmp_path / "junk.zip").write_bytes(b"not an archive")
    with pytest.raises(ArchiveError, match="not a zip or tar"):
        safe_extract(tmp_path / "junk.zip", tmp_path / "t5")
