"""CVAT through its files (no server needed) and through its REST API (a live server).

Files (`CvatFilesBackend`):

* `export_task_archive(batch, out)` writes a zip CVAT can take: `annotations.xml` in "CVAT for images 1.1" with the
  model's boxes as pre-annotations (`source="auto"`), `images/<staged_name>` copies of the pixels (optional) and
  `images.txt`, the image list. In CVAT: create a task with the labels of `annotations.xml` and the files from
  `images/`, then Actions > Upload annotations > "CVAT 1.1" with `annotations.xml` (or, for a project, Import dataset
  > "CVAT 1.1" with the whole zip).
* `import_export(path, batch)` reads what CVAT exports, "CVAT for images 1.1" (zip or folder with an .xml) or
  "YOLO 1.1" (obj.names + obj_train_data/*.txt, read by `labelwise.pool.parse_yolo_label`), and matches image names to
  the batch by `BatchItem.staged_name` (or the original file name when that is unique in the batch). Boxes are
  converted by class NAME; unknown labels, rotated boxes, boxes outside the image, other shapes and size mismatches
  are `Problem`s naming the file and line. Every image the export lists counts as finished (an image with no boxes
  is a valid "no objects" image): export when the job is done.

Live (`CvatBackend`): the REST API of CVAT 2.x over httpx (no cvat-sdk), written against CVAT's documented API
(`cvat/schema.yml`, 2.17) and tested against responses shaped after it (tests/fixtures/cvat); NOT RUN AGAINST A LIVE
SERVER here (CVAT needs Docker). One task per round, named deterministically (`<prefix> round <n> (<model version>)`),
so push is idempotent by name: it looks the task up before creating one, and a push killed between creating the
task and recording its id finds it again. Data are uploaded under the staged names; the model's boxes go in as
pre-annotations (source "auto"). Pull takes only frames of jobs a person finished (state "completed", or stage
"acceptance"): the pre-annotations of a job nobody finished are never taken as labels.

Box edges within `labelwise.boxes.EDGE_TOLERANCE` of the border (a fraction of the image side; times the width or
height for pixel corners) are clipped to the border; further out the box is refused.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
import xml.parsers.expat
import zipfile
from collections.abc import Collection, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import httpx

from labelwise.annotation.base import (
    AnnotatedImage,
    AnnotationError,
    AnnotationProgress,
    BackendState,
    Batch,
    BatchItem,
    FileCheck,
    Problem,
    PullResult,
    PushReport,
    RetireReport,
    TaskOutcome,
    YoloBox,
)
from labelwise.annotation.http import RetryPolicy, attempts_note, retrying_client
from labelwise.archive import ArchiveError, extracted
from labelwise.boxes import EDGE_TOLERANCE
from labelwise.pool import parse_yolo_label

log = logging.getLogger(__name__)

SHAPES = {"box", "polygon", "polyline", "points", "ellipse", "mask", "cuboid", "skeleton"}


def pixel_box(label: str, corners: Sequence[float], rotation: float, width: int, height: int,
              by_class: dict[str, int], classes: Sequence[str]) -> tuple[YoloBox | None, str | None]:
    """A CVAT box (pixel corners xtl, ytl, xbr, ybr) -> a YOLO box by class NAME, or the reason it cannot be one.

    Corners up to EDGE_TOLERANCE x the side past the border are float noise and clipped; further out is refused.
    """
    if label not in by_class:
        return None, f"unknown label {label!r} (classes: {', '.join(classes)}); give it one of the classes"
    try:
        xtl, ytl, xbr, ybr = (float(v) for v in corners)
    except (TypeError, ValueError):
        return None, f"box ({label}) without four numeric corners"
    if abs(float(rotation or 0.0) % 360.0) > 1e-6 and abs(float(rotation or 0.0) % 360.0 - 360.0) > 1e-6:
        return None, f"box ({label}) is rotated by {float(rotation):g} degrees; YOLO boxes are axis-aligned, redraw it without rotation"
    if not xbr > xtl or not ybr > ytl:
        return None, f"box ({label}) is empty"
    tx, ty = EDGE_TOLERANCE * width, EDGE_TOLERANCE * height
    if xtl < -tx or ytl < -ty or xbr > width + tx or ybr > height + ty:
        return None, (f"box ({label}) {xtl:g},{ytl:g}-{xbr:g},{ybr:g} reaches outside the {width}x{height} image; "
                      "move it inside the image")
    xtl, ytl, xbr, ybr = max(xtl, 0.0), max(ytl, 0.0), min(xbr, float(width)), min(ybr, float(height))  # noise only
    if not xbr > xtl or not ybr > ytl:
        return None, f"box ({label}) has no area inside the image"
    return (by_class[label], (xtl + xbr) / 2 / width, (ytl + ybr) / 2 / height, (xbr - xtl) / width, (ybr - ytl) / height), None


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


def parse_cvat_xml(path: Path, batch: Batch, *, check_hashes: bool = True, files: FileCheck | None = None) -> PullResult:
    images, tracks = _read_cvat_xml(path)
    problems: list[Problem] = []
    if tracks:
        where = f"{path.name} line {tracks[0]}"
        problems.append(Problem(None, where, task_id=path.name, region=f"line {tracks[0]}",
                                why=f"{len(tracks)} video track(s)",
                                fix="Export the task as 'CVAT for images 1.1', not 'CVAT for video 1.1'."))
    matcher = _Matcher(batch)
    by_class = {name: cid for cid, name in enumerate(batch.classes)}
    files = files or FileCheck()
    labels: dict[str, AnnotatedImage] = {}
    for img in images:
        where = f"{path.name} line {img.line} (image {img.name!r})"
        item = matcher.by_name(img.name)
        if item is None:
            hint = " (its name is not unique in the batch)" if img.name.rsplit("/", 1)[-1] in matcher.ambiguous else ""
            problems.append(Problem(None, where, task_id=path.name, image=img.name,
                                    why=f"not an image of round {batch.round}{hint}", fix="It was ignored."))
            continue
        common = dict(task_id=path.name, image=item.staged_name)
        try:
            width, height = int(img.attrs["width"]), int(img.attrs["height"])
        except (KeyError, ValueError):
            problems.append(Problem(item.sha256, where, why="the image has no width/height",
                                    fix="Export it again from CVAT.", **common))
            continue
        if (width, height) != (item.width, item.height):
            problems.append(Problem(item.sha256, where, why=f"it is {width}x{height} in CVAT but {item.width}x{item.height} "
                                    "when selected: the image changed", fix="Let it go back to the pool.", **common))
            continue
        boxes: list[YoloBox] = []
        errors: list[tuple[str, str]] = []
        for tag, attrs, line in img.shapes:
            if tag == "tag":
                continue
            if tag != "box":
                errors.append((f"line {line}", f"a {tag} is not a box; draw rectangles only"))
                continue
            box, why = pixel_box(attrs.get("label", ""), [attrs.get(k) for k in ("xtl", "ytl", "xbr", "ybr")],
                                 attrs.get("rotation", 0) or 0, width, height, by_class, batch.classes)
            if why is not None:
                errors.append((f"line {line}", why))
            else:
                boxes.append(box)
        _finish(item, boxes, errors, where, f"cvat:{path.name}:line={img.line}", labels, problems,
                files if check_hashes else None, path.name, "Correct it in CVAT and export again.")
    return _file_result(batch, labels, problems)


def parse_yolo_export(folder: Path, batch: Batch, *, check_hashes: bool = True, files: FileCheck | None = None) -> PullResult:
    """CVAT's "YOLO 1.1" export (darknet layout): obj.names and one txt per image, class ids in obj.names order.

    Each file is read by `labelwise.pool.parse_yolo_label` (the one YOLO txt parser), then class ids are mapped from
    obj.names to the workspace's classes by NAME."""
    names_files = sorted(folder.rglob("obj.names"))
    if not names_files:
        raise AnnotationError(f"{folder}: no obj.names; this is not a 'YOLO 1.1' export.")
    names_path = names_files[0]
    names = [ln.strip() for ln in names_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    by_class = {name: cid for cid, name in enumerate(batch.classes)}
    matcher = _Matcher(batch)
    files = files or FileCheck()
    labels: dict[str, AnnotatedImage] = {}
    problems: list[Problem] = []
    for txt in sorted(p for p in names_path.parent.rglob("*.txt") if p.parent != names_path.parent):
        rel = txt.relative_to(folder).as_posix()
        item = matcher.by_stem(txt.stem)
        if item is None:
            problems.append(Problem(None, rel, task_id=rel, why=f"not the label file of an image of round {batch.round}",
                                    fix="It was ignored."))
            continue
        boxes: list[YoloBox] = []
        errors: list[tuple[str, str]] = []
        try:
            parsed = parse_yolo_label(txt.read_text(encoding="utf-8"), len(names), rel)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            text = str(exc)
            m = re.match(rf"{re.escape(rel)}:(\d+): (.*)", text, re.S)
            errors.append((f"line {m.group(1)}", m.group(2)) if m else ("", text))
            parsed = []
        for k, cx, cy, w, h in parsed:
            if names[k] not in by_class:
                errors.append(("", f"class {k} of obj.names is the unknown label {names[k]!r} (classes: {', '.join(batch.classes)})"))
                continue
            boxes.append((by_class[names[k]], cx, cy, w, h))
        _finish(item, boxes, errors, rel, f"cvat:{rel}", labels, problems, files if check_hashes else None, rel,
                "Correct it in CVAT and export again.")
    return _file_result(batch, labels, problems)


def _finish(item: BatchItem, boxes: list[YoloBox], errors: list[tuple[str, str]], where: str, source: str,
            labels: dict[str, AnnotatedImage], problems: list[Problem], files: FileCheck | None, task_id: str,
            fix: str) -> None:
    common = dict(task_id=task_id, image=item.staged_name)
    if errors:
        for region, why in errors:
            problems.append(Problem(item.sha256, where, region=region or None, why=why, fix=fix, **common))
        return
    if files is not None:
        why = files.problem(item)
        if why is not None:
            problems.append(Problem(item.sha256, where, why=why,
                                    fix="Restore the file, or let the image go back to the pool.", **common))
            return
    labels[item.sha256] = AnnotatedImage(item.sha256, "labeled", tuple(boxes), None, None, None, source)


def _file_result(batch: Batch, labels: dict[str, AnnotatedImage], problems: list[Problem]) -> PullResult:
    """The outcome of each image from what one or more exports said: accepted, rejected (held) or pending."""
    rejected = {p.sha256 for p in problems if p.sha256 is not None} - set(labels)
    outcomes = tuple(
        TaskOutcome(i.sha256, "accepted" if i.sha256 in labels else "rejected" if i.sha256 in rejected else "pending",
                    i.staged_name, source=labels[i.sha256].source if i.sha256 in labels else "")
        for i in batch.items
    )
    return PullResult(tuple(labels.values()), tuple(problems), outcomes, tuple(o.sha256 for o in outcomes if o.status == "rejected"))


def import_export(path: Path, batch: Batch, *, check_hashes: bool = True) -> PullResult:
    """Read a CVAT export (a .zip or an unpacked folder), "CVAT for images 1.1" or "YOLO 1.1"."""
    path = Path(path)
    if path.is_dir():
        return _import_folder(path, batch, check_hashes)
    if not path.is_file():
        raise AnnotationError(f"{path}: no such CVAT export.")
    try:
        with extracted(path) as folder:
            return _import_folder(folder, batch, check_hashes)
    except ArchiveError as exc:
        raise AnnotationError(str(exc)) from None


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
# the files backend
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
        self._files = FileCheck()

    def archive_path(self, batch: Batch) -> Path:
        return self.outbox / f"round-{batch.round}.zip"

    def push(self, batch: Batch, *, finished: Collection[str] = ()) -> PushReport:
        out = self.archive_path(batch)
        created = not out.exists()
        if created:  # idempotent: the same round is written once
            export_task_archive(batch, out, include_images=self.include_images)
        self.inbox.mkdir(parents=True, exist_ok=True)
        return PushReport(batch.round, len(batch.items) if created else 0, 0 if created else len(batch.items), where=str(out))

    def _exports(self) -> list[Path]:
        if not self.inbox.is_dir():
            return []
        found = [p for p in self.inbox.iterdir() if not p.name.startswith(".") and (p.is_dir() or p.suffix.lower() == ".zip" or p.suffix.lower() == ".xml")]
        return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))

    def pull(self, batch: Batch) -> PullResult:
        labels: dict[str, AnnotatedImage] = {}
        problems: dict[str, list[Problem]] = {}
        for export in self._exports():
            if export.suffix.lower() == ".xml":
                result = parse_cvat_xml(export, batch, check_hashes=self.check_hashes, files=self._files)
            else:
                result = import_export(export, batch, check_hashes=self.check_hashes)
            # a newer export decides an image: its label, or its problems (the older label is then out of date)
            judged = {lab.sha256 for lab in result.labels} | {p.sha256 for p in result.problems if p.sha256}
            for sha in judged:
                labels.pop(sha, None)
                problems.pop(sha, None)
            for lab in result.labels:
                labels[lab.sha256] = lab
            for p in result.problems:
                if p.sha256 is not None:
                    problems.setdefault(p.sha256, []).append(p)
        return _file_result(batch, labels, [p for ps in problems.values() for p in ps])

    def progress(self, batch: Batch) -> AnnotationProgress:
        return self.pull(batch).counts()

    def retire(self, batch: Batch, *, keep: Collection[str] = ()) -> RetireReport:
        """Nothing is on a server: the archive stays in the outbox; say so."""
        return RetireReport(batch.round, kept=tuple(i.sha256 for i in batch.items),
                            details=(f"{self.archive_path(batch)}: a file, nothing to take back from annotators; "
                                     "tell them the batch was replaced",))


# --------------------------------------------------------------------------------------------------------------------
# the live server: a REST client and the backend
# --------------------------------------------------------------------------------------------------------------------

ENV_TOKEN = "CVAT_ACCESS_TOKEN"
ENV_USER = "CVAT_USERNAME"
ENV_PASSWORD = "CVAT_PASSWORD"
# A person finished the job: the annotator marked it completed, or a reviewer moved it to acceptance.
FINISHED_STATE = "completed"
FINISHED_STAGE = "acceptance"
# Shapes people draw; "auto" and "file" are machine-made (pre-annotations, imports).
PERSON_SOURCES = {"manual", "semi-auto", "consensus"}


class CvatNotFound(AnnotationError):
    """The server answered 404."""


class CvatClient:
    """The few CVAT REST calls labelwise needs. Credentials come from the environment only: a personal access token
    (CVAT_ACCESS_TOKEN, sent as `Authorization: Bearer`) or CVAT_USERNAME / CVAT_PASSWORD (HTTP basic auth). They are
    never logged or put into a message."""

    def __init__(self, url: str, *, timeout: float = 60.0, organization: str | None = None,
                 transport: httpx.BaseTransport | None = None, retry: RetryPolicy | None = None,
                 env: dict[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.url = url.rstrip("/")
        headers = {"Accept": "application/vnd.cvat+json, application/json"}
        auth: httpx.Auth | None = None
        if env.get(ENV_TOKEN):
            headers["Authorization"] = f"Bearer {env[ENV_TOKEN]}"
        elif env.get(ENV_USER) and env.get(ENV_PASSWORD):
            auth = httpx.BasicAuth(env[ENV_USER], env[ENV_PASSWORD])
        else:
            raise AnnotationError(f"No CVAT credentials: set {ENV_TOKEN} (a personal access token, Profile > Security in "
                                  f"CVAT) or {ENV_USER} and {ENV_PASSWORD} in the environment; never in labelwise.yaml.")
        if organization:
            headers["X-Organization"] = organization
        self._http = retrying_client(base_url=self.url, timeout=timeout, headers=headers, auth=auth,
                                     follow_redirects=False, transport=transport, retry=retry)

    def __repr__(self) -> str:
        return f"CvatClient({self.url!r})"

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, *, what: str, ok: Collection[int] = (200, 201, 202, 204), **kwargs: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise AnnotationError(f"CVAT at {self.url} did not answer in time while {what}; check the server, then run "
                                  "the command again.") from None
        except httpx.TransportError as exc:
            raise AnnotationError(f"Cannot reach CVAT at {self.url} while {what} ({type(exc).__name__}); start the "
                                  "server or fix annotation.url in labelwise.yaml, then run the command again.") from None
        if resp.status_code not in set(ok):
            self._raise_for(resp, what)
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise AnnotationError(f"CVAT at {self.url} answered {method} {path} with something that is not JSON while "
                                  f"{what}; is annotation.url the address of a CVAT server?") from None

    def _raise_for(self, resp: httpx.Response, what: str) -> None:
        code = resp.status_code
        detail = ""
        if "json" in resp.headers.get("content-type", ""):
            detail = ": " + " ".join(resp.text.split())[:400]
        if code in (401, 403):
            raise AnnotationError(f"CVAT at {self.url} refused the credentials (HTTP {code}) while {what}. Set "
                                  f"{ENV_TOKEN}, or {ENV_USER} and {ENV_PASSWORD}, to those of a user with access to "
                                  "the task, then run the command again.")
        if code == 404:
            raise CvatNotFound(f"CVAT at {self.url} answered 404 Not Found while {what}{detail}.")
        if code == 429 or code >= 500:
            raise AnnotationError(f"CVAT at {self.url} answered HTTP {code} while {what}{attempts_note(resp)}{detail}. "
                                  "The server is overloaded or failing: check it, then run the command again.")
        raise AnnotationError(f"CVAT at {self.url} answered HTTP {code} while {what}{detail}.")

    def paged(self, path: str, *, what: str, params: dict[str, Any] | None = None, page_size: int = 100) -> Iterator[dict]:
        """Items of a paginated list (`{"count", "next", "previous", "results"}`)."""
        page = 1
        while True:
            body = self.request("GET", path, what=what, params={**(params or {}), "page": page, "page_size": page_size})
            if isinstance(body, list):
                yield from body
                return
            yield from body.get("results") or []
            if not body.get("next"):
                return
            page += 1


@dataclass
class _Frame:
    number: int  # frame number in the task
    name: str
    width: int
    height: int
    deleted: bool = False


class CvatBackend:
    """`AnnotationBackend` on a live CVAT 2.x server through its REST API (see the module docstring).

    NOT RUN AGAINST A LIVE SERVER: tested against responses shaped after CVAT's documented REST API only.
    """

    name = "cvat"

    def __init__(self, url: str, state: BackendState, workspace: Path, classes: Sequence[str], *,
                 project_id: int | None = None, task_prefix: str = "labelwise", organization: str | None = None,
                 segment_size: int | None = None, image_quality: int = 95, check_hashes: bool = True,
                 timeout: float = 60.0, data_timeout_s: float = 1800.0, poll_s: float = 2.0,
                 transport: httpx.BaseTransport | None = None, retry: RetryPolicy | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.url = url.rstrip("/")
        self.state = state
        self.workspace = Path(workspace)
        self.classes = tuple(classes)
        self.project_id = int(project_id) if project_id is not None else None
        self.task_prefix = task_prefix
        self.segment_size = segment_size
        self.image_quality = int(image_quality)
        self.check_hashes = check_hashes
        self.data_timeout_s = data_timeout_s
        self.poll_s = poll_s
        self.client = CvatClient(self.url, timeout=timeout, organization=organization, transport=transport,
                                 retry=retry, env=env)
        self._files = FileCheck()
        self._cache: dict[int, tuple[Any, dict]] = {}  # job id -> (updated_date, annotations): progress polls

    def __repr__(self) -> str:
        return f"CvatBackend({self.url!r})"

    def close(self) -> None:
        self.client.close()

    # -- state and names ----------------------------------------------------------------------------------------------

    def task_name(self, batch: Batch) -> str:
        """Deterministic: the same round and model always name the same task."""
        return f"{self.task_prefix} round {batch.round} ({batch.model_version})"

    def _key(self, batch: Batch, what: str) -> str:
        return f"cvat/round/{batch.round}/{what}"

    def _check_batch(self, batch: Batch) -> None:
        if tuple(batch.classes) != self.classes:
            raise AnnotationError(f"Round {batch.round} has classes {list(batch.classes)} but the CVAT backend was set "
                                  f"up with {list(self.classes)}; they must be the same.")

    # -- task ---------------------------------------------------------------------------------------------------------

    def _find_task(self, batch: Batch) -> dict | None:
        """The round's task, by the recorded id or else by its name; None when there is none."""
        tid = self.state.get(self._key(batch, "task_id"))
        if tid is not None:
            try:
                return self.client.request("GET", f"/api/tasks/{int(tid)}", what=f"reading task {tid}")
            except CvatNotFound:
                raise AnnotationError(
                    f"CVAT task {tid} of round {batch.round} no longer exists at {self.url} (deleted?). Nothing was "
                    f"written. To send the round again, delete labelwise's record of it (backend state "
                    f"'{self._key(batch, 'task_id')}') and push."
                ) from None
        name = self.task_name(batch)
        params: dict[str, Any] = {"name": name}
        if self.project_id is not None:
            params["project_id"] = self.project_id
        found = [t for t in self.client.paged("/api/tasks", what=f"looking up task {name!r}", params=params)
                 if t.get("name") == name]
        if len(found) > 1:
            raise AnnotationError(f"CVAT at {self.url} has {len(found)} tasks named {name!r} (ids "
                                  f"{', '.join(str(t['id']) for t in found)}); delete all but one, then push again.")
        if found:
            self.state.set(self._key(batch, "task_id"), int(found[0]["id"]))
            return found[0]
        return None

    def _create_task(self, batch: Batch) -> dict:
        spec: dict[str, Any] = {"name": self.task_name(batch)}
        if self.project_id is not None:
            spec["project_id"] = self.project_id
        else:
            spec["labels"] = [{"name": c, "type": "rectangle"} for c in self.classes]
        if self.segment_size:
            spec["segment_size"] = int(self.segment_size)
        task = self.client.request("POST", "/api/tasks", what=f"creating task {spec['name']!r}", json=spec)
        self.state.set(self._key(batch, "task_id"), int(task["id"]))
        return task

    def _labels(self, task: dict) -> dict[str, int]:
        """label name -> id of the task (its own labels, or its project's)."""
        tid = int(task["id"])
        params = {"project_id": task["project_id"]} if task.get("project_id") else {"task_id": tid}
        labels = {lab["name"]: int(lab["id"]) for lab in self.client.paged("/api/labels", what=f"listing the labels of task {tid}", params=params)
                  if not lab.get("parent_id")}
        missing = [c for c in self.classes if c not in labels]
        if missing:
            raise AnnotationError(f"CVAT task {tid} has no label(s) {missing} (it has {sorted(labels)}); the labels "
                                  "must include every workspace class by name. Fix the task's (or project's) labels.")
        return labels

    def _frames(self, tid: int) -> list[_Frame]:
        meta = self.client.request("GET", f"/api/tasks/{tid}/data/meta", what=f"reading the frames of task {tid}")
        start = int(meta.get("start_frame") or 0)
        deleted = set(meta.get("deleted_frames") or [])
        return [_Frame(start + i, f.get("name", ""), int(f.get("width") or 0), int(f.get("height") or 0), start + i in deleted)
                for i, f in enumerate(meta.get("frames") or [])]

    # -- push ---------------------------------------------------------------------------------------------------------

    def push(self, batch: Batch, *, finished: Collection[str] = ()) -> PushReport:
        """Create the round's task (unless one with its name exists), upload its images and the pre-annotations.

        Every step is checked before it is done, so a push killed at any point is finished by the next one without
        a duplicate task. `finished` images are not uploaded to a task created now."""
        self._check_batch(batch)
        for item in batch.items:
            if not item.path.is_file():
                raise AnnotationError(f"Image {item.path} of round {batch.round} is missing; restore it and push again.")
        task = self._find_task(batch)
        created = task is None
        if task is None:
            task = self._create_task(batch)
        tid = int(task["id"])
        sent = 0
        if not int(task.get("size") or 0):
            todo = [i for i in batch.items if i.sha256 not in set(finished)]
            self.state.set(self._key(batch, "left_out"), sorted(i.sha256 for i in batch.items if i.sha256 in set(finished)))
            self._upload_data(batch, tid, todo)
            sent = len(todo)
        frames = {f.name: f for f in self._frames(tid)}
        left_out = set(self.state.get(self._key(batch, "left_out"), []) or [])
        absent = [i.staged_name for i in batch.items if i.staged_name not in frames and i.sha256 not in left_out]
        if absent:
            raise AnnotationError(f"CVAT task {tid} lacks {len(absent)} image(s) of round {batch.round} "
                                  f"({', '.join(absent[:5])}); data cannot be added to a CVAT task: delete task {tid} "
                                  "in CVAT and push again.")
        if not self.state.get(self._key(batch, "preannotated")):
            self._preannotate(batch, task, frames)
        return PushReport(batch.round, sent, 0 if created and sent else len(frames), len(left_out),
                          f"CVAT task {tid} at {self.url}")

    def _upload_data(self, batch: Batch, tid: int, items: Sequence[BatchItem]) -> None:
        rq = self.state.get(self._key(batch, "data_rq"))
        if rq is None:
            with ExitStack() as stack:
                files = [(f"client_files[{n}]", (item.staged_name, stack.enter_context(open(item.path, "rb"))))
                         for n, item in enumerate(items)]
                body = self.client.request(
                    "POST", f"/api/tasks/{tid}/data/", what=f"uploading {len(items)} images to task {tid}",
                    data={"image_quality": str(self.image_quality), "sorting_method": "predefined",
                          **{f"upload_file_order[{n}]": item.staged_name for n, item in enumerate(items)}},
                    files=files,
                )
            rq = (body or {}).get("rq_id")
            self.state.set(self._key(batch, "data_rq"), rq)
        if rq:
            self._wait_request(rq, f"uploading the images of round {batch.round} to task {tid}")

    def _wait_request(self, rq_id: str, what: str) -> None:
        deadline = time.monotonic() + self.data_timeout_s
        while True:
            req = self.client.request("GET", f"/api/requests/{rq_id}", what=f"checking on {what}")
            status = (req or {}).get("status")
            if status == "finished":
                return
            if status == "failed":
                raise AnnotationError(f"CVAT failed {what}: {' '.join(str(req.get('message') or '').split())[:400]}")
            if time.monotonic() > deadline:
                raise AnnotationError(f"CVAT is still {what} after {self.data_timeout_s:.0f} s; push again later (it "
                                      "waits for the same upload, it does not start another).")
            time.sleep(self.poll_s)

    def _preannotate(self, batch: Batch, task: dict, frames: dict[str, _Frame]) -> None:
        """The model's boxes as shapes with source "auto", once: only when the task has no annotations yet."""
        tid = int(task["id"])
        current = self.client.request("GET", f"/api/tasks/{tid}/annotations", what=f"reading the annotations of task {tid}")
        if (current or {}).get("shapes") or (current or {}).get("tracks"):
            self.state.set(self._key(batch, "preannotated"), True)  # there already (an earlier push, or people)
            return
        labels = self._labels(task)
        shapes = []
        for item in batch.items:
            frame = frames.get(item.staged_name)
            if frame is None:
                continue
            for cid, cx, cy, w, h, _conf in item.predictions:
                if not 0 <= cid < len(self.classes):
                    raise AnnotationError(f"Image {item.path} has a predicted box of class id {cid}; the workspace has "
                                          f"{len(self.classes)} classes.")
                W, H = frame.width or item.width, frame.height or item.height
                shapes.append({
                    "type": "rectangle", "frame": frame.number, "label_id": labels[self.classes[cid]],
                    "points": [(cx - w / 2) * W, (cy - h / 2) * H, (cx + w / 2) * W, (cy + h / 2) * H],
                    "occluded": False, "z_order": 0, "rotation": 0.0, "source": "auto", "attributes": [], "group": 0,
                })
        if shapes:
            self.client.request("PUT", f"/api/tasks/{tid}/annotations", what=f"uploading {len(shapes)} pre-annotations to task {tid}",
                                json={"version": 0, "tags": [], "shapes": shapes, "tracks": []})
        self.state.set(self._key(batch, "preannotated"), True)

    # -- pull / progress ----------------------------------------------------------------------------------------------

    def _jobs(self, tid: int) -> list[dict]:
        return [j for j in self.client.paged("/api/jobs", what=f"listing the jobs of task {tid}", params={"task_id": tid})
                if j.get("type", "annotation") == "annotation"]

    @staticmethod
    def finished(job: dict) -> bool:
        """A person finished the job: its state is "completed" or a reviewer moved it to the "acceptance" stage."""
        return job.get("state") == FINISHED_STATE or job.get("stage") == FINISHED_STAGE

    def _job_annotations(self, job: dict, use_cache: bool) -> dict:
        jid = int(job["id"])
        if use_cache and jid in self._cache and self._cache[jid][0] == job.get("updated_date"):
            return self._cache[jid][1]
        ann = self.client.request("GET", f"/api/jobs/{jid}/annotations", what=f"reading the annotations of job {jid}") or {}
        self._cache[jid] = (job.get("updated_date"), ann)
        return ann

    def _evaluate(self, batch: Batch, *, use_cache: bool) -> PullResult:
        self._check_batch(batch)
        task = self._find_task(batch)
        if task is None:
            raise AnnotationError(f"Round {batch.round} has not been pushed to CVAT yet; run `labelwise annotate push` first.")
        tid = int(task["id"])
        frames = {f.name: f for f in self._frames(tid)}
        left_out = set(self.state.get(self._key(batch, "left_out"), []) or [])
        absent = [i.staged_name for i in batch.items if i.staged_name not in frames and i.sha256 not in left_out]
        if absent:
            raise AnnotationError(f"CVAT task {tid} lacks {len(absent)} image(s) of round {batch.round} "
                                  f"({', '.join(absent[:5])}); run `labelwise annotate push`. Nothing was written.")
        labels_by_id = {v: k for k, v in self._labels(task).items()}
        jobs = self._jobs(tid)

        def job_of(frame: int) -> dict | None:
            return next((j for j in jobs if int(j["start_frame"]) <= frame <= int(j["stop_frame"])), None)

        by_class = {name: cid for cid, name in enumerate(self.classes)}
        labels: list[AnnotatedImage] = []
        problems: list[Problem] = []
        outcomes: list[TaskOutcome] = []
        for item in batch.items:
            frame = frames.get(item.staged_name)
            if frame is None:  # left out of the task: finished before it was made
                continue
            base = dict(image=item.staged_name, task_id=str(tid))
            job = job_of(frame.number)
            jid = int(job["id"]) if job else None
            source = f"cvat:task={tid}:job={jid}:frame={frame.number}"
            where = f"CVAT task {tid}, job {jid}, frame {frame.number} (image {item.staged_name})"
            if frame.deleted:  # a person removed the frame: passed on, like a skip
                labels.append(AnnotatedImage(item.sha256, "skipped", source=source))
                outcomes.append(TaskOutcome(item.sha256, "skipped", source=source, **base))
                continue
            if job is None or not self.finished(job):
                outcomes.append(TaskOutcome(item.sha256, "pending", **base))
                continue
            ann = self._job_annotations(job, use_cache)
            errors: list[tuple[str, str]] = []
            boxes: list[YoloBox] = []
            if (frame.width, frame.height) != (item.width, item.height):
                errors.append(("", f"the image is {frame.width}x{frame.height} in CVAT but {item.width}x{item.height} "
                                   "when selected: it changed"))
            for track in ann.get("tracks") or []:
                if int(track.get("frame", -1)) == frame.number or any(
                        int(s.get("frame", -1)) == frame.number for s in track.get("shapes") or []):
                    errors.append((f"track {track.get('id')}", "a track; draw boxes as single shapes, not tracks"))
            shapes = [] if errors else [s for s in ann.get("shapes") or [] if int(s.get("frame", -1)) == frame.number]
            for shape in shapes:
                region = f"shape {shape.get('id')}"
                label = labels_by_id.get(shape.get("label_id"), f"label id {shape.get('label_id')}")
                if shape.get("type") != "rectangle":
                    errors.append((region, f"a {shape.get('type')} ({label}) is not a box; draw rectangles only"))
                    continue
                box, why = pixel_box(label, shape.get("points") or [], shape.get("rotation") or 0.0,
                                     frame.width, frame.height, by_class, self.classes)
                if why is not None:
                    errors.append((region, why))
                else:
                    boxes.append(box)
            if not errors and self.check_hashes:
                why = self._files.problem(item)
                if why is not None:
                    errors.append(("", why))
            annotator = ((job.get("assignee") or {}).get("username")) if isinstance(job.get("assignee"), dict) else None
            if errors:
                for region, why in errors:
                    problems.append(Problem(item.sha256, where, region=region or None, why=why,
                                            fix="Correct it in CVAT (the job goes back to 'in progress' while you do) "
                                                "and pull again; until then the image is held out of training.", **base))
                outcomes.append(TaskOutcome(item.sha256, "rejected", source=source, updated_at=job.get("updated_date"), **base))
                continue
            labels.append(AnnotatedImage(item.sha256, "labeled", tuple(boxes), annotator, None, job.get("updated_date"), source))
            outcomes.append(TaskOutcome(item.sha256, "accepted", source=source, updated_at=job.get("updated_date"), **base))
        held = tuple(o.sha256 for o in outcomes if o.status == "rejected")
        return PullResult(tuple(labels), tuple(problems), tuple(outcomes), held)

    def pull(self, batch: Batch) -> PullResult:
        """Frames of finished jobs only; everything else is pending (never the model's pre-annotations)."""
        return self._evaluate(batch, use_cache=False)

    def progress(self, batch: Batch) -> AnnotationProgress:
        """The same counts as pull; annotations are fetched again only for jobs whose updated_date moved."""
        return self._evaluate(batch, use_cache=True).counts()

    # -- retire -------------------------------------------------------------------------------------------------------

    def retire(self, batch: Batch, *, keep: Collection[str] = ()) -> RetireReport:
        """Mark as deleted the frames nobody worked on (in unfinished jobs, with no shape a person drew), so annotators
        no longer see them; frames of finished jobs, frames with a person's shapes and `keep` stay."""
        self._check_batch(batch)
        task = self._find_task(batch)
        if task is None:
            return RetireReport(batch.round, missing=tuple(i.sha256 for i in batch.items),
                                details=(f"round {batch.round} has no CVAT task",))
        tid = int(task["id"])
        frames = {f.name: f for f in self._frames(tid)}
        jobs = self._jobs(tid)
        removed, kept, missing, details, delete = [], [], [], [], []
        touched: dict[int, set[int]] = {}
        for job in jobs:
            if not self.finished(job):
                ann = self._job_annotations(job, use_cache=False)
                touched[int(job["id"])] = {int(s.get("frame", -1)) for s in ann.get("shapes") or []
                                           if s.get("source", "manual") in PERSON_SOURCES}
        for item in batch.items:
            frame = frames.get(item.staged_name)
            if frame is None or frame.deleted:
                missing.append(item.sha256)
                details.append(f"image {item.staged_name}: not in task {tid}" + (" (deleted there)" if frame else ""))
                continue
            job = next((j for j in jobs if int(j["start_frame"]) <= frame.number <= int(j["stop_frame"])), None)
            name = f"task {tid} frame {frame.number} (image {item.staged_name})"
            if item.sha256 in set(keep):
                kept.append(item.sha256)
                details.append(f"{name}: kept, asked to")
            elif job is None or self.finished(job):
                kept.append(item.sha256)
                details.append(f"{name}: kept, its job is finished")
            elif frame.number in touched.get(int(job["id"]), set()):
                kept.append(item.sha256)
                details.append(f"{name}: kept, a person drew on it")
            else:
                removed.append(item.sha256)
                delete.append(frame.number)
                details.append(f"{name}: deleted from the task, nobody had worked on it")
        if delete:
            already = [f.number for f in frames.values() if f.deleted]
            self.client.request("PATCH", f"/api/tasks/{tid}/data/meta", what=f"deleting {len(delete)} frames of task {tid}",
                                json={"deleted_frames": sorted(set(already) | set(delete))})
        return RetireReport(batch.round, tuple(removed), tuple(kept), tuple(missing), tuple(details))


def from_config(options: dict, state: BackendState, workspace: Path, classes: tuple[str, ...]):
    """Build a CVAT backend from the `annotation:` section of labelwise.yaml.

    Without `url`: `CvatFilesBackend` with `outbox` (default <workspace>/cvat/outbox), `inbox` (default
    <workspace>/cvat/inbox), `include_images` (true), `check_hashes` (true). With `url`: the live `CvatBackend`
    (REST API; not run against a live server here) with `project_id`, `organization`, `task_prefix` ("labelwise"),
    `segment_size`, `image_quality` (95), `check_hashes`, `timeout_s` (60); credentials from the environment only
    (CVAT_ACCESS_TOKEN, or CVAT_USERNAME and CVAT_PASSWORD).
    """
    options = dict(options or {})
    options.pop("backend", None)
    secrets = sorted(k for k in options if k.lower() in {"password", "token", "api_key", "access_token", "username"})
    if secrets:
        raise AnnotationError(f"annotation.{secrets[0]} must not be in labelwise.yaml: set {ENV_TOKEN}, or {ENV_USER} "
                              f"and {ENV_PASSWORD}, in the environment.")
    workspace = Path(workspace)
    if options.get("url"):
        known = {"url", "project_id", "organization", "task_prefix", "segment_size", "image_quality", "check_hashes", "timeout_s"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise AnnotationError(f"Unknown annotation option(s) for a CVAT server: {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
        return CvatBackend(
            str(options["url"]), state, workspace, classes,
            project_id=options.get("project_id"), organization=options.get("organization"),
            task_prefix=str(options.get("task_prefix") or "labelwise"), segment_size=options.get("segment_size"),
            image_quality=int(options.get("image_quality", 95)), check_hashes=bool(options.get("check_hashes", True)),
            timeout=float(options.get("timeout_s", 60.0)),
        )

    def path(key: str, default: str) -> Path:
        p = Path(os.path.expanduser(str(options.get(key) or default)))
        return p if p.is_absolute() else workspace / p

    return CvatFilesBackend(
        path("outbox", "cvat/outbox"),
        path("inbox", "cvat/inbox"),
        include_images=bool(options.get("include_images", True)),
        check_hashes=bool(options.get("check_hashes", True)),
    )
