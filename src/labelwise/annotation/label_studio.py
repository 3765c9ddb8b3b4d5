"""Label Studio as an annotation backend: a thin HTTP client and the backend above it.

What a round looks like on the server:

* one project per workspace, created if needed, whose RectangleLabels carry fixed class ids (`category="<id>"`), so
  ids never depend on alphabetical order. A project is used only by its id: the one recorded in the workspace, the
  configured `project_id`, or the one labelwise created (marked with the workspace's own key in its description, so a
  push killed between creating it and recording its id finds it again). Another project that merely has the title is
  refused with a message, never adopted silently;
* the images stay where they are: a local-files storage covering their folders (which must lie under the server's
  `LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`, given here as `document_root`) lets the server read them, no pixel is sent;
* the batch is imported in chunks (one request per chunk), each task with the round model's boxes as a prediction
  (percent coordinates, `model_version`, `score` = the selection score, so annotators can sort by it) and the
  labelwise bookkeeping in `data` (`labelwise_sha256`, `labelwise_round`, rank, score, reason);
* the project's `model_version` is set to the round's every push (the Data Manager's prediction score only averages
  predictions of the current model version);
* a label QA review (`push_review`) marks the suspects' tasks in `data` (`labelwise_review`: "yes" while under
  review, the reason in `labelwise_review_note`, `labelwise_qa_issue`, `labelwise_qa_score`) and adds a Data Manager
  tab, "labelwise review", filtered to them: reviewers correct the annotation in place, and a pull takes it.

Push is idempotent twice over: the state records the task id of every (round, sha256), and before importing the
backend lists the project's tasks, so a push killed after the import but before the state was saved creates nothing new.
Pull only reads: for every task it judges the newest submitted annotation (by `updated_at`, then id; a skip by one
annotator never hides another annotator's boxes), converts rectangles to YOLO by class NAME, and turns everything it
cannot take as it is into `Problem`s naming task, image and region. Progress lists only ids and annotation counts
(`include=`), and fetches full annotations only of tasks that changed since the last poll.

The API token comes only from the environment (`LABEL_STUDIO_API_KEY`); it is never logged, written or put into an
error message. Legacy tokens (`Authorization: Token ...`) and personal access tokens (JWT refresh tokens, exchanged for
short-lived access tokens) both work. 429 and 5xx answers are retried with back-off (`labelwise.annotation.http`).
"""

from __future__ import annotations

import http.server
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.etree import ElementTree
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
    ReviewNote,
    TaskOutcome,
    YoloBox,
)
from labelwise.annotation.http import RetryPolicy, attempts_note, retrying_client
from labelwise.boxes import EDGE_TOLERANCE
from labelwise.fileio import sha256_file

log = logging.getLogger(__name__)

ENV_TOKEN = "LABEL_STUDIO_API_KEY"
IMAGE_VAR = "image"
FROM_NAME = "label"
TO_NAME = "image"
STATE_PREFIX = "label_studio"
REVIEW_TAB = "labelwise review"  # the Data Manager tab of the tasks under label QA review
REVIEW_FIELD = "labelwise_review"
# Task ids per request when selecting tasks by id (keeps the query string short).
ID_CHUNK = 100
LIGHT_FIELDS = "id,total_annotations,cancelled_annotations,updated_at"


def file_sha256(path: Path) -> str:
    """sha256 of a file (kept for callers of the old name; see labelwise.fileio.sha256_file)."""
    return sha256_file(path)


def label_source(project_id: int | None, task_id: int | str, annotation_id: int | str | None) -> str:
    """The label source stored with a pulled label: unique across projects (Label Studio reuses task ids)."""
    return f"label_studio:project={project_id}:task={task_id}:annotation={annotation_id}"


class NotFound(AnnotationError):
    """The server answered 404."""


# --------------------------------------------------------------------------------------------------------------------
# HTTP client
# --------------------------------------------------------------------------------------------------------------------


class LabelStudioClient:
    """The few Label Studio API calls labelwise needs, with errors turned into `AnnotationError`s that say what to do.

    The token is held in a private attribute and only ever placed in the Authorization header.
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        token = api_key if api_key is not None else os.environ.get(ENV_TOKEN)
        if not token:
            raise AnnotationError(
                f"No Label Studio API token: set the environment variable {ENV_TOKEN} to the token shown under "
                "Account & Settings in Label Studio (tokens never go into labelwise.yaml)."
            )
        self.url = url.rstrip("/")
        self._token = token
        self._jwt = token.count(".") == 2  # a personal access token (JWT refresh token)
        self._access: str | None = None
        self._http = retrying_client(base_url=self.url, timeout=timeout, follow_redirects=False,
                                     transport=transport, retry=retry)

    def __repr__(self) -> str:  # never show the token
        return f"LabelStudioClient({self.url!r})"

    def close(self) -> None:
        self._http.close()

    # -- auth ---------------------------------------------------------------------------------------------------------

    def _auth_header(self, *, refresh: bool = False) -> dict[str, str]:
        if not self._jwt:
            return {"Authorization": f"Token {self._token}"}
        if self._access is None or refresh:
            resp = self._send("POST", "/api/token/refresh/", {}, json={"refresh": self._token}, what="exchanging the personal access token")
            if resp.status_code != 200:
                self._raise_for(resp, "exchanging the personal access token")
            self._access = resp.json().get("access")
        return {"Authorization": f"Bearer {self._access}"}

    # -- requests -----------------------------------------------------------------------------------------------------

    def _send(self, method: str, path: str, headers: dict[str, str], *, what: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, headers=headers, **kwargs)
        except httpx.TimeoutException:
            raise AnnotationError(
                f"Label Studio at {self.url} did not answer in time while {what}. Check that the server is running "
                "and not overloaded, then run the command again; nothing was written."
            ) from None
        except httpx.TransportError as exc:
            raise AnnotationError(
                f"Cannot reach Label Studio at {self.url} while {what} ({type(exc).__name__}). Start the server "
                "(e.g. scripts/label-studio.sh start DOCUMENT_ROOT) or fix annotation.url in labelwise.yaml, then run "
                "the command again; nothing was written."
            ) from None

    def request(self, method: str, path: str, *, what: str, ok: Iterable[int] = (200, 201, 204), **kwargs: Any) -> Any:
        """Send one request; return the decoded JSON (None for an empty body). `what` completes 'while ...'."""
        resp = self._send(method, path, self._auth_header(), what=what, **kwargs)
        if resp.status_code == 401 and self._jwt:  # the short-lived access token expired: refresh once
            resp = self._send(method, path, self._auth_header(refresh=True), what=what, **kwargs)
        if resp.status_code not in set(ok):
            self._raise_for(resp, what)
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise AnnotationError(
                f"Label Studio at {self.url} answered {method} {path} with something that is not JSON while {what}; "
                "is annotation.url the address of a Label Studio server?"
            ) from None

    def _raise_for(self, resp: httpx.Response, what: str) -> None:
        code = resp.status_code
        if code in (401, 403):
            raise AnnotationError(
                f"Label Studio at {self.url} refused the API token (HTTP {code}) while {what}. Set {ENV_TOKEN} to a "
                "valid token of a user with access to the project (Account & Settings in Label Studio; a legacy "
                "token needs legacy tokens enabled on the server), then run the command again; nothing was written."
            )
        detail = _short_detail(resp)
        if code == 404:
            raise NotFound(f"Label Studio at {self.url} answered 404 Not Found while {what}{detail}.")
        if code == 429 or code >= 500:
            raise AnnotationError(
                f"Label Studio at {self.url} answered HTTP {code} while {what}{attempts_note(resp)}{detail}. The "
                "server is overloaded or failing: check its log, then run the command again (it only does what is "
                "still missing)."
            )
        raise AnnotationError(
            f"Label Studio at {self.url} answered HTTP {code} while {what}{detail}. Nothing was written; fix the cause "
            "and run the command again."
        )

    def paged(self, path: str, *, what: str, key: str, params: dict[str, Any], page_size: int = 100) -> Iterator[dict]:
        """Items of a paginated list: `{key: [...], "total": n}` or `{"results": [...], "next": ...}`."""
        page = 1
        seen = 0
        while True:
            try:
                body = self.request("GET", path, what=what, params={**params, "page": page, "page_size": page_size})
            except NotFound:
                if page > 1:  # a page past the end is 404
                    return
                raise
            if not isinstance(body, dict):  # not paginated
                yield from body or []
                return
            items = body.get(key) or []
            yield from items
            seen += len(items)
            total = body.get("total", body.get("count"))
            if not items or (total is not None and seen >= total) or ("next" in body and not body["next"]):
                return
            page += 1


def _short_detail(resp: httpx.Response) -> str:
    ctype = resp.headers.get("content-type", "")
    if "json" not in ctype:
        return ""
    text = resp.text.strip().replace("\n", " ")
    return f": {text[:400]}" if text else ""


# --------------------------------------------------------------------------------------------------------------------
# conversions
# --------------------------------------------------------------------------------------------------------------------


def label_config(classes: Sequence[str]) -> str:
    """The project's labeling config: one RectangleLabels whose labels carry the class ids as `category`."""
    labels = "\n".join(f"    <Label value={quoteattr(name)} category=\"{cid}\"/>" for cid, name in enumerate(classes))
    return (
        "<View>\n"
        f'  <Image name="{TO_NAME}" value="${IMAGE_VAR}" zoom="true" zoomControl="true"/>\n'
        f'  <RectangleLabels name="{FROM_NAME}" toName="{TO_NAME}" strokeWidth="2">\n'
        f"{labels}\n"
        "  </RectangleLabels>\n"
        "</View>\n"
    )


def config_labels(config: str) -> dict[str, str | None] | None:
    """label name -> category of the RectangleLabels tag named FROM_NAME, or None if the config has none."""
    try:
        root = ElementTree.fromstring(config)
    except ElementTree.ParseError:
        return None
    for tag in root.iter():
        if tag.tag.lower() == "rectanglelabels" and tag.get("name") == FROM_NAME:
            return {lab.get("value", ""): lab.get("category") for lab in tag if lab.tag.lower() == "label"}
    return None


def yolo_to_percent(cx: float, cy: float, w: float, h: float) -> tuple[float, float, float, float]:
    """YOLO centre box (fractions) -> Label Studio's top-left x, y, width, height in percent of the image."""
    return (cx - w / 2) * 100.0, (cy - h / 2) * 100.0, w * 100.0, h * 100.0


def percent_to_yolo(x: float, y: float, width: float, height: float) -> tuple[float, float, float, float]:
    """Label Studio's percent rectangle -> YOLO centre box in fractions (the inverse of `yolo_to_percent`)."""
    return (x + width / 2) / 100.0, (y + height / 2) / 100.0, width / 100.0, height / 100.0


def prediction_result(item: BatchItem, classes: Sequence[str]) -> list[dict[str, Any]]:
    result = []
    for i, (cid, cx, cy, w, h, conf) in enumerate(item.predictions):
        if not 0 <= cid < len(classes):
            raise AnnotationError(
                f"Image {item.path} has a predicted box of class id {cid}, but the workspace has {len(classes)} "
                "classes; the predictions do not belong to this workspace's model."
            )
        x, y, width, height = yolo_to_percent(cx, cy, w, h)
        result.append(
            {
                "id": f"lw{i}",
                "from_name": FROM_NAME,
                "to_name": TO_NAME,
                "type": "rectanglelabels",
                "original_width": item.width,
                "original_height": item.height,
                "image_rotation": 0,
                "value": {"x": x, "y": y, "width": width, "height": height, "rotation": 0, "rectanglelabels": [classes[cid]]},
                "score": float(conf),
            }
        )
    return result


def _parse_time(value: str | None) -> datetime:
    if not value:
        return datetime.min
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).replace(tzinfo=None)
    except ValueError:
        return datetime.min


def newest_annotation(annotations: Sequence[dict]) -> dict | None:
    """The annotation that counts: the newest by updated_at, then by id (a later correction wins)."""
    if not annotations:
        return None
    return max(annotations, key=lambda a: (_parse_time(a.get("updated_at")), int(a.get("id") or 0)))


def annotator_of(annotation: dict) -> str | None:
    """The annotator's e-mail when the server tells it (`created_username` is 'First Last email, id'), else 'user <id>'."""
    name = (annotation.get("created_username") or "").strip()
    if name:
        head = name.rsplit(",", 1)[0].strip()
        if head:
            return head.split()[-1]
    by = annotation.get("completed_by")
    if isinstance(by, dict):
        return by.get("email") or (f"user {by['id']}" if "id" in by else None)
    return f"user {by}" if by is not None else None


def convert_annotation(
    annotation: dict, item: BatchItem, classes: Sequence[str]
) -> tuple[tuple[YoloBox, ...], list[tuple[str, str]]]:
    """Rectangles of one annotation -> YOLO boxes by class NAME, and (region, why) for every region that cannot be
    taken (empty if all are fine).

    An edge within `labelwise.boxes.EDGE_TOLERANCE` (a fraction of the image side) past the border is float noise and
    is clipped to the border; further out the region is refused, never clamped.
    """
    by_name = {name: cid for cid, name in enumerate(classes)}
    boxes: list[YoloBox] = []
    errors: list[tuple[str, str]] = []
    tol = EDGE_TOLERANCE
    for n, region in enumerate(annotation.get("result") or [], start=1):
        what = f"region {n}" + (f" (id {region['id']})" if region.get("id") else "")
        rtype = region.get("type")
        if rtype != "rectanglelabels":
            errors.append((what, f"it is a {rtype!r}, not a labelled rectangle; redraw it as a box with a class"))
            continue
        value = region.get("value") or {}
        labels = value.get("rectanglelabels") or []
        if len(labels) != 1:
            errors.append((what, f"it has {len(labels)} labels {labels}; give it exactly one class"))
            continue
        if labels[0] not in by_name:
            errors.append((what, f"it has the unknown label {labels[0]!r} (classes: {', '.join(classes)}); "
                                 "give it one of the classes"))
            continue
        rotation = float(value.get("rotation") or 0.0)
        if abs(math.remainder(rotation, 360.0)) > 1e-6:
            errors.append((what, f"it ({labels[0]}) is rotated by {rotation:g} degrees; YOLO boxes are axis-aligned, "
                                 "redraw it without rotation"))
            continue
        ow, oh = region.get("original_width"), region.get("original_height")
        if ow is not None and oh is not None and (int(ow), int(oh)) != (item.width, item.height):
            errors.append((what, f"it was drawn on a {ow}x{oh} image, but the selected image is "
                                 f"{item.width}x{item.height}; the image changed since selection"))
            continue
        try:
            x, y, w, h = (float(value[k]) for k in ("x", "y", "width", "height"))
        except (KeyError, TypeError, ValueError):
            errors.append((what, "it has no numeric x/y/width/height"))
            continue
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
            errors.append((what, f"it ({labels[0]}) has an empty or invalid size (width {w:g}%, height {h:g}%)"))
            continue
        left, top, right, bottom = x / 100.0, y / 100.0, (x + w) / 100.0, (y + h) / 100.0
        if left < -tol or top < -tol or right > 1 + tol or bottom > 1 + tol:
            errors.append((what, f"it ({labels[0]}) reaches outside the image (x {x:g}%..{x + w:g}%, "
                                 f"y {y:g}%..{y + h:g}%); move it inside the image"))
            continue
        if left < 0 or top < 0 or right > 1 or bottom > 1:  # float noise at the border only: clip
            left, top, right, bottom = max(left, 0.0), max(top, 0.0), min(right, 1.0), min(bottom, 1.0)
            if right <= left or bottom <= top:
                errors.append((what, f"it ({labels[0]}) lies on the image border with no area inside the image"))
                continue
            boxes.append((by_name[labels[0]], (left + right) / 2, (top + bottom) / 2, right - left, bottom - top))
        else:
            cx, cy, bw, bh = percent_to_yolo(x, y, w, h)
            boxes.append((by_name[labels[0]], cx, cy, bw, bh))
    return tuple(boxes), errors


# --------------------------------------------------------------------------------------------------------------------
# the backend
# --------------------------------------------------------------------------------------------------------------------


def _selected(ids: Sequence[int]) -> str:
    return json.dumps({"selectedItems": {"all": False, "included": [int(i) for i in ids]}})


class LabelStudioBackend:
    """`AnnotationBackend` on a Label Studio server (see the module docstring for what lands where)."""

    name = "label_studio"

    def __init__(
        self,
        url: str,
        state: BackendState,
        document_root: Path,
        project_title: str,
        classes: Sequence[str],
        api_key: str | None = None,
        webhook_port: int | None = None,
        timeout: float = 30.0,
        *,
        project_id: int | None = None,
        chunk_size: int = 250,
        check_hashes: bool = True,
        transport: httpx.BaseTransport | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        if len(project_title.strip()) < 3:
            raise AnnotationError(f"annotation.project_title {project_title!r} is too short: Label Studio needs at least 3 characters.")
        if not classes:
            raise AnnotationError("The workspace has no classes; Label Studio needs at least one label.")
        self.url = url.rstrip("/")
        self.state = state
        self.document_root = Path(os.path.abspath(document_root))
        self.project_title = project_title
        self.classes = tuple(classes)
        self.webhook_port = webhook_port
        self.chunk_size = max(1, int(chunk_size))
        self.check_hashes = check_hashes
        self._configured_project_id = project_id
        self.client = LabelStudioClient(self.url, api_key, timeout=timeout, transport=transport, retry=retry)
        self._files = FileCheck()
        # task id -> ((updated_at, total, cancelled), full task): what progress polls need not fetch again
        self._cache: dict[int, tuple[tuple, dict]] = {}

    def __repr__(self) -> str:
        return f"LabelStudioBackend({self.url!r}, project={self.project_title!r})"

    def close(self) -> None:
        self.client.close()

    # -- state --------------------------------------------------------------------------------------------------------

    def _key(self, *parts: object) -> str:
        return "/".join([STATE_PREFIX, *map(str, parts)])

    @property
    def project_id(self) -> int | None:
        pid = self.state.get(self._key("project_id"))
        if pid is None:
            pid = self._configured_project_id
        return int(pid) if pid is not None else None

    def _round_tasks(self, round_: int) -> dict[str, int]:
        return {sha: int(tid) for sha, tid in (self.state.get(self._key("round", round_, "tasks"), {}) or {}).items()}

    def _set_round_tasks(self, round_: int, tasks: dict[str, int]) -> None:
        self.state.set(self._key("round", round_, "tasks"), dict(tasks))

    def _retired(self, round_: int) -> set[str]:
        """Images of the round whose task was deleted by `retire`."""
        return set(self.state.get(self._key("round", round_, "retired"), []) or [])

    def _left_out(self, round_: int) -> set[str]:
        """Images of the round not sent to the current project because they were finished before (new project)."""
        return set(self.state.get(self._key("round", round_, "left_out"), []) or [])

    def _marker(self, create: bool = False) -> str | None:
        """This workspace's key, written into the description of the project labelwise creates."""
        key = self.state.get(self._key("project_key"))
        if key is None and create:
            key = uuid.uuid4().hex[:16]
            self.state.set(self._key("project_key"), key)
        return f"[labelwise:{key}]" if key else None

    def forget_project(self) -> None:
        """Drop the record of the project (e.g. after it was deleted on purpose) and of the rounds pushed to it; the
        next push creates a new one. `push_to_new_project` does this and the push in one call."""
        old = self.project_id
        self.state.set(self._key("project_id"), None)
        self.state.set(self._key("project_key"), None)
        self.state.set(self._key("storages"), None)
        self.state.set(self._key("forgotten_project_id"), old)
        self._configured_project_id = None
        self._cache.clear()

    # -- project ------------------------------------------------------------------------------------------------------

    def _project_missing(self, pid: int) -> AnnotationError:
        return AnnotationError(
            f"Label Studio project {pid} no longer exists at {self.url} (deleted, or annotation.url points at another "
            "server). Nothing was written. If it was deleted on purpose, push the round to a new project "
            "(`labelwise annotate push --new-project`); only the images not finished yet are sent."
        )

    def _get_project(self, pid: int) -> dict:
        try:
            return self.client.request("GET", f"/api/projects/{pid}/", what=f"reading project {pid}")
        except NotFound:
            raise self._project_missing(pid) from None

    def _check_labels(self, project: dict) -> None:
        labels = config_labels(project.get("label_config") or "")
        want = {name: str(cid) for cid, name in enumerate(self.classes)}
        if labels is None:
            raise AnnotationError(
                f"Label Studio project {project['id']} ({project.get('title')!r}) has no RectangleLabels named "
                f"{FROM_NAME!r}; labelwise needs its own labeling config. Use another project_title, or remove "
                "annotation.project_id to let labelwise create the project."
            )
        if labels != want:
            missing = sorted(set(want) - set(labels))
            extra = sorted(set(labels) - set(want))
            moved = sorted(n for n in set(want) & set(labels) if labels[n] != want[n])
            raise AnnotationError(
                f"Label Studio project {project['id']} ({project.get('title')!r}) has labels that do not match the "
                f"workspace classes (missing: {missing or '-'}, unknown: {extra or '-'}, wrong class id: {moved or '-'}). "
                "Fix the project's labeling config to match, or use another project_title."
            )

    def _projects_titled(self) -> list[dict]:
        return [
            p
            for p in self.client.paged("/api/projects", what="listing projects", key="results", params={"title": self.project_title})
            if p.get("title") == self.project_title
        ]

    def _title_taken(self, same_title: list[dict]) -> AnnotationError:
        ids = [p["id"] for p in same_title]
        used = self.state.get(self._key("forgotten_project_id")) or self.project_id
        hint = f" (project {used} is the one this workspace used)" if used in ids else ""
        return AnnotationError(
            f"Label Studio at {self.url} already has {'a project' if len(ids) == 1 else f'{len(ids)} projects'} "
            f"titled {self.project_title!r} (id {', '.join(map(str, ids))}){hint}; labelwise does not adopt a project "
            f"by its title. To use it, set annotation.project_id: {ids[0]} in labelwise.yaml; to start a new one, set "
            "another annotation.project_title (or delete or rename the old project in Label Studio). Nothing was written."
        )

    def ensure_project(self, *, new: bool = False) -> int:
        """The project id: recorded, configured, the one this workspace created (found by its key), or newly created.

        A project that only has the same title is never adopted: the push stops with a message that names it and
        says how to use it (annotation.project_id) or avoid it (another project_title). With `new`, an existing
        project with the title is refused the same way, whatever its key.
        """
        pid = None if new else self.project_id
        if pid is not None:
            project = self._get_project(pid)
            self._check_labels(project)
            self.state.set(self._key("project_id"), pid)
            return pid
        same_title = self._projects_titled()
        marker = self._marker()
        ours = [p for p in same_title if marker and marker in (p.get("description") or "")] if not new else []
        if len(ours) == 1:  # created by this workspace, by a push killed before it recorded the id
            project = ours[0]
            self._check_labels(project)
        elif same_title:
            raise self._title_taken(same_title)
        else:
            marker = self._marker(create=True)
            project = self.client.request(
                "POST",
                "/api/projects",
                what=f"creating project {self.project_title!r}",
                json={
                    "title": self.project_title,
                    "label_config": label_config(self.classes),
                    "description": f"Active-learning rounds from labelwise: sort tasks by prediction score. {marker}",
                    "show_skip_button": True,
                    "enable_empty_annotation": True,
                },
            )
        pid = int(project["id"])
        self.state.set(self._key("project_id"), pid)
        return pid

    # -- storage ------------------------------------------------------------------------------------------------------

    def _relative(self, item: BatchItem) -> str:
        path = Path(os.path.abspath(item.path))
        try:
            rel = path.relative_to(self.document_root)
        except ValueError:
            raise AnnotationError(
                f"Image {path} (image id {item.image_id}) is not under the Label Studio document root "
                f"{self.document_root}. Set annotation.document_root (and the server's "
                "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT) to a folder that contains the image pool."
            ) from None
        if path.parent == self.document_root:
            raise AnnotationError(
                f"Image {path} lies directly in the document root {self.document_root}; Label Studio only serves "
                "files from a subfolder of it. Move the pool into a subfolder or set annotation.document_root to a parent."
            )
        return rel.as_posix()

    def _ensure_storage(self, pid: int, items: Sequence[BatchItem]) -> None:
        storages = self.client.request("GET", "/api/storages/localfiles", what="listing local-files storages", params={"project": pid})
        covered = [Path(os.path.normpath(s["path"])) for s in storages or [] if s.get("path")]

        def is_covered(d: Path) -> bool:
            return any(d == c or c in d.parents for c in covered)

        folders = sorted({Path(os.path.abspath(i.path)).parent for i in items if not is_covered(Path(os.path.abspath(i.path)).parent)})
        if not folders:
            return
        common = Path(os.path.commonpath([str(f) for f in folders]))
        targets = [common] if common != self.document_root and self.document_root in common.parents else folders
        for folder in targets:
            self.client.request(
                "POST",
                "/api/storages/localfiles",
                what=f"attaching local-files storage {folder} to project {pid}",
                json={"project": pid, "path": str(folder), "use_blob_urls": True, "title": f"labelwise {folder.name}"},
            )
            covered.append(folder)

    # -- push ---------------------------------------------------------------------------------------------------------

    def _task(self, batch: Batch, item: BatchItem) -> dict[str, Any]:
        return {
            "data": {
                IMAGE_VAR: "/data/local-files/?d=" + quote(self._relative(item), safe="/"),
                "labelwise_sha256": item.sha256,
                "labelwise_round": batch.round,
                "labelwise_image_id": item.image_id,
                "labelwise_name": item.staged_name,
                "labelwise_rank": item.rank,
                "labelwise_score": item.score,
                "labelwise_reason": item.reason,
            },
            "predictions": [
                {"model_version": batch.model_version, "score": float(item.score), "result": prediction_result(item, batch.classes)}
            ],
        }

    def _server_round_tasks(self, pid: int, round_: int) -> dict[str, int]:
        """sha256 -> task id of the project's tasks of this round (from the tasks' data: the server's own truth)."""
        found: dict[str, int] = {}
        for task in self.client.paged(
            "/api/tasks", what=f"listing the tasks of project {pid}", key="tasks", params={"project": pid, "include": "id,data"}
        ):
            data = task.get("data") or {}
            if data.get("labelwise_round") == round_ and data.get("labelwise_sha256"):
                found.setdefault(data["labelwise_sha256"], int(task["id"]))
        return found

    def push(self, batch: Batch, *, finished: Collection[str] = ()) -> PushReport:
        """Create the tasks of the batch that the project does not have yet.

        `finished`: sha256 of images the workflow already has a final outcome for; they are never sent anew (after
        `--new-project`, or when their task was deleted).
        """
        self._check_batch(batch)
        finished = set(finished)
        if not batch.items:
            return PushReport(batch.round, 0)
        payload = {item.sha256: self._task(batch, item) for item in batch.items}  # every image checked first
        pid = self.ensure_project()
        # What the server already has for this round (a push killed before saving the state must not duplicate).
        on_server = self._server_round_tasks(pid, batch.round)
        tasks = {sha: on_server[sha] for sha in [i.sha256 for i in batch.items] if sha in on_server}
        self._set_round_tasks(batch.round, tasks)
        missing = [item for item in batch.items if item.sha256 not in tasks and item.sha256 not in finished]
        left_out = sorted(item.sha256 for item in batch.items if item.sha256 not in tasks and item.sha256 in finished)
        if left_out:
            self.state.set(self._key("round", batch.round, "left_out"), sorted(self._left_out(batch.round) | set(left_out)))
        if missing:
            self._import(pid, batch, missing, tasks, payload)
        # After the import: the server accepts only a model version that some prediction of the project carries.
        if tasks:
            self.client.request(
                "PATCH", f"/api/projects/{pid}/", what=f"setting the model version of project {pid}", json={"model_version": batch.model_version}
            )
        return PushReport(batch.round, len(missing), len(tasks) - len(missing), len(left_out), f"Label Studio project {pid} at {self.url}")

    def push_to_new_project(self, batch: Batch, *, finished: Collection[str] = ()) -> PushReport:
        """`annotate push --new-project`: forget the recorded project, create a new one and send only the images not
        in `finished`. Refuses (nothing written) when a project with the title already exists."""
        self._check_batch(batch)
        for item in batch.items:
            self._relative(item)  # every image checked before anything changes
        same_title = self._projects_titled()
        if same_title:
            raise self._title_taken(same_title)
        self.forget_project()
        self.ensure_project(new=True)
        self._set_round_tasks(batch.round, {})
        self.state.set(self._key("round", batch.round, "retired"), [])
        self.state.set(self._key("round", batch.round, "left_out"), [])
        return self.push(batch, finished=finished)

    def push_review(self, batch: Batch, notes: dict[str, ReviewNote], *, done: Collection[str] = ()) -> PushReport:
        """Mark the tasks of `batch` (a round's label QA suspects, already pushed) for review: `data.labelwise_review`
        "yes", the reason in `labelwise_review_note`, the issue and score; tasks of the round in `done` (reviewed since)
        get "done". Adds the project's "labelwise review" tab (filtered to "yes") once. Raises when a task is missing."""
        self._check_batch(batch)
        pid = self.project_id
        tasks = self._round_tasks(batch.round)
        missing = [item.staged_name for item in batch.items if item.sha256 not in tasks]
        if pid is None or missing:
            raise AnnotationError(
                f"Round {batch.round}'s suspect image(s) {', '.join(missing[:5]) or '(all)'} have no task in Label Studio "
                "(their labels came another way): review them in the label files, or push the round first.")
        self._get_project(pid)
        marks = {item.sha256: "yes" for item in batch.items}
        marks.update({sha: "done" for sha in done if sha in tasks and sha not in marks})
        for sha, mark in marks.items():
            tid = tasks[sha]
            task = self.client.request("GET", f"/api/tasks/{tid}/", what=f"reading task {tid}")
            data = dict(task.get("data") or {})
            data[REVIEW_FIELD] = mark
            note = notes.get(sha)
            if note is not None:
                data.update({f"{REVIEW_FIELD}_note": note.text, "labelwise_qa_issue": note.issue,
                             "labelwise_qa_score": round(float(note.score), 4)})
            self.client.request("PATCH", f"/api/tasks/{tid}/", what=f"marking task {tid} for review", json={"data": data})
        view = self._review_view(pid)
        return PushReport(batch.round, len(batch.items), where=f"Label Studio project {pid}, tab '{REVIEW_TAB}' at "
                                                                f"{self.url}/projects/{pid}/data?tab={view}")

    def _review_view(self, pid: int) -> int:
        """The id of the project's "labelwise review" Data Manager tab, created when missing."""
        views = self.client.request("GET", "/api/dm/views", what=f"listing the tabs of project {pid}", params={"project": pid})
        for view in views or []:
            if (view.get("data") or {}).get("title") == REVIEW_TAB:
                return int(view["id"])
        body = {"project": pid, "data": {"title": REVIEW_TAB, "filters": {"conjunction": "and", "items": [
            {"filter": f"filter:tasks:data.{REVIEW_FIELD}", "operator": "equal", "type": "String", "value": "yes"}]}}}
        created = self.client.request("POST", "/api/dm/views", what=f"adding the '{REVIEW_TAB}' tab to project {pid}", json=body)
        return int(created["id"])

    def _import(self, pid: int, batch: Batch, missing: list[BatchItem], tasks: dict[str, int], payload: dict[str, dict]) -> None:
        self._ensure_storage(pid, missing)
        for start in range(0, len(missing), self.chunk_size):
            chunk = missing[start : start + self.chunk_size]
            body = self.client.request(
                "POST",
                f"/api/projects/{pid}/import",
                what=f"importing {len(chunk)} tasks of round {batch.round} into project {pid}",
                params={"return_task_ids": "true", "commit_to_project": "true"},
                json=[payload[item.sha256] for item in chunk],
            )
            ids = (body or {}).get("task_ids") or []
            if len(ids) != len(chunk):
                raise AnnotationError(
                    f"Label Studio imported {len(ids)} tasks for {len(chunk)} images of round {batch.round} in project "
                    f"{pid}; push again (it only creates what is missing)."
                )
            tasks.update({item.sha256: int(tid) for item, tid in zip(chunk, ids)})
            self._set_round_tasks(batch.round, tasks)
        log.info("pushed %d tasks of round %d to Label Studio project %d", len(missing), batch.round, pid)

    def _check_batch(self, batch: Batch) -> None:
        if tuple(batch.classes) != self.classes:
            raise AnnotationError(
                f"Round {batch.round} has classes {list(batch.classes)} but the Label Studio backend was set up with "
                f"{list(self.classes)}; they must be the same."
            )

    # -- reading tasks ------------------------------------------------------------------------------------------------

    def _light_tasks(self, pid: int, ids: Sequence[int]) -> dict[int, dict]:
        """id -> {id, total_annotations, cancelled_annotations, updated_at} of the given tasks, a few fields each."""
        return self._tasks(pid, ids, {"include": LIGHT_FIELDS}, "the annotation counts")

    def _full_tasks(self, pid: int, ids: Sequence[int]) -> dict[int, dict]:
        """id -> the task with its annotations, for the given tasks only."""
        return self._tasks(pid, ids, {"fields": "all"}, "the annotations")

    def _tasks(self, pid: int, ids: Sequence[int], fields: dict[str, str], reading: str) -> dict[int, dict]:
        """id -> task for the given ids, asked for in chunks (a query naming thousands of ids is refused)."""
        out: dict[int, dict] = {}
        for start in range(0, len(ids), ID_CHUNK):
            chunk = ids[start : start + ID_CHUNK]
            for task in self.client.paged(
                "/api/tasks",
                what=f"reading {reading} of {len(chunk)} tasks of project {pid}",
                key="tasks",
                params={"project": pid, **fields, "query": _selected(chunk)},
            ):
                out[int(task["id"])] = task
        return out

    def _round_state(self, batch: Batch, *, use_cache: bool) -> tuple[int, dict[str, dict | None]]:
        """sha256 -> the task (with annotations when it has any) for every image of the round; None for an image the
        project holds no task for on purpose (deleted by `retire`, or left out of a new project as finished before).
        Raises when a task is missing on the server."""
        self._check_batch(batch)
        pid = self.project_id
        tasks = self._round_tasks(batch.round)
        retired = self._retired(batch.round) | self._left_out(batch.round)
        if pid is None or not (tasks or retired):
            raise AnnotationError(f"Round {batch.round} has not been pushed to Label Studio yet; run `labelwise annotate push` first.")
        self._get_project(pid)
        ids = sorted(set(tasks.values()))
        light = self._light_tasks(pid, ids)
        gone: list[str] = []
        for item in batch.items:
            tid = tasks.get(item.sha256)
            if tid is None and item.sha256 not in retired:
                gone.append(f"image {item.staged_name} (never pushed)")
            elif tid is not None and tid not in light:
                gone.append(f"task {tid} (image {item.staged_name})")
        if gone:
            raise AnnotationError(
                f"Round {batch.round} is incomplete in Label Studio project {pid}: {', '.join(gone[:10])}"
                f"{' ...' if len(gone) > 10 else ''} {'is' if len(gone) == 1 else 'are'} missing (deleted mid-round?). "
                "Nothing was written; run `labelwise annotate push` to re-create the missing tasks, then pull again."
            )

        def key(t: dict) -> tuple:
            return (t.get("updated_at"), t.get("total_annotations"), t.get("cancelled_annotations"))

        annotated = [tid for tid, t in light.items() if (t.get("total_annotations") or 0) + (t.get("cancelled_annotations") or 0) > 0]
        need = [tid for tid in annotated if not use_cache or tid not in self._cache or self._cache[tid][0] != key(light[tid])]
        full = self._full_tasks(pid, need) if need else {}
        for tid, task in full.items():
            self._cache[tid] = (key(light[tid]), task)
        found: dict[str, dict | None] = {}
        for item in batch.items:
            tid = tasks.get(item.sha256)
            if tid is None:
                found[item.sha256] = None
            elif tid in full:
                found[item.sha256] = full[tid]
            elif tid in annotated and tid in self._cache:
                found[item.sha256] = self._cache[tid][1]
            else:
                found[item.sha256] = {"id": tid, "annotations": []}
        return pid, found

    # -- judging ------------------------------------------------------------------------------------------------------

    def _judge(self, batch: Batch, pid: int, item: BatchItem, task: dict) -> tuple[TaskOutcome, AnnotatedImage | None, list[Problem]]:
        """The outcome of one image: the annotation that counts, taken or refused with the reasons."""
        tid = int(task["id"])
        where = f"Label Studio task {tid} (image {item.staged_name})"
        annotations = task.get("annotations") or []
        base = dict(image=item.staged_name, task_id=str(tid))
        if not annotations:
            return TaskOutcome(item.sha256, "pending", **base), None, []
        data = task.get("data") or {}
        if data.get("labelwise_sha256") not in (None, item.sha256):
            problem = Problem(item.sha256, where, task_id=str(tid), image=item.staged_name,
                              why=f"the task belongs to image {data.get('labelwise_sha256')}, not {item.sha256}",
                              fix="Push the round again.")
            return TaskOutcome(item.sha256, "rejected", **base), None, [problem]
        submitted = [a for a in annotations if not a.get("was_cancelled")]
        skips = [a for a in annotations if a.get("was_cancelled")]
        if not submitted:  # everyone who finished it passed
            ann = newest_annotation(skips)
            source = label_source(pid, tid, ann.get("id"))
            label = AnnotatedImage(item.sha256, "skipped", (), annotator_of(ann), _lead_time(ann), ann.get("updated_at"), source)
            return TaskOutcome(item.sha256, "skipped", annotation_id=str(ann.get("id")), source=source,
                               updated_at=ann.get("updated_at"), **base), label, []
        ann = newest_annotation(submitted)
        aid = ann.get("id")
        source = label_source(pid, tid, aid)
        replaces = tuple(str(a.get("id")) for a in submitted if a is not ann)
        skipped_by = tuple(dict.fromkeys(annotator_of(a) or f"annotation {a.get('id')}" for a in skips))
        outcome = dict(annotation_id=str(aid), source=source, updated_at=ann.get("updated_at"),
                       skipped_by=skipped_by, replaces=replaces, **base)
        where_ann = f"{where}, annotation {aid}" + (f" by {annotator_of(ann)}" if annotator_of(ann) else "")
        stale = (f" Until then the image is held out of training: annotation {', '.join(replaces)}, which an earlier "
                 "pull may have taken, is out of date." if replaces else
                 " Until then the image is held out of training (a label pulled before it was changed is out of date).")
        problems: list[Problem] = []
        if self.check_hashes:
            why = self._files.problem(item)
            if why is not None:
                problems.append(Problem(item.sha256, where_ann, task_id=str(tid), image=item.staged_name,
                                        annotation_id=str(aid), why=why,
                                        fix="Restore the file, or let the image go back to the pool and select it again."))
                return TaskOutcome(item.sha256, "rejected", **outcome), None, problems
        boxes, errors = convert_annotation(ann, item, batch.classes)
        if errors:
            for region, why in errors:
                problems.append(Problem(item.sha256, where_ann, task_id=str(tid), image=item.staged_name,
                                        region=region, annotation_id=str(aid), why=why,
                                        fix="Correct it in Label Studio and pull again." + stale))
            return TaskOutcome(item.sha256, "rejected", **outcome), None, problems
        label = AnnotatedImage(item.sha256, "labeled", boxes, annotator_of(ann), _lead_time(ann), ann.get("updated_at"), source)
        return TaskOutcome(item.sha256, "accepted", **outcome), label, []

    def _evaluate(self, batch: Batch, *, use_cache: bool) -> PullResult:
        pid, found = self._round_state(batch, use_cache=use_cache)
        labels: list[AnnotatedImage] = []
        problems: list[Problem] = []
        outcomes: list[TaskOutcome] = []
        for item in batch.items:
            if found[item.sha256] is None:  # no task here on purpose: not counted
                continue
            outcome, label, probs = self._judge(batch, pid, item, found[item.sha256])
            outcomes.append(outcome)
            problems.extend(probs)
            if label is not None:
                labels.append(label)
        held = tuple(o.sha256 for o in outcomes if o.status == "rejected")
        return PullResult(tuple(labels), tuple(problems), tuple(outcomes), held)

    def progress(self, batch: Batch) -> AnnotationProgress:
        """Accepted / rejected / skipped / pending, reading only ids and annotation counts of the round's tasks and the
        annotations of tasks that changed since the last call."""
        return self._evaluate(batch, use_cache=True).counts()

    def pull(self, batch: Batch) -> PullResult:
        return self._evaluate(batch, use_cache=False)

    # -- retire -------------------------------------------------------------------------------------------------------

    def retire(self, batch: Batch, *, keep: Collection[str] = ()) -> RetireReport:
        """Delete the batch's tasks that nobody has annotated or skipped (annotators can no longer pick them up); keep
        annotated ones and the images in `keep` (e.g. those also in the new batch). Says which."""
        self._check_batch(batch)
        keep = set(keep)
        pid = self.project_id
        tasks = self._round_tasks(batch.round)
        if pid is None or not tasks:
            return RetireReport(batch.round, missing=tuple(i.sha256 for i in batch.items),
                                details=tuple(f"image {i.staged_name}: not pushed to Label Studio" for i in batch.items))
        self._get_project(pid)

        def annotations(task: dict) -> int:
            return (task.get("total_annotations") or 0) + (task.get("cancelled_annotations") or 0)

        light = self._light_tasks(pid, sorted(set(tasks.values())))
        candidates = [tasks[i.sha256] for i in batch.items if i.sha256 not in keep and i.sha256 in tasks
                      and tasks[i.sha256] in light and not annotations(light[tasks[i.sha256]])]
        # An annotator may have submitted since: read those tasks again just before deleting.
        again = self._light_tasks(pid, candidates) if candidates else {}
        delete = [tid for tid in candidates if tid in again and not annotations(again[tid])]
        light.update(again)
        removed, kept, missing, details = [], [], [], []
        for item in batch.items:
            tid = tasks.get(item.sha256)
            name = f"task {tid} (image {item.staged_name})"
            if tid is None or tid not in light:
                missing.append(item.sha256)
                details.append(f"image {item.staged_name}: no task in project {pid}")
            elif tid in delete:
                removed.append(item.sha256)
                details.append(f"{name}: deleted, nobody had annotated it")
            else:
                kept.append(item.sha256)
                n = annotations(light[tid])
                details.append(f"{name}: kept, " + (f"{n} annotation(s)" if n else "asked to keep it"))
        for start in range(0, len(delete), ID_CHUNK):
            chunk = delete[start : start + ID_CHUNK]
            self.client.request(
                "POST", "/api/dm/actions", what=f"deleting {len(chunk)} unlabeled tasks of round {batch.round} in project {pid}",
                params={"id": "delete_tasks", "project": pid},
                json={"selectedItems": {"all": False, "included": chunk}},
            )
        if removed:
            gone = set(removed)
            self._set_round_tasks(batch.round, {s: t for s, t in tasks.items() if s not in gone})
            self.state.set(self._key("round", batch.round, "retired"), sorted(self._retired(batch.round) | gone))
            for tid in delete:
                self._cache.pop(tid, None)
        log.info("retired round %d in Label Studio project %d: %d tasks deleted, %d kept", batch.round, pid, len(removed), len(kept))
        return RetireReport(batch.round, tuple(removed), tuple(kept), tuple(missing), tuple(details))

    # -- wait ---------------------------------------------------------------------------------------------------------

    def wait(
        self,
        batch: Batch,
        *,
        timeout_s: float | None = None,
        poll_s: float = 2.0,
        max_poll_s: float = 60.0,
        on_progress: Callable[[AnnotationProgress], None] | None = None,
        webhook: bool | None = None,
    ) -> AnnotationProgress:
        """Wait until every image of the batch is done (accepted or skipped) or `timeout_s` passes; returns the last
        progress.

        Polls with back-off (poll_s, growing 1.5x while nothing changes, up to max_poll_s). With a webhook port
        (`webhook_port`, 0 = any free port) it also listens on 127.0.0.1 for Label Studio's annotation webhooks and
        checks at once when one arrives (the server needs LABEL_STUDIO_SSRF_PROTECTION_ENABLED=false to call a
        loopback address; if it refuses, waiting falls back to polling with a warning).
        """
        use_webhook = (self.webhook_port is not None) if webhook is None else webhook
        listener = _WebhookListener(self.webhook_port or 0) if use_webhook else None
        hook_id = None
        try:
            if listener is not None:
                hook_id = self._register_webhook(listener.url)
                if hook_id is None:
                    listener.close()
                    listener = None
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            delay = poll_s
            last = None
            while True:
                prog = self.progress(batch)
                if on_progress is not None and prog != last:
                    on_progress(prog)
                if prog.complete:
                    return prog
                delay = poll_s if prog != last else min(max_poll_s, delay * 1.5)
                last = prog
                if deadline is not None and time.monotonic() >= deadline:
                    return prog
                pause = delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic()))
                if listener is not None:
                    listener.event.wait(pause)
                    listener.event.clear()
                else:
                    time.sleep(pause)
        finally:
            if hook_id is not None:
                try:
                    self.client.request("DELETE", f"/api/webhooks/{hook_id}/", what=f"removing webhook {hook_id}")
                except AnnotationError as exc:
                    log.warning("could not remove the Label Studio webhook %s: %s", hook_id, exc)
            if listener is not None:
                listener.close()

    def _register_webhook(self, url: str) -> int | None:
        pid = self.ensure_project()
        try:
            hook = self.client.request(
                "POST",
                "/api/webhooks",
                what=f"registering a webhook for project {pid}",
                json={
                    "project": pid,
                    "url": url,
                    "send_payload": False,
                    "send_for_all_actions": False,
                    "actions": ["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "TASKS_DELETED"],
                },
            )
        except AnnotationError as exc:
            if "refused the API token" in str(exc) or "not reach" in str(exc):
                raise
            log.warning(
                "Label Studio refused a webhook to %s (%s); waiting by polling instead. A server that must call a "
                "loopback address needs LABEL_STUDIO_SSRF_PROTECTION_ENABLED=false.",
                url,
                exc,
            )
            return None
        return int(hook["id"])


def _lead_time(annotation: dict) -> float | None:
    return float(annotation["lead_time"]) if annotation.get("lead_time") is not None else None


class _WebhookListener:
    """A tiny HTTP receiver on 127.0.0.1 that answers 200 at once and sets an event (the server waits ~1 s at most)."""

    def __init__(self, port: int) -> None:
        self.event = threading.Event()
        event = self.event

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(min(length, 1 << 20))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                event.set()

            def log_message(self, *args: Any) -> None:
                pass

        try:
            self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        except OSError as exc:
            raise AnnotationError(f"Cannot listen for Label Studio webhooks on 127.0.0.1:{port} ({exc.strerror}); choose another annotation.webhook_port.") from None
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/labelwise-webhook"
        self.thread = threading.Thread(target=self.server.serve_forever, name="labelwise-webhook", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------------------------

_OPTIONS = {"backend", "url", "document_root", "project_title", "project_id", "webhook_port", "timeout_s", "chunk_size", "check_hashes"}


def from_config(options: dict, state: BackendState, workspace: Path, classes: tuple[str, ...]) -> LabelStudioBackend:
    """Build the backend from the `annotation:` section of labelwise.yaml.

    Keys: url (default http://127.0.0.1:8080), document_root (default: $LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT; relative
    paths are taken from the workspace), project_title (default "labelwise <workspace folder>"), project_id (adopt an
    existing project), webhook_port, timeout_s (30), chunk_size (250), check_hashes (true). The token is read from
    $LABEL_STUDIO_API_KEY only.
    """
    options = dict(options or {})
    secrets = sorted(k for k in options if k.lower() in {"api_key", "token", "api_token", "key", "password"})
    if secrets:
        raise AnnotationError(
            f"annotation.{secrets[0]} must not be in labelwise.yaml: the token is read from the environment variable "
            f"{ENV_TOKEN} only. Remove it from the file (and rotate the token if the file was shared)."
        )
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise AnnotationError(f"Unknown annotation option(s) for label_studio: {', '.join(unknown)}; known: {', '.join(sorted(_OPTIONS))}.")
    root = options.get("document_root") or os.environ.get("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT")
    if not root:
        raise AnnotationError(
            "annotation.document_root is not set: give the folder Label Studio serves local files from (the server's "
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT); the image pool must lie under it."
        )
    root_path = Path(os.path.expanduser(str(root)))
    if not root_path.is_absolute():
        root_path = workspace / root_path
    webhook_port = options.get("webhook_port")
    project_id = options.get("project_id")
    return LabelStudioBackend(
        url=str(options.get("url") or "http://127.0.0.1:8080"),
        state=state,
        document_root=root_path,
        project_title=str(options.get("project_title") or f"labelwise {Path(workspace).resolve().name}"),
        classes=tuple(classes),
        webhook_port=int(webhook_port) if webhook_port is not None else None,
        timeout=float(options.get("timeout_s", 30.0)),
        project_id=int(project_id) if project_id is not None else None,
        chunk_size=int(options.get("chunk_size", 250)),
        check_hashes=bool(options.get("check_hashes", True)),
    )
