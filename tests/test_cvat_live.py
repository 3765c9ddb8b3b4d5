"""The live CVAT backend (REST over httpx) against an in-memory fake CVAT (httpx.MockTransport) that answers with
the documented response shapes in tests/fixtures/cvat. No CVAT server runs here (it needs Docker)."""

from __future__ import annotations

import copy
import email.parser
import hashlib
import io
import json
import os
import re
from pathlib import Path

import httpx
import pytest
from PIL import Image

from labelwise.annotation.base import AnnotationBackend, AnnotationError, Batch, BatchItem
from labelwise.annotation.cvat import CvatBackend, from_config
from labelwise.annotation.http import RetryPolicy
from labelwise.boxes import EDGE_TOLERANCE

FIXTURES = Path(__file__).parent / "fixtures" / "cvat"
CLASSES = ("fish", "jellyfish", "penguin", "shark")
SPECS = [(640, 480, "a/tank.jpg"), (480, 640, "b/tank.jpg"), (333, 777, "c/odd.png"), (100, 40, "c/thin.png")]
ENV = {"CVAT_ACCESS_TOKEN": "pat-secret-0123456789"}


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def page(results: list) -> dict:
    return {"count": len(results), "next": None, "previous": None, "results": results}


class FakeCvat:
    """Tasks, jobs (segment_size frames each), frames, labels and annotations, kept as a CVAT 2.x server would."""

    def __init__(self, segment_size: int = 2) -> None:
        self.segment_size = segment_size
        self.tasks: dict[int, dict] = {}
        self.labels: dict[int, dict] = {}
        self.jobs: dict[int, dict] = {}
        self.meta: dict[int, dict] = {}
        self.shapes: dict[int, list[dict]] = {}  # task id -> shapes
        self.calls: list[tuple[str, str]] = []
        self.uploads: list[list[str]] = []
        self.next_id = 100
        self.status_override: int | None = None

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        self.calls.append((method, path))
        if self.status_override:
            return httpx.Response(self.status_override, json={"detail": "nope"})
        q = request.url.params
        if path == "/api/tasks" and method == "GET":
            found = [t for t in self.tasks.values() if ("name" not in q or t["name"] == q["name"])]
            return httpx.Response(200, json=page(found))
        if path == "/api/tasks" and method == "POST":
            spec = json.loads(request.content)
            tid = self._id()
            task = fixture("task")
            task.update(id=tid, name=spec["name"], project_id=spec.get("project_id"), url=f"http://cvat.test/api/tasks/{tid}",
                        segment_size=spec.get("segment_size", 0))
            self.tasks[tid] = task
            for lab in spec.get("labels", []):
                lid = self._id()
                self.labels[lid] = {**fixture("label"), "id": lid, "name": lab["name"], "task_id": tid}
            self.shapes[tid] = []
            return httpx.Response(201, json=task)
        if m := re.fullmatch(r"/api/tasks/(\d+)", path):
            task = self.tasks.get(int(m[1]))
            return httpx.Response(200, json=task) if task else httpx.Response(404, json={"detail": "Not found."})
        if (m := re.fullmatch(r"/api/tasks/(\d+)/data/", path)) and method == "POST":
            return self._upload(int(m[1]), request)
        if m := re.fullmatch(r"/api/requests/(.+)", path):
            req = fixture("request_finished")
            req["id"] = m[1]
            return httpx.Response(200, json=req)
        if m := re.fullmatch(r"/api/tasks/(\d+)/data/meta", path):
            meta = self.meta[int(m[1])]
            if method == "PATCH":
                meta["deleted_frames"] = json.loads(request.content)["deleted_frames"]
            return httpx.Response(200, json=meta)
        if path == "/api/labels":
            tid = int(q["task_id"])
            return httpx.Response(200, json=page([lab for lab in self.labels.values() if lab["task_id"] == tid]))
        if m := re.fullmatch(r"/api/tasks/(\d+)/annotations", path):
            tid = int(m[1])
            if method == "PUT":
                body = json.loads(request.content)
                self.shapes[tid] = [{**fixture("shape_rectangle"), **s, "id": self._id()} for s in body["shapes"]]
            return httpx.Response(200, json={"version": 0, "tags": [], "shapes": self.shapes[tid], "tracks": []})
        if path == "/api/jobs":
            tid = int(q["task_id"])
            return httpx.Response(200, json=page([j for j in self.jobs.values() if j["task_id"] == tid]))
        if m := re.fullmatch(r"/api/jobs/(\d+)/annotations", path):
            job = self.jobs[int(m[1])]
            shapes = [s for s in self.shapes[job["task_id"]] if job["start_frame"] <= s["frame"] <= job["stop_frame"]]
            return httpx.Response(200, json={"version": 3, "tags": [], "shapes": shapes, "tracks": []})
        return httpx.Response(404, json={"detail": f"fake CVAT has no {method} {path}"})

    def _upload(self, tid: int, request: httpx.Request) -> httpx.Response:
        msg = email.parser.BytesParser().parsebytes(
            b"Content-Type: " + request.headers["content-type"].encode() + b"\r\n\r\n" + request.content)
        fields, files = {}, {}
        for part in msg.get_payload():
            name = part.get_param("name", header="content-disposition")
            if part.get_filename():
                files[part.get_filename()] = part.get_payload(decode=True)
            else:
                fields[name] = part.get_payload(decode=True).decode()
        order = [fields[k] for k in sorted((k for k in fields if k.startswith("upload_file_order")),
                                          key=lambda k: int(k[k.index("[") + 1:-1]))]
        assert fields["sorting_method"] == "predefined" and sorted(order) == sorted(files)
        self.uploads.append(order)
        frames = []
        for name in order:
            w, h = Image.open(io.BytesIO(files[name])).size
            frames.append({**fixture("frame"), "name": name, "width": w, "height": h})
        meta = fixture("data_meta")
        meta.update(size=len(frames), stop_frame=len(frames) - 1, frames=frames)
        self.meta[tid] = meta
        self.tasks[tid]["size"] = len(frames)
        step = self.tasks[tid]["segment_size"] or self.segment_size
        for start in range(0, len(frames), step):
            jid = self._id()
            job = fixture("job")
            job.update(id=jid, task_id=tid, start_frame=start, stop_frame=min(start + step, len(frames)) - 1,
                       frame_count=min(step, len(frames) - start), url=f"http://cvat.test/api/jobs/{jid}")
            self.jobs[jid] = job
        return httpx.Response(202, json={"rq_id": f"create:task-{tid}"})

    # what people do in CVAT
    def task_jobs(self, tid: int) -> list[dict]:
        return sorted((j for j in self.jobs.values() if j["task_id"] == tid), key=lambda j: j["start_frame"])

    def finish(self, job: dict, *, state: str = "completed", stage: str = "annotation", when: str = "2025-03-05T09:00:00Z") -> None:
        job.update(state=state, stage=stage, updated_date=when)

    def draw(self, tid: int, frame: int, label: str, points, *, type_: str = "rectangle", rotation: float = 0.0,
             label_id: int | None = None) -> dict:
        lid = label_id if label_id is not None else next(k for k, v in self.labels.items() if v["name"] == label and v["task_id"] == tid)
        shape = {**fixture("shape_rectangle"), "id": self._id(), "type": type_, "frame": frame, "label_id": lid,
                 "points": list(points), "rotation": rotation, "source": "manual"}
        self.shapes[tid].append(shape)
        return shape

    def clear_frame(self, tid: int, frame: int) -> None:
        self.shapes[tid] = [s for s in self.shapes[tid] if s["frame"] != frame]


class DictState:
    def __init__(self) -> None:
        self.values: dict = {}

    def get(self, key, default=None):
        return self.values.get(key, default)

    def set(self, key, value):
        self.values[key] = value


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


def backend(fake: FakeCvat, state=None, tmp_path: Path = Path("."), **kw) -> CvatBackend:
    return CvatBackend("http://cvat.test", state if state is not None else DictState(), tmp_path, CLASSES,
                       transport=httpx.MockTransport(fake), env=ENV, poll_s=0,
                       retry=RetryPolicy(attempts=2, sleep=lambda s: None), **kw)


@pytest.fixture
def pushed(tmp_path):
    fake = FakeCvat()
    batch = make_batch(tmp_path / "pool")
    state = DictState()
    be = backend(fake, state, tmp_path)
    be.push(batch)
    (tid,) = fake.tasks
    return fake, batch, be, tid


def test_push_creates_one_task_with_data_and_preannotations(tmp_path):
    fake = FakeCvat()
    batch = make_batch(tmp_path / "pool")
    be = backend(fake, DictState(), tmp_path)
    assert isinstance(be, AnnotationBackend)
    report = be.push(batch)
    (tid,) = fake.tasks
    task = fake.tasks[tid]
    assert task["name"] == "labelwise round 2 (r2-cafe)" and report.sent == 4
    assert {lab["name"] for lab in fake.labels.values()} == set(CLASSES)
    assert fake.uploads == [[i.staged_name for i in batch.items]]  # staged names: two tank.jpg never collide
    shapes = fake.shapes[tid]
    assert len(shapes) == 8 and {s["source"] for s in shapes} == {"auto"}
    label_name = {k: v["name"] for k, v in fake.labels.items()}
    first = [s for s in shapes if s["frame"] == 0]
    item = batch.items[0]
    assert [label_name[s["label_id"]] for s in first] == [CLASSES[p[0]] for p in item.predictions]
    assert first[0]["points"] == pytest.approx([0.25 * 640, 0.375 * 480, 0.75 * 640, 0.625 * 480])
    # idempotent: a second push creates, uploads and annotates nothing
    fake.calls.clear()
    again = be.push(batch)
    assert [c for c in fake.calls if c[0] != "GET"] == [] and (again.sent, again.already_there) == (0, 4)


class Killed(BaseException):
    pass


class KillOnTaskId(DictState):
    """The process dies right after CVAT created the task, before its id is recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = True

    def set(self, key, value):
        if self.armed and key.endswith("/task_id"):
            self.armed = False
            raise Killed()
        super().set(key, value)


def test_a_push_killed_after_creating_the_task_leaves_no_duplicate(tmp_path):
    fake = FakeCvat()
    batch = make_batch(tmp_path / "pool")
    state = KillOnTaskId()
    with pytest.raises(Killed):
        backend(fake, state, tmp_path).push(batch)
    assert len(fake.tasks) == 1 and fake.uploads == []
    backend(fake, state, tmp_path).push(batch)  # a new process, the same state
    assert len(fake.tasks) == 1 and len(fake.uploads) == 1
    (tid,) = fake.tasks
    assert state.get("cvat/round/2/task_id") == tid
    backend(fake, DictState(), tmp_path).push(batch)  # even with the state lost: found by name
    assert len(fake.tasks) == 1 and len(fake.uploads) == 1 and len(fake.shapes[tid]) == 8


def test_pull_right_after_push_takes_no_preannotation_as_a_label(pushed):
    fake, batch, be, tid = pushed
    result = be.pull(batch)
    assert result.labels == () and result.problems == ()
    assert {o.status for o in result.tasks} == {"pending"}
    prog = be.progress(batch)
    assert (prog.total, prog.pending, prog.done) == (4, 4, 0)
    assert not any("/api/jobs/" in path and path.endswith("/annotations") for _, path in fake.calls)


def test_pull_takes_only_frames_of_jobs_a_person_finished(pushed):
    fake, batch, be, tid = pushed
    job_a, job_b = fake.task_jobs(tid)
    a, b, c, d = batch.items
    fake.clear_frame(tid, 0)
    fake.draw(tid, 0, "shark", [64, 48, 320, 240])  # the annotator redrew frame 0; frame 1 kept the model's boxes
    fake.draw(tid, 2, "fish", [0, 0, 10, 10])  # job B: in progress
    job_b.update(state="in progress")
    fake.finish(job_a)
    result = be.pull(batch)
    status = {o.sha256: o.status for o in result.tasks}
    assert status == {a.sha256: "accepted", b.sha256: "accepted", c.sha256: "pending", d.sha256: "pending"}
    labels = {lab.sha256: lab for lab in result.labels}
    assert labels[a.sha256].boxes == ((3, pytest.approx(0.3), pytest.approx(0.3), pytest.approx(0.4), pytest.approx(0.4)),)
    assert [bx[0] for bx in labels[b.sha256].boxes] == [p[0] for p in b.predictions]  # reviewed and kept by a person
    assert labels[a.sha256].source == f"cvat:task={tid}:job={job_a['id']}:frame=0"
    assert labels[a.sha256].annotator == "anna" and labels[a.sha256].updated_at == "2025-03-05T09:00:00Z"
    # a reviewer accepts job B (stage acceptance): its frames count, the in-progress shape included
    fake.finish(job_b, state="new", stage="acceptance", when="2025-03-06T09:00:00Z")
    result = be.pull(batch)
    assert {o.status for o in result.tasks} == {"accepted"} and be.progress(batch).complete


def test_problems_are_data_and_rejected_images_are_held(pushed):
    fake, batch, be, tid = pushed
    job_a, job_b = fake.task_jobs(tid)
    a, b, c, d = batch.items
    for f in range(4):
        fake.clear_frame(tid, f)
    fake.draw(tid, 0, "fish", [1, 1, 5, 5], type_="polygon")
    fake.draw(tid, 1, "fish", [1, 1, 50, 50], rotation=30.0)
    bad = fake.draw(tid, 2, "fish", [0, 0, 10, 10], label_id=9999)
    fake.draw(tid, 2, "shark", [300, 700, 340, 780])  # 3 px past the bottom of a 777 px image
    # float noise at the border (within EDGE_TOLERANCE of the side) is clipped, not refused; frame 3 is also checked
    noise = EDGE_TOLERANCE * 100 / 2
    fake.draw(tid, 3, "penguin", [-noise, 0, 100 + noise, 40])
    fake.finish(job_a)
    fake.finish(job_b)
    result = be.pull(batch)
    status = {o.sha256: o.status for o in result.tasks}
    assert status == {a.sha256: "rejected", b.sha256: "rejected", c.sha256: "rejected", d.sha256: "accepted"}
    assert set(result.held) == {a.sha256, b.sha256, c.sha256}
    assert [lab.boxes for lab in result.labels] == [((2, 0.5, 0.5, 1.0, 1.0),)]
    by = {(p.sha256, p.region): p for p in result.problems}
    assert "a polygon (fish) is not a box" in by[(a.sha256, f"shape {fake.shapes[tid][0]['id']}")].why
    assert "rotated by 30" in next(p.why for p in result.problems if p.sha256 == b.sha256)
    assert "unknown label 'label id 9999'" in by[(c.sha256, f"shape {bad['id']}")].why
    assert any("reaches outside the 333x777 image" in p.why for p in result.problems if p.sha256 == c.sha256)
    for p in result.problems:
        assert p.task_id == str(tid) and p.image and p.fix and "\n" not in str(p)
        assert str(p).startswith(f"CVAT task {tid}, job ")
    prog = be.progress(batch)
    assert (prog.accepted, prog.rejected, prog.done, prog.held) == (1, 3, 1, 3)


def test_a_deleted_frame_is_skipped_and_an_empty_finished_frame_has_no_objects(pushed):
    fake, batch, be, tid = pushed
    job_a, _ = fake.task_jobs(tid)
    fake.clear_frame(tid, 0)
    fake.meta[tid]["deleted_frames"] = [1]
    fake.finish(job_a)
    result = be.pull(batch)
    labels = {lab.sha256: lab for lab in result.labels}
    a, b = batch.items[:2]
    assert labels[a.sha256].status == "labeled" and labels[a.sha256].boxes == ()
    assert labels[b.sha256].status == "skipped"
    assert be.progress(batch).skipped == 1


def test_progress_fetches_annotations_only_of_jobs_that_changed(pushed):
    fake, batch, be, tid = pushed
    job_a, job_b = fake.task_jobs(tid)
    fake.finish(job_a)
    be.progress(batch)
    fake.calls.clear()
    be.progress(batch)
    assert not any(path.startswith("/api/jobs/") for _, path in fake.calls)
    fake.finish(job_a, when="2025-03-07T00:00:00Z")  # saved again
    be.progress(batch)
    assert ("GET", f"/api/jobs/{job_a['id']}/annotations") in fake.calls


def test_retire_deletes_frames_nobody_worked_on(pushed):
    fake, batch, be, tid = pushed
    job_a, job_b = fake.task_jobs(tid)
    a, b, c, d = batch.items
    fake.finish(job_a)
    fake.draw(tid, 2, "fish", [0, 0, 10, 10])  # a person started frame 2; frame 3 has only the model's boxes
    job_b.update(state="in progress")
    report = be.retire(batch)
    assert report.removed == (d.sha256,) and set(report.kept) == {a.sha256, b.sha256, c.sha256}
    assert fake.meta[tid]["deleted_frames"] == [3]
    assert any("frame 3" in line and "deleted" in line for line in report.details)
    assert be.pull(batch).status_of(d.sha256) == "skipped"  # gone from the annotators' view


def test_credentials_come_from_the_environment_and_never_show(tmp_path, monkeypatch):
    fake = FakeCvat()
    with pytest.raises(AnnotationError, match="CVAT_ACCESS_TOKEN"):
        CvatBackend("http://cvat.test", DictState(), tmp_path, CLASSES, transport=httpx.MockTransport(fake), env={})
    fake.status_override = 401
    be = CvatBackend("http://cvat.test", DictState(), tmp_path, CLASSES, transport=httpx.MockTransport(fake),
                     env={"CVAT_USERNAME": "anna", "CVAT_PASSWORD": "hunter2-secret"})
    with pytest.raises(AnnotationError) as err:
        be.push(make_batch(tmp_path / "pool"))
    assert "refused the credentials (HTTP 401)" in str(err.value) and "hunter2-secret" not in str(err.value)
    assert "hunter2" not in repr(be) and "hunter2" not in repr(be.client)
    with pytest.raises(AnnotationError, match="environment"):
        from_config({"url": "http://cvat.test", "password": "x"}, DictState(), tmp_path, CLASSES)
    monkeypatch.setenv("CVAT_ACCESS_TOKEN", "pat")
    live = from_config({"url": "http://cvat.test", "task_prefix": "ws1"}, DictState(), tmp_path, CLASSES)
    assert isinstance(live, CvatBackend) and live.task_name(make_batch(tmp_path / "p2")) == "ws1 round 2 (r2-cafe)"


def test_server_errors_are_retried_then_reported(pushed, caplog):
    fake, batch, be, tid = pushed
    fake.status_override = 503
    with pytest.raises(AnnotationError, match=r"HTTP 503 .*after 2 attempts"):
        be.pull(batch)
    assert ENV["CVAT_ACCESS_TOKEN"] not in caplog.text


def test_fixtures_follow_the_documented_shapes():
    task, job = fixture("task"), fixture("job")
    assert {"id", "name", "size", "project_id", "jobs", "labels", "segment_size"} <= set(task)
    assert {"id", "task_id", "state", "stage", "start_frame", "stop_frame", "updated_date", "type", "assignee"} <= set(job)
    assert job["state"] in {"new", "in progress", "completed", "rejected"}
    assert job["stage"] in {"annotation", "validation", "acceptance"}
    assert {"frames", "deleted_frames", "start_frame"} <= set(fixture("data_meta"))
    assert fixture("request_finished")["status"] in {"queued", "started", "failed", "finished"}
    assert copy.deepcopy(fixture("shape_rectangle"))["type"] == "rectangle"
