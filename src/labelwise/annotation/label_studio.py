"""Label Studio as an annotation backend: a thin HTTP client and the backend above it.

What a round looks like on the server:

* one project per workspace, created if needed, whose RectangleLabels carry fixed class ids (`category="<id>"`), so
  ids never depend on alphabetical order; an existing project is adopted only if its labels match the classes exactly;
* the images stay where they are: a local-files storage covering their folders (which must lie under the server's
  `LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`, given here as `document_root`) lets the server read them, no pixel is sent;
* the batch is imported in chunks (one request per chunk), each task with the round model's boxes as a prediction
  (percent coordinates, `model_version`, `score` = the selection score, so annotators can sort by it) and the
  labelwise bookkeeping in `data` (`labelwise_sha256`, `labelwise_round`, rank, score, reason);
* the project's `model_version` is set to the round's every push (the Data Manager's prediction score only averages
  predictions of the current model version).

Push is idempotent twice over: the state records the task id of every (round, sha256), and before importing the
backend lists the project's tasks, so a push killed after the import but before the state was saved creates nothing new.
Pull only reads: it takes the newest annotation of every task (by `updated_at`, then id), converts rectangles to YOLO
by class NAME, and turns everything it cannot take as it is into a `Problem` naming the task.

The API token comes only from the environment (`LABEL_STUDIO_API_KEY`); it is never logged, written or put into an
error message. Legacy tokens (`Authorization: Token ...`) and personal access tokens (JWT refresh tokens, exchanged for
short-lived access tokens) both work.
"""

from __future__ import annotations

import hashlib
import http.server
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
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
    Problem,
    PullResult,
    YoloBox,
)

log = logging.getLogger(__name__)

ENV_TOKEN = "LABEL_STUDIO_API_KEY"
IMAGE_VAR = "image"
FROM_NAME = "label"
TO_NAME = "image"
# Float noise the editor leaves at the image border (in fractions of the image): inside it an edge is snapped to the
# border; anything further out is a Problem, never clamped.
EDGE_TOLERANCE = 1e-7
STATE_PREFIX = "label_studio"


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
        self._http = httpx.Client(base_url=self.url, timeout=timeout, follow_redirects=False)

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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_annotation(
    annotation: dict, item: BatchItem, classes: Sequence[str], where: str
) -> tuple[tuple[YoloBox, ...], list[str]]:
    """Rectangles of one annotation -> YOLO boxes by class NAME, and the reasons it cannot be taken (empty if fine)."""
    by_name = {name: cid for cid, name in enumerate(classes)}
    boxes: list[YoloBox] = []
    errors: list[str] = []
    for n, region in enumerate(annotation.get("result") or [], start=1):
        what = f"region {n}" + (f" (id {region['id']})" if region.get("id") else "")
        rtype = region.get("type")
        if rtype != "rectanglelabels":
            errors.append(f"{what} is a {rtype!r}, not a labelled rectangle; redraw it as a box with a class")
            continue
        value = region.get("value") or {}
        labels = value.get("rectanglelabels") or []
        if len(labels) != 1:
            errors.append(f"{what} has {len(labels)} labels {labels}; give it exactly one class")
            continue
        if labels[0] not in by_name:
            errors.append(f"{what} has the unknown label {labels[0]!r} (classes: {', '.join(classes)})")
            continue
        rotation = float(value.get("rotation") or 0.0)
        if abs(math.remainder(rotation, 360.0)) > 1e-6:
            errors.append(f"{what} ({labels[0]}) is rotated by {rotation:g} degrees; YOLO boxes are axis-aligned, redraw it without rotation")
            continue
        ow, oh = region.get("original_width"), region.get("original_height")
        if ow is not None and oh is not None and (int(ow), int(oh)) != (item.width, item.height):
            errors.append(
                f"{what} was drawn on a {ow}x{oh} image, but the selected image is {item.width}x{item.height}; "
                "the image changed since selection"
            )
            continue
        try:
            x, y, w, h = (float(value[k]) for k in ("x", "y", "width", "height"))
        except (KeyError, TypeError, ValueError):
            errors.append(f"{what} has no numeric x/y/width/height")
            continue
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
            errors.append(f"{what} ({labels[0]}) has an empty or invalid size (width {w:g}%, height {h:g}%)")
            continue
        left, top, right, bottom = x / 100.0, y / 100.0, (x + w) / 100.0, (y + h) / 100.0
        if left < -EDGE_TOLERANCE or top < -EDGE_TOLERANCE or right > 1 + EDGE_TOLERANCE or bottom > 1 + EDGE_TOLERANCE:
            errors.append(
                f"{what} ({labels[0]}) reaches outside the image (x {x:g}%..{x + w:g}%, y {y:g}%..{y + h:g}%); "
                "move it inside the image"
            )
            continue
        if left < 0 or top < 0 or right > 1 or bottom > 1:  # float noise at the border only
            left, top, right, bottom = max(left, 0.0), max(top, 0.0), min(right, 1.0), min(bottom, 1.0)
            boxes.append((by_name[labels[0]], (left + right) / 2, (top + bottom) / 2, right - left, bottom - top))
        else:
            cx, cy, bw, bh = percent_to_yolo(x, y, w, h)
            boxes.append((by_name[labels[0]], cx, cy, bw, bh))
    return tuple(boxes), errors


# --------------------------------------------------------------------------------------------------------------------
# the backend
# --------------------------------------------------------------------------------------------------------------------


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
        self.client = LabelStudioClient(self.url, api_key, timeout=timeout)

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

    def forget_project(self) -> None:
        """Drop the record of the project (e.g. after it was deleted on purpose); the next push creates or finds one."""
        self.state.set(self._key("project_id"), None)
        for key in ("storages",):
            self.state.set(self._key(key), None)

    # -- project ------------------------------------------------------------------------------------------------------

    def _project_missing(self, pid: int) -> AnnotationError:
        return AnnotationError(
            f"Label Studio project {pid} no longer exists at {self.url} (deleted, or annotation.url points at another "
            "server). Nothing was written. If it was deleted on purpose, clear labelwise's record of it "
            "(`labelwise annotate push --new-project`, i.e. LabelStudioBackend.forget_project()) and push the round again."
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

    def ensure_project(self) -> int:
        """The project id: recorded, configured, found by title (with matching labels) or newly created."""
        pid = self.project_id
        if pid is not None:
            project = self._get_project(pid)
            self._check_labels(project)
        else:
            found = [
                p
                for p in self.client.paged("/api/projects", what="listing projects", key="results", params={})
                if p.get("title") == self.project_title
            ]
            if len(found) > 1:
                raise AnnotationError(
                    f"Label Studio at {self.url} has {len(found)} projects titled {self.project_title!r} "
                    f"(ids {[p['id'] for p in found]}); set annotation.project_id to the one to use."
                )
            if found:
                project = found[0]
                self._check_labels(project)
            else:
                project = self.client.request(
                    "POST",
                    "/api/projects",
                    what=f"creating project {self.project_title!r}",
                    json={
                        "title": self.project_title,
                        "label_config": label_config(self.classes),
                        "description": "Active-learning rounds from labelwise: sort tasks by prediction score.",
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

    def _server_tasks(self, pid: int, *, full: bool) -> list[dict]:
        params: dict[str, Any] = {"project": pid}
        if full:
            params["fields"] = "all"
        return list(self.client.paged("/api/tasks", what=f"listing the tasks of project {pid}", key="tasks", params=params))

    def push(self, batch: Batch) -> None:
        self._check_batch(batch)
        if not batch.items:
            return
        payload = {item.sha256: self._task(batch, item) for item in batch.items}  # every image checked first
        pid = self.ensure_project()
        # What the server already has for this round (a push killed before saving the state must not duplicate).
        on_server: dict[str, int] = {}
        for task in self._server_tasks(pid, full=False):
            data = task.get("data") or {}
            if data.get("labelwise_round") == batch.round and data.get("labelwise_sha256"):
                on_server.setdefault(data["labelwise_sha256"], int(task["id"]))
        tasks = {sha: on_server[sha] for sha in [i.sha256 for i in batch.items] if sha in on_server}
        self.state.set(self._key("round", batch.round, "tasks"), tasks)
        missing = [item for item in batch.items if item.sha256 not in tasks]
        if missing:
            self._import(pid, batch, missing, tasks, payload)
        # After the import: the server accepts only a model version that some prediction of the project carries.
        self.client.request(
            "PATCH", f"/api/projects/{pid}/", what=f"setting the model version of project {pid}", json={"model_version": batch.model_version}
        )

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
            self.state.set(self._key("round", batch.round, "tasks"), tasks)
        log.info("pushed %d tasks of round %d to Label Studio project %d", len(missing), batch.round, pid)

    def _check_batch(self, batch: Batch) -> None:
        if tuple(batch.classes) != self.classes:
            raise AnnotationError(
                f"Round {batch.round} has classes {list(batch.classes)} but the Label Studio backend was set up with "
                f"{list(self.classes)}; they must be the same."
            )

    # -- progress / pull ----------------------------------------------------------------------------------------------

    def _round_server_tasks(self, batch: Batch) -> tuple[int, dict[str, dict]]:
        """sha256 -> the task (with annotations) for every image of the round; errors if any is missing."""
        self._check_batch(batch)
        pid = self.project_id
        tasks = self._round_tasks(batch.round)
        if pid is None or not tasks:
            raise AnnotationError(f"Round {batch.round} has not been pushed to Label Studio yet; run `labelwise annotate push` first.")
        self._get_project(pid)
        by_id = {int(t["id"]): t for t in self._server_tasks(pid, full=True)}
        found: dict[str, dict] = {}
        gone: list[str] = []
        for item in batch.items:
            tid = tasks.get(item.sha256)
            if tid is None:
                gone.append(f"image {item.staged_name} (never pushed)")
            elif tid not in by_id:
                gone.append(f"task {tid} (image {item.staged_name})")
            else:
                found[item.sha256] = by_id[tid]
        if gone:
            raise AnnotationError(
                f"Round {batch.round} is incomplete in Label Studio project {pid}: {', '.join(gone[:10])}"
                f"{' ...' if len(gone) > 10 else ''} {'is' if len(gone) == 1 else 'are'} missing (deleted mid-round?). "
                "Nothing was written; run `labelwise annotate push` to re-create the missing tasks, then pull again."
            )
        return pid, found

    def progress(self, batch: Batch) -> AnnotationProgress:
        _, found = self._round_server_tasks(batch)
        done = skipped = 0
        for task in found.values():
            ann = newest_annotation(task.get("annotations") or [])
            if ann is not None:
                done += 1
                skipped += bool(ann.get("was_cancelled"))
        return AnnotationProgress(total=len(batch.items), done=done, skipped=skipped)

    def pull(self, batch: Batch) -> PullResult:
        _, found = self._round_server_tasks(batch)
        labels: list[AnnotatedImage] = []
        problems: list[Problem] = []
        for item in batch.items:
            task = found[item.sha256]
            where = f"Label Studio task {task['id']} (image {item.staged_name})"
            ann = newest_annotation(task.get("annotations") or [])
            if ann is None:
                continue
            data = task.get("data") or {}
            if data.get("labelwise_sha256") not in (None, item.sha256):
                problems.append(Problem(item.sha256, where, f"{where} belongs to image {data.get('labelwise_sha256')}, not {item.sha256}; push the round again"))
                continue
            common = dict(
                sha256=item.sha256,
                annotator=annotator_of(ann),
                lead_time_s=float(ann["lead_time"]) if ann.get("lead_time") is not None else None,
                updated_at=ann.get("updated_at"),
                source=f"label_studio task {task['id']} annotation {ann.get('id')}",
            )
            if ann.get("was_cancelled"):
                labels.append(AnnotatedImage(status="skipped", **common))
                continue
            if self.check_hashes:
                try:
                    current = file_sha256(item.path)
                except OSError as exc:
                    problems.append(Problem(item.sha256, where, f"{where}: cannot read {item.path} to check it ({exc.strerror}); restore the file"))
                    continue
                if current != item.sha256:
                    problems.append(
                        Problem(
                            item.sha256,
                            where,
                            f"{where}: the image file {item.path} changed since it was selected (sha256 {current[:12]} is "
                            f"not {item.sha256[:12]}); its boxes may not fit the file. Restore the file, or let the "
                            "image go back to the pool and select it again.",
                        )
                    )
                    continue
            boxes, errors = convert_annotation(ann, item, batch.classes, where)
            if errors:
                problems.append(Problem(item.sha256, where, f"{where}, annotation {ann.get('id')}: " + "; ".join(errors) + ". Correct it in Label Studio and pull again."))
                continue
            labels.append(AnnotatedImage(status="labeled", boxes=boxes, **common))
        return PullResult(tuple(labels), tuple(problems))

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
        """Wait until every image of the batch is done (or `timeout_s` passes); returns the last progress.

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
                if prog.done >= prog.total:
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
