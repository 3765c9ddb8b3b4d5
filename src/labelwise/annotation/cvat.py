"""CVAT through its files (no server needed) and, for users who have one, a live `cvat-sdk` backend.

Files (`CvatFilesBackend`, the tested path):

* `export_task_archive(batch, out)` writes a zip CVAT can take: `annotations.xml` in "CVAT for images 1.1" with the
  model's boxes as pre-annotations (`source="auto"`), `images/<staged_name>` copies of the pixels (optional) and
  `images.txt`, the image list. In CVAT: create a task with the labels of `annotations.xml` and the files from
  `images/`, then Actions > Upload annotations > "CVAT 1.1" with `annotations.xml` (or, for a project, Import dataset
  > "CVAT 1.1" with the whole zip).
* `import_export(path, batch)` reads what CVAT exports, "CVAT for images 1.1" (zip or folder with an .xml) or
  "YOLO 1.1" (obj.names + obj_train_data/*.txt), and matches image names to the batch by `BatchItem.staged_name`
  (or the original file name when that is unique in the batch). Boxes are converted by class NAME; unknown labels,
  rotated boxes, boxes outside the image, other shapes and size mismatches are `Problem`s naming the file and line.
  Every image the export lists counts as finished (an image with no boxes is a valid "no objects" image): export
  when the job is done.

Live (`CvatBackend`): the same files driven through `cvat-sdk` (imported lazily; `pip install labelwise[cvat]`).
UNTESTED HERE: no CVAT server can run on the machines labelwise is developed on (it needs Docker).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import xml.parsers.expat
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from labelwise.annotation.base import (
    AnnotatedImage,
    AnnotationError,
    AnnotationProgress,
    BackendState,
    Batch,
    BatchItem,
    Problem,
    PullResult,
    YoloBox,
)
from labelwise.archive import ArchiveError, safe_extract

# Float noise allowed at the image border, in pixels (CVAT writes two decimals) / in fractions for YOLO files.
PIXEL_TOLERANCE = 0.01
FRACTION_TOLERANCE = 1e-6
SHAPES = {"box", "polygon", "polyline", "points", "ellipse", "mask", "cuboid", "skeleton"}


# --------------------------------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------------------------------


def _num(v: float) -> str:
    return f"{v:.3f}"


def cvat_xml(batch: Batch, task_name: str | None = None) -> bytes:
    """The batch as "CVAT for images 1.1" XML with the model's boxes as pre-annotations (pixel corners)."""
    name = task_name or f"labelwise round {batch.round} ({batch.model_version})"
    out = [
        '<?xml version="1.0" encoding="utf-8"?>',
        "<annotations>",
        "  <version>1.1</version>",
        "  <meta>",
        "    <task>",
        f"      <name>{_text(name)}</name>",
        f"      <size>{len(batch.items)}</size>",
        "      <mode>annotation</mode>",
        "      <labels>",
    ]
    for cls in batch.classes:
        out += ["        <label>", f"          <name>{_text(cls)}</name>", "          <type>rectangle</type>", "          <attributes/>", "        </label>"]
    out += ["      </labels>", "    </task>", "  </meta>"]
    for idx, item in enumerate(batch.items):
        out.append(f'  <image id="{idx}" name={quoteattr(item.staged_name)} width="{item.width}" height="{item.height}">')
        for cid, cx, cy, w, h, _conf in item.predictions:
            if not 0 <= cid < len(batch.classes):
                raise AnnotationError(f"Image {item.path} has a predicted box of class id {cid}; the workspace has {len(batch.classes)} classes.")
            xtl, ytl = (cx - w / 2) * item.width, (cy - h / 2) * item.height
            xbr, ybr = (cx + w / 2) * item.width, (cy + h / 2) * item.height
            out.append(
                f"    <box label={quoteattr(batch.classes[cid])} source=\"auto\" occluded=\"0\" "
                f'xtl="{_num(xtl)}" ytl="{_num(ytl)}" xbr="{_num(xbr)}" ybr="{_num(ybr)}" z_order="0"/>'
            )
        out.append("  </image>")
    out.append("</annotations>")
    return ("\n".join(out) + "\n").encode("utf-8")


def _text(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def export_task_archive(batch: Batch, out: Path, *, include_images: bool = True) -> Path:
    """Write the CVAT task archive (annotations.xml, images.txt, images/...) atomically to `out`; returns `out`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("annotations.xml", cvat_xml(batch))
            zf.writestr("images.txt", "".join(f"images/{i.staged_name}\n" for i in batch.items))
            if include_images:
                for item in batch.items:
                    if not item.path.is_file():
                        raise AnnotationError(f"Image {item.path} of round {batch.round} is missing; restore it and export again.")
                    zf.write(item.path, f"images/{item.staged_name}", compress_type=zipfile.ZIP_STORED)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


# --------------------------------------------------------------------------------------------------------------------
# import
# --------------------------------------------------------------------------------------------------------------------


class _Matcher:
    """Image names in an export -> batch items, by staged name, else by an original file name unique in the batch."""

    def __init__(self, batch: Batch) -> None:
        self.staged = {i.staged_name: i for i in batch.items}
        self.staged_stem = {Path(i.staged_name).stem: i for i in batch.items}
        originals: dict[str, list[BatchItem]] = {}
        stems: dict[str, list[BatchItem]] = {}
        for i in batch.items:
            originals.setdefault(i.path.name, []).append(i)
            stems.setdefault(i.path.stem, []).append(i)
        self.original = {k: v[0] for k, v in originals.items() if len(v) == 1}
        self.original_stem = {k: v[0] for k, v in stems.items() if len(v) == 1}
        self.ambiguous = {k for k, v in originals.items() if len(v) > 1} | {k for k, v in stems.items() if len(v) > 1}

    def by_name(self, name: str) -> BatchItem | None:
        base = name.replace("\\", "/").rsplit("/", 1)[-1]
        return self.staged.get(base) or self.original.get(base)

    def by_stem(self, stem: str) -> BatchItem | None:
        return self.staged_stem.get(stem) or self.original_stem.get(stem)


@dataclass
class _Image:
    name: str
    line: int
    attrs: dict[str, str]
    shapes: list[tuple[str, dict[str, str], int]] = field(default_factory=list)


def _read_cvat_xml(path: Path) -> tuple[list[_Image], list[int]]:
    """Images (with their shapes) and the lines of video tracks, with line numbers; DTDs are refused."""
    images: list[_Image] = []
    tracks: list[int] = []
    stack: list[str] = []
    parser = xml.parsers.expat.ParserCreate()

    def start(tag: str, attrs: dict[str, str]) -> None:
        line = parser.CurrentLineNumber
        if tag == "image" and stack == ["annotations"]:
            images.append(_Image(attrs.get("name", ""), line, attrs))
        elif tag == "track" and stack == ["annotations"]:
            tracks.append(line)
        elif len(stack) == 2 and stack[1] == "image" and images:
            images[-1].shapes.append((tag, attrs, line))
        stack.append(tag)

    def end(tag: str) -> None:
        stack.pop()

    def doctype(*args: Any) -> None:
        raise AnnotationError(f"{path}: a DOCTYPE declaration is not allowed in a CVAT export; export it again from CVAT.")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.StartDoctypeDeclHandler = doctype
    try:
        with open(path, "rb") as fh:
            parser.ParseFile(fh)
    except xml.parsers.expat.ExpatError as exc:
        raise AnnotationError(f"{path}: not well-formed XML ({exc}); export it again from CVAT as 'CVAT for images 1.1'.") from None
    return images, tracks


def parse_cvat_xml(path: Path, batch: Batch, *, check_hashes: bool = True) -> PullResult:
    images, tracks = _read_cvat_xml(path)
    problems: list[Problem] = []
    if tracks:
        problems.append(
            Problem(None, f"{path.name} line {tracks[0]}", f"{path.name} line {tracks[0]}: {len(tracks)} video track(s); "
                    "export the task as 'CVAT for images 1.1', not 'CVAT for video 1.1'.")
        )
    matcher = _Matcher(batch)
    by_class = {name: cid for cid, name in enumerate(batch.classes)}
    labels: dict[str, AnnotatedImage] = {}
    for img in images:
        where = f"{path.name} line {img.line} (image {img.name!r})"
        item = matcher.by_name(img.name)
        if item is None:
            hint = " (its name is not unique in the batch)" if img.name.rsplit("/", 1)[-1] in matcher.ambiguous else ""
            problems.append(Problem(None, where, f"{where} is not an image of round {batch.round}{hint}; it was ignored."))
            continue
        try:
            width, height = int(img.attrs["width"]), int(img.attrs["height"])
        except (KeyError, ValueError):
            problems.append(Problem(item.sha256, where, f"{where} has no width/height; export it again from CVAT."))
            continue
        if (width, height) != (item.width, item.height):
            problems.append(Problem(item.sha256, where, f"{where} is {width}x{height} in CVAT but {item.width}x{item.height} "
                                    "when selected: the image changed; let it go back to the pool."))
            continue
        boxes: list[YoloBox] = []
        errors: list[str] = []
        for tag, attrs, line in img.shapes:
            if tag == "tag":
                continue
            if tag != "box":
                errors.append(f"line {line}: a {tag} is not a box; draw rectangles only")
                continue
            label = attrs.get("label", "")
            if label not in by_class:
                errors.append(f"line {line}: unknown label {label!r} (classes: {', '.join(batch.classes)})")
                continue
            try:
                rotation = float(attrs.get("rotation", 0) or 0)
                xtl, ytl, xbr, ybr = (float(attrs[k]) for k in ("xtl", "ytl", "xbr", "ybr"))
            except (KeyError, ValueError):
                errors.append(f"line {line}: box without numeric xtl/ytl/xbr/ybr")
                continue
            if abs(rotation % 360.0) > 1e-6 and abs(rotation % 360.0 - 360.0) > 1e-6:
                errors.append(f"line {line}: box ({label}) is rotated by {rotation:g} degrees; YOLO boxes are axis-aligned")
                continue
            if xbr <= xtl or ybr <= ytl:
                errors.append(f"line {line}: box ({label}) is empty")
                continue
            tol = PIXEL_TOLERANCE
            if xtl < -tol or ytl < -tol or xbr > width + tol or ybr > height + tol:
                errors.append(f"line {line}: box ({label}) {xtl:g},{ytl:g}-{xbr:g},{ybr:g} reaches outside the {width}x{height} image")
                continue
            xtl, ytl, xbr, ybr = max(xtl, 0.0), max(ytl, 0.0), min(xbr, float(width)), min(ybr, float(height))  # noise only
            boxes.append((by_class[label], (xtl + xbr) / 2 / width, (ytl + ybr) / 2 / height, (xbr - xtl) / width, (ybr - ytl) / height))
        _finish(item, boxes, errors, where, f"cvat {path.name} line {img.line}", labels, problems, check_hashes)
    return PullResult(tuple(labels.values()), tuple(problems))


def parse_yolo_export(folder: Path, batch: Batch, *, check_hashes: bool = True) -> PullResult:
    """CVAT's "YOLO 1.1" export (darknet layout): obj.names and one txt per image, class ids in obj.names order."""
    names_files = sorted(folder.rglob("obj.names"))
    if not names_files:
        raise AnnotationError(f"{folder}: no obj.names; this is not a 'YOLO 1.1' export.")
    names_path = names_files[0]
    names = [ln.strip() for ln in names_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    by_class = {name: cid for cid, name in enumerate(batch.classes)}
    matcher = _Matcher(batch)
    labels: dict[str, AnnotatedImage] = {}
    problems: list[Problem] = []
    for txt in sorted(p for p in names_path.parent.rglob("*.txt") if p.parent != names_path.parent):
        rel = txt.relative_to(folder).as_posix()
        item = matcher.by_stem(txt.stem)
        if item is None:
            problems.append(Problem(None, rel, f"{rel} is not the label file of an image of round {batch.round}; it was ignored."))
            continue
        boxes: list[YoloBox] = []
        errors: list[str] = []
        for n, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                if len(parts) != 5:
                    raise ValueError
                k = int(parts[0])
                cx, cy, w, h = (float(v) for v in parts[1:])
            except ValueError:
                errors.append(f"line {n}: expected 'class cx cy w h', got {line.strip()!r}")
                continue
            if not 0 <= k < len(names):
                errors.append(f"line {n}: class {k} is not in obj.names ({len(names)} names)")
                continue
            if names[k] not in by_class:
                errors.append(f"line {n}: unknown label {names[k]!r} (classes: {', '.join(batch.classes)})")
                continue
            tol = FRACTION_TOLERANCE
            if w <= 0 or h <= 0 or cx - w / 2 < -tol or cy - h / 2 < -tol or cx + w / 2 > 1 + tol or cy + h / 2 > 1 + tol:
                errors.append(f"line {n}: box ({names[k]}) {cx:g} {cy:g} {w:g} {h:g} is empty or reaches outside the image")
                continue
            boxes.append((by_class[names[k]], cx, cy, w, h))
        _finish(item, boxes, errors, rel, f"cvat yolo {rel}", labels, problems, check_hashes)
    return PullResult(tuple(labels.values()), tuple(problems))


def _finish(item, boxes, errors, where, source, labels, problems, check_hashes) -> None:
    if errors:
        problems.append(Problem(item.sha256, where, f"{where}: " + "; ".join(errors) + ". Correct it in CVAT and export again."))
        return
    if check_hashes:
        from labelwise.annotation.label_studio import file_sha256

        try:
            changed = file_sha256(item.path) != item.sha256
        except OSError:
            changed = True
        if changed:
            problems.append(Problem(item.sha256, where, f"{where}: the image file {item.path} changed or vanished since it "
                                    "was selected; its boxes may not fit. Restore the file or let the image go back to the pool."))
            return
    labels[item.sha256] = AnnotatedImage(item.sha256, "labeled", tuple(boxes), None, None, None, source)


def import_export(path: Path, batch: Batch, *, check_hashes: bool = True) -> PullResult:
    """Read a CVAT export (a .zip or an unpacked folder), "CVAT for images 1.1" or "YOLO 1.1"."""
    path = Path(path)
    if path.is_dir():
        return _import_folder(path, batch, check_hashes)
    if not path.is_file():
        raise AnnotationError(f"{path}: no such CVAT export.")
    with tempfile.TemporaryDirectory(prefix="labelwise-cvat-") as tmp:
        try:
            safe_extract(path, Path(tmp) / "x")
        except ArchiveError as exc:
            raise AnnotationError(str(exc)) from None
        result = _import_folder(Path(tmp) / "x", batch, check_hashes)
    return result


def _import_folder(folder: Path, batch: Batch, check_hashes: bool) -> PullResult:
    xmls = sorted(folder.rglob("*.xml"))
    if xmls:
        if len(xmls) > 1:
            raise AnnotationError(f"{folder}: {len(xmls)} XML files ({', '.join(p.name for p in xmls[:5])}); give one CVAT export at a time.")
        return parse_cvat_xml(xmls[0], batch, check_hashes=check_hashes)
    if any(folder.rglob("obj.names")):
        return parse_yolo_export(folder, batch, check_hashes=check_hashes)
    raise AnnotationError(
        f"{folder}: neither a 'CVAT for images 1.1' export (annotations.xml) nor a 'YOLO 1.1' export (obj.names); "
        "export the task from CVAT in one of these formats."
    )


# --------------------------------------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------------------------------------


class CvatFilesBackend:
    """CVAT without a server: push writes `outbox/round-<n>.zip`; people drop CVAT exports into `inbox/`.

    pull reads every export in the inbox (oldest first, so for an image in two exports the newest file wins);
    progress counts the batch's images found there.
    """

    name = "cvat"

    def __init__(self, outbox: Path, inbox: Path, *, include_images: bool = True, check_hashes: bool = True) -> None:
        self.outbox = Path(outbox)
        self.inbox = Path(inbox)
        self.include_images = include_images
        self.check_hashes = check_hashes

    def archive_path(self, batch: Batch) -> Path:
        return self.outbox / f"round-{batch.round}.zip"

    def push(self, batch: Batch) -> None:
        out = self.archive_path(batch)
        if not out.exists():  # idempotent: the same round is written once
            export_task_archive(batch, out, include_images=self.include_images)
        self.inbox.mkdir(parents=True, exist_ok=True)

    def _exports(self) -> list[Path]:
        if not self.inbox.is_dir():
            return []
        found = [p for p in self.inbox.iterdir() if not p.name.startswith(".") and (p.is_dir() or p.suffix.lower() == ".zip" or p.suffix.lower() == ".xml")]
        return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))

    def pull(self, batch: Batch) -> PullResult:
        labels: dict[str, AnnotatedImage] = {}
        problems: list[Problem] = []
        for export in self._exports():
            if export.suffix.lower() == ".xml":
                result = parse_cvat_xml(export, batch, check_hashes=self.check_hashes)
            else:
                result = import_export(export, batch, check_hashes=self.check_hashes)
            for lab in result.labels:
                labels[lab.sha256] = lab
            problems.extend(p for p in result.problems if p.sha256 is not None)
        fixed = set(labels)
        return PullResult(tuple(labels.values()), tuple(p for p in problems if p.sha256 not in fixed))

    def progress(self, batch: Batch) -> AnnotationProgress:
        return self.pull(batch).counts(len(batch.items))


class CvatBackend:
    """A live CVAT server through `cvat-sdk` (`pip install labelwise[cvat]`). UNTESTED HERE: no CVAT server can run
    on the machines labelwise is developed on; the files path (`CvatFilesBackend`) is what the tests cover.

    push creates one task per round (labels = classes, images uploaded under their staged names, pre-annotations
    uploaded as CVAT 1.1); progress counts images of completed jobs; pull exports "CVAT for images 1.1" without
    images and reads it with `import_export`. Credentials come from CVAT_USERNAME / CVAT_PASSWORD (or
    CVAT_ACCESS_TOKEN) in the environment only.
    """

    name = "cvat"

    def __init__(self, url: str, state: BackendState, workspace: Path, classes: Sequence[str], *, project_id: int | None = None) -> None:
        self.url = url.rstrip("/")
        self.state = state
        self.workspace = Path(workspace)
        self.classes = tuple(classes)
        self.project_id = project_id

    def _client(self):
        try:
            from cvat_sdk import make_client
        except ImportError:
            raise AnnotationError("The CVAT server backend needs cvat-sdk: pip install 'labelwise[cvat]'.") from None
        user, password = os.environ.get("CVAT_USERNAME"), os.environ.get("CVAT_PASSWORD")
        token = os.environ.get("CVAT_ACCESS_TOKEN")
        try:
            if token:
                client = make_client(self.url)
                client.api_client.set_default_header("Authorization", f"Bearer {token}")
                return client
            if not (user and password):
                raise AnnotationError("Set CVAT_USERNAME and CVAT_PASSWORD (or CVAT_ACCESS_TOKEN) in the environment for the CVAT server.")
            return make_client(self.url, credentials=(user, password))
        except AnnotationError:
            raise
        except Exception as exc:  # the SDK raises many kinds; never echo credentials
            raise AnnotationError(f"Cannot log in to CVAT at {self.url} ({type(exc).__name__}); check the server and the credentials.") from None

    def _task_key(self, batch: Batch) -> str:
        return f"cvat/round/{batch.round}/task_id"

    def push(self, batch: Batch) -> None:
        if self.state.get(self._task_key(batch)) is not None:
            return
        from cvat_sdk.core.proxies.tasks import ResourceType

        with tempfile.TemporaryDirectory(prefix="labelwise-cvat-") as tmp, self._client() as client:
            files = []
            for item in batch.items:  # upload under the staged names: two files with the same name never collide
                link = Path(tmp) / item.staged_name
                os.symlink(item.path, link)
                files.append(str(link))
            xml_path = Path(tmp) / "annotations.xml"
            xml_path.write_bytes(cvat_xml(batch))
            spec: dict[str, Any] = {"name": f"labelwise round {batch.round} ({batch.model_version})"}
            if self.project_id is not None:
                spec["project_id"] = self.project_id
            else:
                spec["labels"] = [{"name": c, "type": "rectangle"} for c in batch.classes]
            task = client.tasks.create_from_data(
                spec=spec, resource_type=ResourceType.LOCAL, resources=files,
                annotation_path=str(xml_path), annotation_format="CVAT 1.1",
            )
            self.state.set(self._task_key(batch), int(task.id))

    def _task(self, client, batch: Batch):
        tid = self.state.get(self._task_key(batch))
        if tid is None:
            raise AnnotationError(f"Round {batch.round} has not been pushed to CVAT yet; run `labelwise annotate push` first.")
        try:
            return client.tasks.retrieve(int(tid))
        except Exception:
            raise AnnotationError(f"CVAT task {tid} of round {batch.round} is not reachable at {self.url} (deleted?); nothing was written.") from None

    def progress(self, batch: Batch) -> AnnotationProgress:
        with self._client() as client:
            task = self._task(client, batch)
            done = sum(j.stop_frame - j.start_frame + 1 for j in task.get_jobs() if getattr(j, "state", "") == "completed")
        return AnnotationProgress(total=len(batch.items), accepted=min(done, len(batch.items)))

    def pull(self, batch: Batch) -> PullResult:
        with tempfile.TemporaryDirectory(prefix="labelwise-cvat-") as tmp, self._client() as client:
            task = self._task(client, batch)
            out = Path(tmp) / "export.zip"
            task.export_dataset("CVAT for images 1.1", str(out), include_images=False)
            return import_export(out, batch)


def from_config(options: dict, state: BackendState, workspace: Path, classes: tuple[str, ...]):
    """Build a CVAT backend from the `annotation:` section of labelwise.yaml.

    Without `url`: `CvatFilesBackend` with `outbox` (default <workspace>/cvat/outbox), `inbox` (default
    <workspace>/cvat/inbox), `include_images` (true), `check_hashes` (true). With `url`: the live, untested
    `CvatBackend` (`project_id` optional); credentials from the environment only.
    """
    options = dict(options or {})
    secrets = sorted(k for k in options if k.lower() in {"password", "token", "api_key", "access_token"})
    if secrets:
        raise AnnotationError(f"annotation.{secrets[0]} must not be in labelwise.yaml: set CVAT_USERNAME/CVAT_PASSWORD or CVAT_ACCESS_TOKEN in the environment.")
    workspace = Path(workspace)
    if options.get("url"):
        return CvatBackend(str(options["url"]), state, workspace, classes, project_id=options.get("project_id"))

    def path(key: str, default: str) -> Path:
        p = Path(os.path.expanduser(str(options.get(key) or default)))
        return p if p.is_absolute() else workspace / p

    return CvatFilesBackend(
        path("outbox", "cvat/outbox"),
        path("inbox", "cvat/inbox"),
        include_images=bool(options.get("include_images", True)),
        check_hashes=bool(options.get("check_hashes", True)),
    )
