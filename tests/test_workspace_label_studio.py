"""The workspace drives a real Label Studio through the CLI: `annotate push | status | pull` and `run`, with the
annotators simulated through Label Studio's own API. Labels land in the store exactly, and the round completes."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from labelwise.cli import app
from labelwise.loop import Workspace

pytestmark = pytest.mark.server
runner = CliRunner()


@pytest.fixture
def ls(label_studio_server, monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio_server.token)
    return label_studio_server


def _pool(folder, sizes):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"frame_{i}.png")


def test_cli_round_trip_through_label_studio(tmp_path, ls):
    pool = ls.document_root / f"ws-pool-{uuid.uuid4().hex[:8]}"
    _pool(pool, [(120, 80), (64, 128), (200, 150), (90, 90), (160, 100)])
    ws = Workspace.create(tmp_path / "ws", images=[pool], classes=["fish", "starfish"], model="yolo11n.yaml",
                          budget={"per_round": 3, "initial": 3},
                          annotation={"backend": "label_studio", "url": ls.url,
                                      "document_root": str(ls.document_root),
                                      "project_title": f"ws {uuid.uuid4().hex[:6]}"})
    ws.ingest_sources(progress=False)
    args = ["-w", str(ws.root)]
    # `run` selects the random seed batch, pushes it, and stops without blocking: nobody has labeled anything yet
    result = runner.invoke(app, ["run", *args])
    assert result.exit_code == 0, result.output
    assert "waiting for annotations of round 1: 0/3" in result.output
    again = runner.invoke(app, ["annotate", "push", *args])  # idempotent
    assert again.exit_code == 0, again.output
    # the next step is Label Studio's, not the folder backend's export / import
    status = Workspace(tmp_path / "ws").status()
    assert status.next_command.startswith("labelwise annotate wait") and "import" not in status.next_command
    ws = Workspace(tmp_path / "ws")
    pid = ws.backend().project_id
    with ls.client() as api:
        tasks = api.get("/api/tasks", params={"project": pid, "page_size": 100, "fields": "all"}).json()["tasks"]
        assert len(tasks) == 3  # pushed twice, created once
        batch = ws.batch()
        by_path = {item.sha256: item for item in batch.items}
        known = {}
        for n, task in enumerate(tasks[:2]):
            item = by_path[task["data"]["labelwise_sha256"]]
            w, h = item.width, item.height
            box = (0, 0.25, 0.5, 0.3, 0.4) if n == 0 else (1, 0.6, 0.45, 0.5, 0.7)
            cls, cx, cy, bw, bh = box
            result_item = {
                "from_name": "label", "to_name": "image", "type": "rectanglelabels",
                "original_width": w, "original_height": h,
                "value": {"x": (cx - bw / 2) * 100, "y": (cy - bh / 2) * 100, "width": bw * 100,
                          "height": bh * 100, "rotation": 0, "rectanglelabels": [["fish", "starfish"][cls]]},
            }
            r = api.post(f"/api/tasks/{task['id']}/annotations", json={"result": [result_item], "lead_time": 4.0})
            assert r.status_code == 201, r.text
            known[item.image_id] = box
    status = runner.invoke(app, ["annotate", "status", *args])
    assert "2/3 done" in status.output
    pulled = runner.invoke(app, ["annotate", "pull", *args])
    assert pulled.exit_code == 0, pulled.output
    assert "2/3 done (2 accepted, 0 skipped), 0 rejected, 1 pending" in pulled.output
    assert "next: labelwise annotate wait" in pulled.output
    ws = Workspace(tmp_path / "ws")
    for image_id, box in known.items():
        (got,) = ws.store.label(image_id)
        assert got[0] == box[0] and all(abs(a - b) < 1e-6 for a, b in zip(got[1:], box[1:]))
    row = ws.store.conn.execute("SELECT annotator, lead_time_s FROM labels WHERE image_id=?",
                                (next(iter(known)),)).fetchone()
    assert row[0] and row[1] == pytest.approx(4.0)
    assert ws.store.current_round().step == "annotate"
    # pulling twice changes nothing
    history = ws.store.label_history_count()
    runner.invoke(app, ["annotate", "pull", *args])
    assert Workspace(tmp_path / "ws").store.label_history_count() == history



def _workspace(tmp_path, ls, n_images: int, per_round: int) -> Workspace:
    pool = ls.document_root / f"ws-pool-{uuid.uuid4().hex[:8]}"
    _pool(pool, [(120 + 8 * i, 80 + 4 * i) for i in range(n_images)])
    ws = Workspace.create(tmp_path / "ws", images=[pool], classes=["fish", "starfish"], model="yolo11n.yaml",
                          budget={"per_round": per_round, "initial": per_round},
                          annotation={"backend": "label_studio", "url": ls.url,
                                      "document_root": str(ls.document_root),
                                      "project_title": f"ws {uuid.uuid4().hex[:6]}"})
    ws.ingest_sources(progress=False)
    return ws


def _region(value: dict, type_: str = "rectanglelabels", w: int = 100, h: int = 100) -> dict:
    return {"id": uuid.uuid4().hex[:10], "from_name": "label", "to_name": "image", "type": type_,
            "original_width": w, "original_height": h, "image_rotation": 0, "value": value}


def _box(x, y, width, height, labels, rotation=0.0, **size) -> dict:
    """A rectangle in percent of the image, as the editor saves it."""
    return _region({"x": x, "y": y, "width": width, "height": height, "rotation": rotation,
                    "rectanglelabels": labels}, **size)


def _annotate(api, task_id, result) -> dict:
    r = api.post(f"/api/tasks/{task_id}/annotations", json={"result": result, "lead_time": 2.0})
    assert r.status_code == 201, r.text
    return r.json()


def _rejected_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "rejected:" in line]


def test_rejected_annotations_are_shown_line_by_line_and_the_round_stays_open(tmp_path, ls):
    """Annotations made through Label Studio's API that labelwise cannot take: a rotated box, an unknown label, a box
    outside the image, a polygon, two labels on one region. Every command that takes labels back prints each one
    (task, image, region, why, what to do) and exits 1; status lists them; done counts accepted and skipped only."""
    ws = _workspace(tmp_path, ls, n_images=8, per_round=6)
    args = ["-w", str(ws.root)]
    first = runner.invoke(app, ["run", *args])  # selects and pushes; nothing annotated yet
    assert first.exit_code == 0, first.output
    ws = Workspace(ws.root)
    batch = ws.batch()
    tasks = ws.backend()._round_tasks(batch.round)
    items = list(batch.items)
    assert len(items) == 6 and set(tasks) == {i.sha256 for i in items}
    bad = {  # image -> (what was drawn, words the line must hold)
        0: ([_box(10, 10, 20, 20, ["fish"], rotation=30)], "rotated by 30 degrees"),
        1: ([_box(10, 10, 20, 20, ["octopus"])], "unknown label 'octopus'"),
        2: ([_box(90, 10, 30, 20, ["starfish"])], "reaches outside the image"),
        3: ([_region({"points": [[10, 10], [40, 10], [25, 40]], "polygonlabels": ["fish"]}, "polygonlabels")],
            "not a labelled rectangle"),
        4: ([_box(10, 10, 20, 20, ["fish", "starfish"])], "2 labels"),
    }
    with ls.client() as api:
        made = {}
        for n, (result, _) in bad.items():
            item = items[n]
            for region in result:
                region.update(original_width=item.width, original_height=item.height)
            made[n] = _annotate(api, tasks[item.sha256], result)
        good = items[5]
        _annotate(api, tasks[good.sha256], [_box(10, 20, 30, 40, ["starfish"], w=good.width, h=good.height)])

    def check_lines(output: str) -> None:
        lines = _rejected_lines(output)
        assert len(lines) == 5, output
        for n, (_, words) in bad.items():
            item, tid = items[n], tasks[items[n].sha256]
            (line,) = [x for x in lines if f"task {tid} " in x]
            assert item.staged_name in line and f"annotation {made[n]['id']}" in line, line
            assert "region 1 (id " in line and words in line, line
            assert "Correct it in Label Studio and pull again" in line, line

    status = runner.invoke(app, ["annotate", "status", *args])
    assert status.exit_code == 0, status.output
    assert "round 1: 1/6 done (1 accepted, 0 skipped), 5 rejected, 0 pending" in status.output  # not "6/6 done"
    check_lines(status.output)
    assert Workspace(ws.root).store.label_history_count() == 0  # status writes nothing

    pulled = runner.invoke(app, ["annotate", "pull", *args])
    assert pulled.exit_code == 1, pulled.output
    assert "pulled 1 label(s); 1/6 done (1 accepted, 0 skipped), 5 rejected, 0 pending" in pulled.output
    check_lines(pulled.output)
    assert "next: correct the 5 rejected image(s) in Label Studio" in pulled.output
    assert "labelwise annotate pull" in pulled.output

    waited = runner.invoke(app, ["annotate", "wait", *args, "--timeout", "60", "--interval", "0.1"])
    assert waited.exit_code == 1, waited.output  # stops at once: only rejected work is left, waiting cannot fix it
    assert "timed out" not in waited.output
    check_lines(waited.output)

    ran = runner.invoke(app, ["run", *args])
    assert ran.exit_code == 1, ran.output
    check_lines(ran.output)
    assert "round 1 has rejected annotations" in ran.output and "annotate wait" not in ran.output

    overview = runner.invoke(app, ["status", *args], env={"COLUMNS": "250"})
    assert overview.exit_code == 0, overview.output
    assert "1/6 selected images done (1 labeled, 0 skipped and back in the pool), 5 rejected, 0 pending" in \
        overview.output
    check_lines(overview.output)
    ws = Workspace(ws.root)
    assert ws.store.current_round().step == "annotate"  # the round does not finish with rejected work
    assert {r["outcome"] for r in ws.store.selection(1)} == {"labeled", "pending"}

    # the annotators correct every one of them in Label Studio: the round completes, nothing is rejected any more
    with ls.client() as api:
        for n in bad:
            item = items[n]
            fixed = [_box(10, 10, 20, 20, ["fish"], w=item.width, h=item.height)]
            r = api.patch(f"/api/annotations/{made[n]['id']}/", json={"result": fixed})
            assert r.status_code == 200, r.text
    done = runner.invoke(app, ["annotate", "pull", *args])
    assert done.exit_code == 0, done.output
    assert "6/6 done (6 accepted, 0 skipped), 0 rejected, 0 pending" in done.output
    assert _rejected_lines(done.output) == [] and "round complete" in done.output
    assert Workspace(ws.root).store.current_round().step == "done"


def test_a_newer_invalid_annotation_of_a_pulled_task_is_reported_and_held_out_of_training(tmp_path, ls):
    ws = _workspace(tmp_path, ls, n_images=5, per_round=2)
    args = ["-w", str(ws.root)]
    assert runner.invoke(app, ["select", *args]).exit_code == 0
    pushed = runner.invoke(app, ["annotate", "push", *args])
    assert pushed.exit_code == 0, pushed.output
    ws = Workspace(ws.root)
    a = ws.batch().items[0]
    tasks = ws.backend()._round_tasks(1)
    with ls.client() as api:
        first = _annotate(api, tasks[a.sha256], [_box(10, 10, 20, 20, ["fish"], w=a.width, h=a.height)])
        pulled = runner.invoke(app, ["annotate", "pull", *args])
        assert pulled.exit_code == 0 and "1 accepted" in pulled.output, pulled.output
        # a second annotator's newer annotation of the same task, rotated: it now counts, and cannot be taken
        second = _annotate(api, tasks[a.sha256], [_box(10, 10, 20, 20, ["fish"], rotation=45, w=a.width, h=a.height)])
        again = runner.invoke(app, ["annotate", "pull", *args])
        assert again.exit_code == 1, again.output
        (problem,) = [x for x in again.output.splitlines() if "rejected:" in x]
        assert f"task {tasks[a.sha256]} " in problem and f"annotation {second['id']}" in problem
        assert "rotated by 45" in problem and f"annotation {first['id']}" in problem
        (held,) = [x for x in again.output.splitlines() if "now held out of training:" in x]
        assert f"now held out of training: image {a.staged_name}" in held and "earlier pull is out of date" in held
        ws = Workspace(ws.root)
        assert [image.sha256 for image, *_ in ws.store.held()] == [a.sha256]
        assert a.sha256 not in {image.sha256 for image, _ in ws.store.labels("pool")}  # training leaves it out
        overview = runner.invoke(app, ["status", *args], env={"COLUMNS": "250"})
        assert any("held:" in x and str(a.path) in x for x in overview.output.splitlines()), overview.output
        # corrected in place: released
        r = api.patch(f"/api/annotations/{second['id']}/",
                      json={"result": [_box(30, 30, 20, 20, ["starfish"], w=a.width, h=a.height)]})
        assert r.status_code == 200, r.text
    fixed = runner.invoke(app, ["annotate", "pull", *args])
    assert fixed.exit_code == 0, fixed.output
    assert f"released: image {a.staged_name}" in fixed.output
    ws = Workspace(ws.root)
    assert ws.store.held() == [] and ws.store.label(a.image_id)[0][0] == 1


def test_selecting_again_deletes_the_earlier_batchs_unlabeled_tasks_in_label_studio(tmp_path, ls):
    ws = _workspace(tmp_path, ls, n_images=8, per_round=4)
    args = ["-w", str(ws.root)]
    assert runner.invoke(app, ["run", *args]).exit_code == 0  # selects 4 and pushes them
    ws = Workspace(ws.root)
    old = sorted(ws.batch().items, key=lambda i: i.rank)
    assert len(old) == 4
    backend = ws.backend()
    pid, tasks = backend.project_id, backend._round_tasks(1)
    with ls.client() as api:
        # the same seeded cold start picks the first two again; the fourth image was annotated, never pulled
        _annotate(api, tasks[old[3].sha256], [_box(10, 10, 20, 20, ["fish"], w=old[3].width, h=old[3].height)])
        again = runner.invoke(app, ["select", *args, "--k", "2"])
        assert again.exit_code == 0, again.output
        new = {r["sha256"] for r in Workspace(ws.root).store.selection(1)}
        assert new == {old[0].sha256, old[1].sha256}
        assert "earlier batch of round 1 in Label Studio: removed 1 unlabeled task(s), kept 3, 0 not there" in \
            again.output
        assert f"task {tasks[old[2].sha256]} (image {old[2].staged_name}): deleted, nobody had annotated it" in \
            again.output
        assert f"task {tasks[old[3].sha256]} (image {old[3].staged_name}): kept, 1 annotation(s)" in again.output
        assert "1 image(s) of the earlier batch were annotated in Label Studio but are not in the new batch" in \
            again.output
        left = {t["id"] for t in api.get("/api/tasks", params={"project": pid, "page_size": 100}).json()["tasks"]}
        assert left == {tasks[old[0].sha256], tasks[old[1].sha256], tasks[old[3].sha256]}
    pushed = runner.invoke(app, ["annotate", "push", *args])  # the new batch: its two tasks are there already
    assert pushed.exit_code == 0, pushed.output
    status = runner.invoke(app, ["annotate", "status", *args])
    assert "round 1: 0/2 done (0 accepted, 0 skipped), 0 rejected, 2 pending" in status.output, status.output


def test_push_to_a_new_project_sends_only_the_rounds_unfinished_images(tmp_path, ls):
    ws = _workspace(tmp_path, ls, n_images=6, per_round=4)
    args = ["-w", str(ws.root)]
    assert runner.invoke(app, ["select", *args]).exit_code == 0
    first = runner.invoke(app, ["annotate", "push", *args])
    assert first.exit_code == 0, first.output
    ws = Workspace(ws.root)
    items = sorted(ws.batch().items, key=lambda i: i.rank)
    backend = ws.backend()
    old, tasks = backend.project_id, backend._round_tasks(1)
    assert f"pushed round 1: sent 4 image(s) to Label Studio project {old} at {ls.url}" in first.output
    with ls.client() as api:
        _annotate(api, tasks[items[0].sha256], [_box(10, 10, 20, 20, ["fish"], w=items[0].width, h=items[0].height)])
        r = api.post(f"/api/tasks/{tasks[items[1].sha256]}/annotations", json={"result": [], "was_cancelled": True})
        assert r.status_code == 201, r.text
        assert runner.invoke(app, ["annotate", "pull", *args]).exit_code == 0
        assert api.delete(f"/api/projects/{old}/").status_code == 204  # deleted by someone, mid-round
        again = runner.invoke(app, ["annotate", "push", *args, "--new-project"])
        assert again.exit_code == 0, again.output
        new = Workspace(ws.root).backend().project_id
        assert new != old
        assert f"pushed round 1: sent 2 image(s), 2 finished image(s) left out to Label Studio project {new}" in \
            again.output
        on_server = {t["data"]["labelwise_sha256"]
                     for t in api.get("/api/tasks", params={"project": new, "page_size": 100}).json()["tasks"]}
        assert on_server == {items[2].sha256, items[3].sha256}  # the labeled and the skipped image are not re-sent
    status = runner.invoke(app, ["annotate", "status", *args])
    assert "round 1: 2/4 done (1 accepted, 1 skipped), 0 rejected, 2 pending" in status.output, status.output
