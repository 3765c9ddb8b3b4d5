"""The Label Studio backend against a REAL Label Studio server (tests/label_studio_server.py starts it).

The annotator is simulated through the API exactly as the editor's save arrives: `POST /api/tasks/{id}/annotations`
with percent rectangles computed from the pixels a person dragged, `lead_time` in seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from PIL import Image

from labelwise.annotation.base import AnnotationBackend, AnnotationError, Batch, BatchItem
from labelwise.annotation.label_studio import (
    LabelStudioBackend,
    from_config,
    percent_to_yolo,
    yolo_to_percent,
)

CLASSES = ("fish", "jellyfish", "penguin", "shark")  # deliberately not the alphabetical order of anything else
# (width, height, name): several sizes and aspect ratios, a space and a duplicate stem in another folder.
IMAGES = [
    (640, 480, "a/tank.jpg"),
    (480, 640, "a/portrait.png"),
    (1920, 1080, "b/wide shot.jpg"),
    (333, 777, "b/tank.png"),
    (101, 57, "b/tiny.png"),
    (64, 64, "a/square.png"),
]


class DictState:
    def __init__(self) -> None:
        self.values: dict = {}

    def get(self, key, default=None):
        return self.values.get(key, default)

    def set(self, key, value):
        self.values[key] = value


def make_batch(root: Path, round_: int = 1, specs=IMAGES, model_version: str | None = None) -> Batch:
    items = []
    for rank, (w, h, rel) in enumerate(specs, start=1):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.frombytes("RGB", (w, h), os.urandom(w * h * 3)).save(path)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        preds = ((rank % len(CLASSES), 0.5, 0.5, 0.4, 0.3, 0.9), (0, 0.2, 0.25, 0.1, 0.1, 0.4))
        items.append(BatchItem(rank, sha, path, w, h, rank, 1.0 / rank, {"uncertainty": 0.5}, "test", preds))
    return Batch(round_, model_version or f"r{round_}-deadbeef", CLASSES, tuple(items))


@pytest.fixture
def ls(label_studio_server, monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio_server.token)
    return label_studio_server


@pytest.fixture
def api(ls):
    with ls.client() as client:
        yield client


@pytest.fixture
def pool(ls) -> Path:
    path = ls.document_root / f"pool-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


def backend(ls, state=None, title=None, **kw) -> LabelStudioBackend:
    return LabelStudioBackend(
        ls.url, state if state is not None else DictState(), ls.document_root, title or f"lw test {uuid.uuid4().hex[:8]}", CLASSES, **kw
    )


def rect(left_px, top_px, w_px, h_px, W, H, label, rotation=0.0):
    """A rectangle as the editor saves it: percent of the image, from the pixels a person dragged."""
    return {
        "id": uuid.uuid4().hex[:10],
        "from_name": "label",
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": W,
        "original_height": H,
        "image_rotation": 0,
        "value": {
            "x": left_px / W * 100,
            "y": top_px / H * 100,
            "width": w_px / W * 100,
            "height": h_px / H * 100,
            "rotation": rotation,
            "rectanglelabels": [label],
        },
    }


def annotate(api, task_id, result, lead_time=3.5, **extra):
    resp = api.post(f"/api/tasks/{task_id}/annotations", json={"result": result, "lead_time": lead_time, **extra})
    assert resp.status_code == 201, resp.text
    return resp.json()


def project_tasks(api, pid) -> list[dict]:
    resp = api.get("/api/tasks", params={"project": pid, "page": 1, "page_size": 1000, "fields": "all"})
    assert resp.status_code == 200, resp.text
    return resp.json()["tasks"]


pytestmark = pytest.mark.server


# --- the round trip -------------------------------------------------------------------------------------------------


def test_round_trip_yolo_boxes_equal_known_boxes(ls, api, pool):
    batch = make_batch(pool)
    state = DictState()
    be = backend(ls, state)
    assert isinstance(be, AnnotationBackend)
    be.push(batch)

    pid = be.project_id
    project = api.get(f"/api/projects/{pid}/").json()
    assert project["model_version"] == batch.model_version
    assert 'category="0"' in project["label_config"] and 'value="shark" category="3"' in project["label_config"]
    tasks = {t["data"]["labelwise_sha256"]: t for t in project_tasks(api, pid)}
    assert set(tasks) == {i.sha256 for i in batch.items}
    for item in batch.items:
        task = tasks[item.sha256]
        (pred,) = task["predictions"]
        assert pred["model_version"] == batch.model_version and pred["score"] == pytest.approx(item.score)
        assert [r["value"]["rectanglelabels"][0] for r in pred["result"]] == [CLASSES[p[0]] for p in item.predictions]
        assert pred["result"][0]["value"]["x"] == pytest.approx((0.5 - 0.2) * 100)
        # the server serves the original file through local-files storage: no pixels were uploaded
        img = api.get(task["data"]["image"])
        assert img.status_code == 200 and img.content == item.path.read_bytes()

    known: dict[str, list[tuple]] = {}
    for n, item in enumerate(batch.items[:5]):
        W, H = item.width, item.height
        drawn = [
            (W * 0.1 + n, H * 0.2, W * 0.3, H * 0.25, CLASSES[n % 4]),
            (0, 0, W, H, "shark"),  # the whole image, edges exactly on the border
            (W * 0.61, H * 0.07, W / 7, H / 3, "jellyfish"),
        ][: 1 + n % 3]
        annotate(api, tasks[item.sha256]["id"], [rect(*d[:4], W, H, d[4]) for d in drawn], lead_time=1.5 + n)
        known[item.sha256] = [
            (CLASSES.index(lab), (l + w / 2) / W, (t + h / 2) / H, w / W, h / H) for l, t, w, h, lab in drawn
        ]

    prog = be.progress(batch)
    assert (prog.total, prog.done, prog.skipped) == (6, 5, 0)
    assert (prog.accepted, prog.rejected, prog.pending) == (5, 0, 1)
    result = be.pull(batch)
    assert result.problems == () and result.held == ()
    assert result.counts() == prog
    assert {o.sha256: o.status for o in result.tasks} == {
        i.sha256: "accepted" if i.sha256 in known else "pending" for i in batch.items}
    got = {a.sha256: a for a in result.labels}
    assert set(got) == set(known)  # the unannotated image is not finished
    for sha, boxes in known.items():
        ann = got[sha]
        assert ann.status == "labeled"
        assert len(ann.boxes) == len(boxes)
        for g, k in zip(ann.boxes, boxes):
            assert g[0] == k[0]
            assert g[1:] == pytest.approx(k[1:], abs=1e-6)
        assert ann.annotator == "tester@labelwise.local"
        assert ann.source.startswith(f"label_studio:project={pid}:task={tasks[sha]['id']}:annotation=")
        assert ann.updated_at
    assert sorted(a.lead_time_s for a in result.labels) == [1.5, 2.5, 3.5, 4.5, 5.5]
    assert be.pull(batch) == result  # pulling twice changes nothing


def test_push_twice_and_after_a_lost_state_creates_no_duplicates(ls, api, pool):
    batch = make_batch(pool, specs=IMAGES[:3])
    state = DictState()
    be = backend(ls, state, chunk_size=2)  # two import requests
    be.push(batch)
    pid = be.project_id
    first = sorted(t["id"] for t in project_tasks(api, pid))
    assert len(first) == 3
    be.push(batch)
    assert sorted(t["id"] for t in project_tasks(api, pid)) == first
    # a push killed after the import but before the state was saved: the server still knows the tasks
    state.values = {k: v for k, v in state.values.items() if "/round/" not in k}
    be.push(batch)
    assert sorted(t["id"] for t in project_tasks(api, pid)) == first
    # a push killed between creating the project and recording its id: found again by the workspace's key
    del state.values["label_studio/project_id"]
    be.push(batch)
    assert be.project_id == pid
    assert sorted(t["id"] for t in project_tasks(api, pid)) == first
    # a fresh state (another workspace, or lost): a project that only has the title is NOT adopted
    be2 = backend(ls, DictState(), title=be.project_title)
    with pytest.raises(AnnotationError, match=f"already has a project titled .*id {pid}.*annotation.project_id: {pid}"):
        be2.push(batch)
    assert be2.project_id is None
    # ... only when told its id
    be3 = backend(ls, DictState(), title=be.project_title, project_id=pid)
    be3.push(batch)
    assert be3.project_id == pid
    assert sorted(t["id"] for t in project_tasks(api, pid)) == first
    assert len(api.get("/api/storages/localfiles", params={"project": pid}).json()) == 1
    # the next round: a new model version, new tasks, the old ones kept
    batch2 = make_batch(pool / "r2", round_=2, specs=IMAGES[3:])
    be.push(batch2)
    assert api.get(f"/api/projects/{pid}/").json()["model_version"] == batch2.model_version
    assert len(project_tasks(api, pid)) == 6
    assert be.progress(batch2).total == 3 and be.progress(batch).total == 3


def test_newest_annotation_wins(ls, api, pool):
    batch = make_batch(pool, specs=IMAGES[:1])
    be = backend(ls)
    be.push(batch)
    item = batch.items[0]
    tid = next(iter(be._round_tasks(1).values()))
    first = annotate(api, tid, [rect(10, 10, 100, 100, 640, 480, "fish")])
    annotate(api, tid, [rect(20, 30, 40, 50, 640, 480, "penguin")])
    (ann,) = be.pull(batch).labels
    assert ann.boxes[0][0] == CLASSES.index("penguin")
    assert ann.boxes[0][1:] == pytest.approx((40 / 640, 55 / 480, 40 / 640, 50 / 480), abs=1e-6)
    time.sleep(0.01)
    # the first annotator corrects their annotation: now it is the newest
    resp = api.patch(f"/api/annotations/{first['id']}/", json={"result": [rect(0, 0, 64, 48, 640, 480, "shark")]})
    assert resp.status_code == 200, resp.text
    (ann,) = be.pull(batch).labels
    assert ann.boxes == ((CLASSES.index("shark"), pytest.approx(0.05), pytest.approx(0.05), pytest.approx(0.1), pytest.approx(0.1)),)
    assert ann.source == f"label_studio:project={be.project_id}:task={tid}:annotation={first['id']}"
    assert item.sha256 == ann.sha256


def test_validation_outcomes_name_the_task(ls, api, pool):
    batch = make_batch(pool)
    be = backend(ls)
    be.push(batch)
    tids = be._round_tasks(1)
    it = batch.items
    W0, H0 = it[0].width, it[0].height
    annotate(api, tids[it[0].sha256], [rect(10, 10, 50, 50, W0, H0, "fish"), rect(5, 5, 20, 20, W0, H0, "starfish")])
    annotate(api, tids[it[1].sha256], [rect(10, 10, 50, 50, it[1].width, it[1].height, "shark", rotation=30)])
    annotate(api, tids[it[2].sha256], [], was_cancelled=True)  # the annotator pressed Skip
    annotate(api, tids[it[3].sha256], [])  # submitted with no boxes: a valid "no objects" image
    annotate(api, tids[it[4].sha256], [rect(90, 10, 20, 10, it[4].width, it[4].height, "fish")])  # right edge 110 px > 101
    annotate(api, tids[it[5].sha256], [rect(1, 2, 3, 4, 64, 64, "fish")])
    it[5].path.write_bytes(it[5].path.read_bytes() + b"changed")  # the file changed since selection

    result = be.pull(batch)
    labels = {a.sha256: a for a in result.labels}
    problems = {p.sha256: p for p in result.problems}
    assert set(labels) == {it[2].sha256, it[3].sha256}
    assert labels[it[2].sha256].status == "skipped" and labels[it[2].sha256].boxes == ()
    assert labels[it[3].sha256].status == "labeled" and labels[it[3].sha256].boxes == ()
    assert set(problems) == {it[0].sha256, it[1].sha256, it[4].sha256, it[5].sha256}
    assert len(result.problems) == 4  # region 1 of image 0 is fine: one problem, for region 2
    for i, words in [(0, "unknown label 'starfish'"), (1, "rotated by 30"), (4, "outside the image"), (5, "changed since it was selected")]:
        p = problems[it[i].sha256]
        assert f"task {tids[it[i].sha256]}" in p.where and f"task {tids[it[i].sha256]}" in p.message
        assert words in p.message and words in p.why, p.message
        assert p.task_id == str(tids[it[i].sha256]) and p.image == it[i].staged_name and p.fix
        assert str(p) == p.message and "\n" not in str(p)
    assert problems[it[0].sha256].region.startswith("region 2 (id ")
    assert problems[it[1].sha256].region.startswith("region 1 (id ")
    assert problems[it[5].sha256].region is None
    status = {o.sha256: o.status for o in result.tasks}
    assert status == {it[0].sha256: "rejected", it[1].sha256: "rejected", it[2].sha256: "skipped",
                      it[3].sha256: "accepted", it[4].sha256: "rejected", it[5].sha256: "rejected"}
    assert set(result.held) == set(problems)
    prog = be.progress(batch)
    # rejected images are not done: "done" counts accepted and skipped only
    assert (prog.total, prog.accepted, prog.rejected, prog.skipped, prog.pending, prog.done) == (6, 1, 4, 1, 0, 2)
    assert not prog.complete and "1/6 accepted, 4 rejected, 1 skipped, 0 pending" in str(prog)


def test_wrong_token_gives_401_without_the_token(ls, pool, monkeypatch):
    batch = make_batch(pool, specs=IMAGES[:1])
    secret = "wrong-secret-token-0123456789"
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", secret)
    be = backend(ls)
    with pytest.raises(AnnotationError) as err:
        be.push(batch)
    assert "401" in str(err.value) and "LABEL_STUDIO_API_KEY" in str(err.value)
    assert secret not in str(err.value) and secret not in repr(be) and secret not in repr(be.client)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY")
    with pytest.raises(AnnotationError, match="LABEL_STUDIO_API_KEY"):
        backend(ls)


def test_server_down_is_a_clear_error(ls, pool):
    from label_studio_server import free_port

    batch = make_batch(pool, specs=IMAGES[:1])
    state = DictState()
    be = LabelStudioBackend(f"http://127.0.0.1:{free_port()}", state, ls.document_root, "lw down", CLASSES, timeout=5)
    with pytest.raises(AnnotationError, match="Cannot reach Label Studio .* nothing was written"):
        be.push(batch)
    assert state.values == {}


def test_deleted_project_and_deleted_task(ls, api, pool):
    batch = make_batch(pool, specs=IMAGES[:3])
    state = DictState()
    be = backend(ls, state)
    be.push(batch)
    tids = be._round_tasks(1)
    annotate(api, tids[batch.items[0].sha256], [rect(1, 1, 10, 10, 640, 480, "fish")])
    # a task deleted mid-round: pull refuses (nothing written), push re-creates it, pull works again
    gone = tids[batch.items[1].sha256]
    assert api.delete(f"/api/tasks/{gone}/").status_code == 204
    with pytest.raises(AnnotationError, match=f"task {gone} .*missing.*push"):
        be.pull(batch)
    be.push(batch)
    assert be._round_tasks(1)[batch.items[1].sha256] != gone
    assert len(be.pull(batch).labels) == 1
    # the project deleted: a clear error naming it
    pid = be.project_id
    assert api.delete(f"/api/projects/{pid}/").status_code == 204
    for call in (be.pull, be.progress, be.push):
        with pytest.raises(AnnotationError, match=f"project {pid} no longer exists"):
            call(batch)
    be.forget_project()
    be.push(batch)
    assert be.project_id != pid and be.progress(batch).done == 0


def test_existing_project_with_other_labels_is_refused(ls, api, pool):
    title = f"lw other {uuid.uuid4().hex[:6]}"
    cfg = '<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image"><Label value="fish"/><Label value="shark"/></RectangleLabels></View>'
    resp = api.post("/api/projects", json={"title": title, "label_config": cfg})
    assert resp.status_code == 201
    batch = make_batch(pool, specs=IMAGES[:1])
    with pytest.raises(AnnotationError, match="already has a project titled"):
        backend(ls, title=title).push(batch)
    with pytest.raises(AnnotationError, match="do not match the workspace classes"):
        backend(ls, title=title, project_id=resp.json()["id"]).push(batch)


def test_wait_wakes_on_webhook(ls, api, pool):
    batch = make_batch(pool, specs=IMAGES[:2])
    be = backend(ls, webhook_port=0)
    be.push(batch)
    tids = list(be._round_tasks(1).values())
    seen = []
    ready = threading.Event()
    out = {}

    def run():
        out["progress"] = be.wait(batch, poll_s=60, timeout_s=90, on_progress=lambda p: (seen.append(p), ready.set()))

    thread = threading.Thread(target=run)
    thread.start()
    assert ready.wait(30)
    t0 = time.monotonic()
    for tid in tids:
        annotate(api, tid, [])
        time.sleep(0.3)
    thread.join(60)
    assert not thread.is_alive()
    assert out["progress"].done == 2 and time.monotonic() - t0 < 20  # polling alone would take 60 s
    assert [p.done for p in seen] == [0, 1, 2] or [p.done for p in seen] == [0, 2]
    assert api.get("/api/webhooks", params={"project": be.project_id}).json() == []  # removed afterwards


def test_wait_polls_and_times_out(ls, pool):
    batch = make_batch(pool, specs=IMAGES[:1])
    be = backend(ls)
    be.push(batch)
    t0 = time.monotonic()
    prog = be.wait(batch, poll_s=0.2, timeout_s=1.0)
    assert prog.done == 0 and 0.9 < time.monotonic() - t0 < 10


def test_personal_access_token(ls, api, pool, monkeypatch):
    resp = api.post("/api/token/")
    assert resp.status_code == 201, resp.text
    pat = resp.json()["token"]
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", pat)
    be = backend(ls)
    batch = make_batch(pool, specs=IMAGES[:1])
    be.push(batch)
    assert be.progress(batch).total == 1


def test_from_config(ls, tmp_path, monkeypatch):
    be = from_config({"backend": "label_studio", "url": ls.url, "document_root": str(ls.document_root)}, DictState(), tmp_path / "ws", CLASSES)
    assert be.project_title == "labelwise ws" and be.document_root == ls.document_root
    with pytest.raises(AnnotationError, match="LABEL_STUDIO_API_KEY only"):
        from_config({"url": ls.url, "api_key": "x", "document_root": "/"}, DictState(), tmp_path, CLASSES)
    monkeypatch.delenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", raising=False)
    with pytest.raises(AnnotationError, match="document_root"):
        from_config({"url": ls.url}, DictState(), tmp_path, CLASSES)


def test_image_outside_document_root_is_refused_before_anything_is_imported(ls, tmp_path):
    batch = make_batch(tmp_path / "elsewhere", specs=IMAGES[:1])
    with pytest.raises(AnnotationError, match="not under the Label Studio document root"):
        backend(ls).push(batch)


@pytest.mark.parametrize("box", [(0.5, 0.5, 1.0, 1.0), (0.123456789, 0.9, 0.2, 0.2), (0.01, 0.99, 0.02, 0.02)])
def test_percent_conversion_inverts(box):
    assert percent_to_yolo(*yolo_to_percent(*box)) == pytest.approx(box, abs=1e-12)


# --- outcomes the workflow acts on ----------------------------------------------------------------------------------


def test_newer_invalid_annotation_on_a_pulled_task_is_reported_and_held(ls, api, pool):
    batch = make_batch(pool, specs=IMAGES[:2])
    be = backend(ls)
    be.push(batch)
    item = batch.items[0]
    tid = be._round_tasks(1)[item.sha256]
    first = annotate(api, tid, [rect(10, 10, 100, 100, 640, 480, "fish")])
    (ann,) = be.pull(batch).labels  # the workflow takes this one into the store
    assert ann.status == "labeled" and ann.source.endswith(f"annotation={first['id']}")
    # a second annotator replaces it with something that cannot be taken
    second = annotate(api, tid, [rect(20, 30, 40, 50, 640, 480, "shark", rotation=45)])
    result = be.pull(batch)
    assert result.labels == ()  # the old label is not offered again as if it were current
    assert result.held == (item.sha256,)
    (problem,) = result.problems
    assert problem.annotation_id == str(second["id"]) and problem.task_id == str(tid)
    assert "rotated by 45" in problem.why
    assert f"annotation {first['id']}" in str(problem) and "held out of training" in str(problem)
    (outcome,) = [o for o in result.tasks if o.sha256 == item.sha256]
    assert outcome.status == "rejected" and outcome.replaces == (str(first["id"]),)
    prog = be.progress(batch)
    assert (prog.accepted, prog.rejected, prog.pending, prog.held) == (0, 1, 1, 1)
    # the annotator corrects it in place: taken, no longer held
    resp = api.patch(f"/api/annotations/{second['id']}/", json={"result": [rect(20, 30, 40, 50, 640, 480, "shark")]})
    assert resp.status_code == 200, resp.text
    result = be.pull(batch)
    assert result.held == () and result.problems == ()
    assert result.labels[0].source.endswith(f"annotation={second['id']}")
    assert be.progress(batch).accepted == 1  # the poll sees the change (the task's updated_at moved)


def test_a_skip_by_one_annotator_keeps_another_annotators_boxes(ls, api, pool):
    batch = make_batch(pool, specs=IMAGES[:2])
    be = backend(ls)
    be.push(batch)
    tids = be._round_tasks(1)
    a, b = batch.items
    annotate(api, tids[a.sha256], [rect(10, 10, 100, 100, 640, 480, "penguin")])
    annotate(api, tids[a.sha256], [], was_cancelled=True)  # a later skip by someone else
    annotate(api, tids[b.sha256], [], was_cancelled=True)  # only skipped
    result = be.pull(batch)
    labels = {lab.sha256: lab for lab in result.labels}
    assert labels[a.sha256].status == "labeled" and labels[a.sha256].boxes[0][0] == CLASSES.index("penguin")
    assert labels[b.sha256].status == "skipped"
    outcomes = {o.sha256: o for o in result.tasks}
    assert outcomes[a.sha256].status == "accepted" and outcomes[a.sha256].skipped_by == ("tester@labelwise.local",)
    assert outcomes[b.sha256].status == "skipped"
    prog = be.progress(batch)
    assert (prog.accepted, prog.skipped, prog.done, prog.complete) == (1, 1, 2, True)


def test_new_project_sends_only_unfinished_images_and_never_adopts_by_title(ls, api, pool):
    batch = make_batch(pool, specs=IMAGES[:4])
    state = DictState()
    be = backend(ls, state)
    be.push(batch)
    old = be.project_id
    tids = be._round_tasks(1)
    annotate(api, tids[batch.items[0].sha256], [rect(1, 1, 10, 10, 640, 480, "fish")])
    annotate(api, tids[batch.items[1].sha256], [], was_cancelled=True)
    finished = {batch.items[0].sha256, batch.items[1].sha256}
    # the old project is still there: refused, nothing changed
    with pytest.raises(AnnotationError, match=f"already has a project titled .*id {old}.*used"):
        be.push_to_new_project(batch, finished=finished)
    assert be.project_id == old and be._round_tasks(1) == tids
    # deleted on purpose: a new project gets only the two unfinished images
    assert api.delete(f"/api/projects/{old}/").status_code == 204
    report = be.push_to_new_project(batch, finished=finished)
    new = be.project_id
    assert new != old
    assert (report.sent, report.already_there, report.left_out) == (2, 0, 2)
    on_server = {t["data"]["labelwise_sha256"] for t in project_tasks(api, new)}
    assert on_server == {batch.items[2].sha256, batch.items[3].sha256}
    assert be.push(batch, finished=finished).sent == 0  # idempotent
    assert len(project_tasks(api, new)) == 2
    prog = be.progress(batch)  # the project only holds the two it was sent
    assert (prog.total, prog.pending) == (2, 2)
    assert {o.sha256 for o in be.pull(batch).tasks} == on_server


def test_retire_deletes_only_unlabeled_tasks_of_the_old_batch(ls, api, pool):
    batch = make_batch(pool, specs=IMAGES[:5])
    be = backend(ls)
    be.push(batch)
    tids = be._round_tasks(1)
    it = batch.items
    annotate(api, tids[it[0].sha256], [rect(1, 1, 10, 10, 640, 480, "fish")])
    annotate(api, tids[it[1].sha256], [], was_cancelled=True)
    report = be.retire(batch, keep={it[2].sha256})  # it[2] is also in the new batch
    assert set(report.removed) == {it[3].sha256, it[4].sha256}
    assert set(report.kept) == {it[0].sha256, it[1].sha256, it[2].sha256} and report.missing == ()
    assert any(f"task {tids[it[3].sha256]} " in d and "deleted" in d for d in report.details)
    assert any(f"task {tids[it[0].sha256]} " in d and "kept, 1 annotation" in d for d in report.details)
    left = {t["id"] for t in project_tasks(api, be.project_id)}
    assert left == {tids[it[0].sha256], tids[it[1].sha256], tids[it[2].sha256]}
    # the old batch still pulls: what was annotated is there, the retired images are not counted
    result = be.pull(batch)
    assert {lab.sha256 for lab in result.labels} == {it[0].sha256, it[1].sha256}
    assert be.progress(batch).total == 3
    assert be.retire(batch).removed == (it[2].sha256,)  # again, without keep


class RecordingTransport(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.requests: list[httpx.Request] = []

    def handle_request(self, request):
        self.requests.append(request)
        return super().handle_request(request)


def test_progress_reads_only_what_changed(ls, api, pool):
    batch = make_batch(pool, specs=IMAGES[:4])
    rec = RecordingTransport()
    be = backend(ls, transport=rec)
    be.push(batch)
    tids = be._round_tasks(1)
    annotate(api, tids[batch.items[0].sha256], [rect(1, 1, 10, 10, 640, 480, "fish")])

    def task_listings():
        out = [r.url.params for r in rec.requests if r.url.path == "/api/tasks"]
        rec.requests.clear()
        return out

    task_listings()
    assert be.progress(batch).accepted == 1
    calls = task_listings()
    light = [p for p in calls if p.get("fields") != "all"]
    full = [p for p in calls if p.get("fields") == "all"]
    assert light and all(p["include"] == "id,total_annotations,cancelled_annotations,updated_at" for p in light)
    assert len(full) == 1 and json.loads(full[0]["query"])["selectedItems"]["included"] == [tids[batch.items[0].sha256]]
    assert be.progress(batch).accepted == 1
    assert [p for p in task_listings() if p.get("fields") == "all"] == []  # nothing changed: no annotations fetched
    annotate(api, tids[batch.items[1].sha256], [])
    assert be.progress(batch).accepted == 2
    (full,) = [p for p in task_listings() if p.get("fields") == "all"]
    assert json.loads(full["query"])["selectedItems"]["included"] == [tids[batch.items[1].sha256]]
