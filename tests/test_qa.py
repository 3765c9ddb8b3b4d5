"""Label QA of returned batches (labelwise.workflow.qa): suspects ranked on the cached predictions, kept in the store,
held out of training when asked, released when confirmed or changed, listed by status / CSV / report, and sent back
for review (folder backend). A fake detector whose predictions are the true boxes stands in for a trained model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from labelwise.cli import app
from labelwise.config import ConfigError, config_from_dict
from labelwise.detections import ImageDetections
from labelwise.detectors.base import TrainResult
from labelwise.loop import Workspace
from labelwise.store import Store

runner = CliRunner()
SIZE = 64


def _truth(i: int) -> list[tuple[int, float, float, float, float]]:
    """Image i's true boxes: two objects apart, of both classes."""
    return [(i % 2, 0.25, 0.3, 0.3, 0.3), ((i + 1) % 2, 0.7, 0.7, 0.3, 0.25)]


def _text(boxes) -> str:
    return "".join(f"{c} {cx} {cy} {w} {h}\n" for c, cx, cy, w, h in boxes)


def _scenes(root: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / "images" / f"{i:03d}.png")
        (root / "labels" / f"{i:03d}.txt").write_text(_text(_truth(i)))
    return root


class TruthDetector:
    """Trains instantly; scores every image with its true boxes at confidence .98 (a model that has learned the
    task), so a label that disagrees with them is the label's fault."""

    def __init__(self):
        self.trained = 0

    def train(self, request):
        self.trained += 1
        request.out_dir.mkdir(parents=True, exist_ok=True)
        weights = request.out_dir / "best.pt"
        weights.write_text(f"model {self.trained}")
        return TrainResult(weights, 0.5, 0.3, {"a": 0.5, "b": 0.5}, 0.01)

    def score(self, weights, images, *, imgsz, conf, iou, batch, device, flip=False, max_det=100, **kwargs):
        for sha, path in images:
            boxes, scores = [], []
            for c, cx, cy, w, h in _truth(int(Path(path).stem)):
                boxes.append([(cx - w / 2) * SIZE, (cy - h / 2) * SIZE, (cx + w / 2) * SIZE, (cy + h / 2) * SIZE])
                row = [0.01, 0.01]
                row[c] = 0.98
                scores.append(row)
            rng = np.random.default_rng(int(sha[:8], 16))
            yield sha, ImageDetections(np.asarray(boxes, np.float32), np.asarray(scores, np.float32),
                                       rng.normal(size=(2, 8)).astype(np.float16),
                                       rng.normal(size=16).astype(np.float32), 0.98, SIZE, SIZE)


def _workspace(tmp_path: Path, **settings) -> Workspace:
    pool, val = _scenes(tmp_path / "pool", 24, 1), _scenes(tmp_path / "val", 4, 2)
    settings = {"budget": {"per_round": 6, "initial": 6}, "train": {"epochs": 1}, "stopping": {"rule": "none"},
                **settings}
    Workspace.create(tmp_path / "ws", images=[pool / "images"], classes=["a", "b"], val=val / "images",
                     model="yolo11n.yaml", **settings).ingest_sources(progress=False)
    return Workspace(tmp_path / "ws", detector=TruthDetector())


def _label(folder: Path, item, boxes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{Path(item.staged_name).stem}.txt").write_text(_text(boxes))


def _second_round(ws: Workspace, labels: Path):
    """Round 1 labeled from the truth (`labels`), then train, score and select round 2; returns its batch items."""
    ws.select()
    first = ws.import_labels(labels)
    assert first.complete and first.qa is None  # round 1: picked before any model, nothing to check against
    while ws.store.current_round().round < 2 or ws.store.current_round().step != "annotate":
        ws.step()
    return ws.batch().items


def _with_errors(items):
    """Labels for the batch: item 0 lacks a box, item 1 has a swapped class, the rest are right."""
    labels = {}
    for k, item in enumerate(items):
        truth = _truth(int(item.path.stem))
        if k == 0:
            truth = truth[1:]
        elif k == 1:
            truth = [((truth[0][0] + 1) % 2, *truth[0][1:]), truth[1]]
        labels[item.sha256] = truth
    return labels


def test_config_qa_section_and_its_errors():
    base = {"classes": ["a"], "images": ["x"]}
    assert config_from_dict({**base, "qa": None}).qa.hold_suspects is False
    cfg = config_from_dict({**base, "qa": {"threshold": 0.3, "top_k": 5, "hold_suspects": True}}).qa
    assert (cfg.enabled, cfg.threshold, cfg.top_k, cfg.hold_suspects) == (True, 0.3, 5, True)
    for qa, expected in (({"threshold": 2}, "qa.threshold: 2 is out of range"),
                         ({"top_k": 0}, "qa.top_k: 0 is out of range"),
                         ({"hold_suspects": "yes"}, "qa.hold_suspects: 'yes' is text"),
                         ({"hold": True}, "qa.hold: unknown key")):
        with pytest.raises(ConfigError) as exc:
            config_from_dict({**base, "qa": qa})
        (line,) = exc.value.problems
        assert expected in line and "\n" not in line


def test_held_kinds_in_the_store(tmp_path):
    store = Store(tmp_path / "s.db")
    image_id, _ = store.add_image("a" * 64, "/x.png", 10, 10)
    store.put_label(image_id, [(0, 0.5, 0.5, 0.1, 0.1)], round_no=1, source="t")
    assert store.hold(image_id, 1, "suspect", kind="qa")
    assert store.held_kind(image_id) == "qa" and store.held(kind="rejected") == []
    assert not store.release(image_id, kind="rejected") and store.held_kind(image_id) == "qa"
    store.hold(image_id, 1, "rejected now")  # a rejected annotation outranks a QA hold
    assert store.held_kind(image_id) == "rejected"
    store.hold(image_id, 1, "suspect again", kind="qa")  # ... and is never replaced by one
    assert store.held_kind(image_id) == "rejected" and store.held()[0][2] == "rejected now"
    assert store.labels("pool") == [] and len(store.labels("pool", held=True)) == 1
    assert store.release(image_id, kind="rejected") and store.held() == []
    with pytest.raises(ValueError, match="hold kind"):
        store.hold(image_id, 1, "x", kind="other")
    store.close()
    # a store made before the kind column: its holds are 'rejected'
    import sqlite3

    conn = sqlite3.connect(tmp_path / "old.db")
    conn.execute("CREATE TABLE held(image_id INTEGER PRIMARY KEY, round INTEGER, reason TEXT NOT NULL, "
                 "since TEXT NOT NULL)")
    conn.execute("CREATE TABLE images(id INTEGER PRIMARY KEY, sha256 TEXT NOT NULL UNIQUE, path TEXT NOT NULL, "
                 "width INTEGER NOT NULL, height INTEGER NOT NULL, split TEXT NOT NULL DEFAULT 'pool', state TEXT "
                 "NOT NULL DEFAULT 'unlabeled', added_at TEXT NOT NULL)")
    conn.execute("INSERT INTO images VALUES (1, 'b', '/y.png', 5, 5, 'pool', 'labeled', 'now')")
    conn.execute("INSERT INTO held VALUES (1, 2, 'old reason', 'now')")
    conn.commit()
    conn.close()
    old = Store(tmp_path / "old.db")
    assert old.held_kind(1) == "rejected" and len(old.held(kind="rejected")) == 1


def test_suspects_are_found_held_released_and_listed(tmp_path):
    ws = _workspace(tmp_path, qa={"hold_suspects": True})
    items = _second_round(ws, tmp_path / "pool" / "labels")
    wrong = _with_errors(items)
    folder = tmp_path / "round2"
    for item in items:
        _label(folder, item, wrong[item.sha256])
    report = ws.import_labels(folder)
    # the round completes: suspects do not block it, they only stay out of training
    assert report.complete and not report.needs_correction and report.held == []
    qa = report.qa
    assert qa is not None and qa.skipped == "" and qa.checked == len(items)
    found = {r["sha256"]: r for r in qa.suspects}
    assert set(found) == {items[0].sha256, items[1].sha256}
    assert found[items[0].sha256]["issue"] == "missing_box" and found[items[1].sha256]["issue"] == "wrong_class"
    dropped = _truth(int(items[0].path.stem))[0]
    box = found[items[0].sha256]["box"]
    assert box[0] == dropped[0] and np.allclose(box[1:], dropped[1:], atol=0.02)  # the box the label lacks
    assert found[items[1].sha256]["suggested_class"] == _truth(int(items[1].path.stem))[0][0]
    assert [r["rank"] for r in qa.suspects] == sorted(r["rank"] for r in qa.suspects)
    assert sorted(qa.newly_held) == sorted(items[k].path.name for k in (0, 1))
    assert {image.sha256 for image, *_ in ws.store.held(kind="qa")} == {items[0].sha256, items[1].sha256}
    assert not {items[0].sha256, items[1].sha256} & {image.sha256 for image, _ in ws.store.labels("pool")}
    # the CSV
    rows = list(csv.DictReader((ws.root / "qa" / "round-002-suspects.csv").open()))
    assert [r["sha256"] for r in rows] == [r["sha256"] for r in qa.suspects]
    assert {r["issue"] for r in rows} == {"missing box", "wrong class"} and {r["held"] for r in rows} == {"yes"}
    # status: the count and the worst suspects
    args = ["-w", str(ws.root)]
    out = runner.invoke(app, ["status", *args], env={"COLUMNS": "250"})
    assert out.exit_code == 0, out.output
    assert "label QA suspects" in out.output and "2 open in round 2, 2 held out of training" in out.output
    assert f"{items[0].path.name}: missing box" in out.output and "the model says" in out.output
    # a re-import with the box drawn: changed, released; the other stays held until confirmed
    _label(folder, items[0], _truth(int(items[0].path.stem)))
    again = ws.import_labels(folder)
    assert again.imported == 1 and again.qa.released == [items[0].path.name]
    assert [r["sha256"] for r in again.qa.suspects] == [items[1].sha256]
    assert ws.store.suspects(2, status="changed")[0]["sha256"] == items[0].sha256
    confirmed = runner.invoke(app, ["qa", "confirm", items[1].path.name, *args])
    assert confirmed.exit_code == 0, confirmed.output
    assert ws.store.held() == [] and ws.store.suspects(2, status="confirmed")[0]["sha256"] == items[1].sha256
    # confirmed with the same label: a new check keeps it confirmed, it is not held again
    check = runner.invoke(app, ["qa", "check", *args])
    assert check.exit_code == 0 and "0 suspect(s) among 6 checked" in check.output, check.output
    assert ws.store.held() == []
    unknown = runner.invoke(app, ["qa", "confirm", "nope.png", *args])
    assert unknown.exit_code == 2 and "not an open label QA suspect: nope.png" in unknown.output


def test_without_hold_suspects_nothing_is_held_and_the_import_prints_the_suspects(tmp_path):
    ws = _workspace(tmp_path)
    items = _second_round(ws, tmp_path / "pool" / "labels")
    wrong = _with_errors(items)
    folder = tmp_path / "round2"
    for item in items:
        _label(folder, item, wrong[item.sha256])
    out = runner.invoke(app, ["import", str(folder), "-w", str(ws.root)], env={"COLUMNS": "250"})
    assert out.exit_code == 0, out.output
    assert "label QA of round 2: 2 suspect(s) among 6 checked image(s)" in out.output
    assert "missing box" in out.output and "wrong class" in out.output
    ws = Workspace(ws.root)
    assert ws.store.held() == [] and len(ws.store.labels("pool")) == 12
    # the report: a thumbnail per suspect, with the suspect box
    from labelwise.report import build_report

    html = build_report(ws, tmp_path / "report.html").read_text()
    assert 'id="label-qa"' in html and html.count('class="pick qa-suspect"') == 2
    # qa.enabled false: nothing is checked
    ws.config.qa.enabled = False
    assert "qa.enabled is false" in ws.qa_check().skipped


def test_review_through_the_folder_backend(tmp_path):
    ws = _workspace(tmp_path)
    items = _second_round(ws, tmp_path / "pool" / "labels")
    wrong = _with_errors(items)
    folder = tmp_path / "round2"
    for item in items:
        _label(folder, item, wrong[item.sha256])
    ws.import_labels(folder)
    args = ["-w", str(ws.root)]
    pushed = runner.invoke(app, ["annotate", "push", "--review", *args], env={"COLUMNS": "250"})
    assert pushed.exit_code == 0, pushed.output
    review = ws.root / "annotation" / "round-002" / "review"
    assert "sent 2 label QA suspect(s) for review" in pushed.output and str(review) in pushed.output
    manifest = json.loads((review / "manifest.json").read_text())
    assert {r["sha256"]: r["qa_issue"] for r in manifest["images"]} == {
        items[0].sha256: "missing_box", items[1].sha256: "wrong_class"}
    stem0, stem1 = (Path(items[k].staged_name).stem for k in (0, 1))
    assert (review / "images" / items[0].staged_name).exists()
    current = [[float(v) for v in line.split()]
               for line in (review / "current" / f"{stem0}.txt").read_text().splitlines()]
    assert current == [[float(v) for v in b] for b in wrong[items[0].sha256]]  # the label as it stands
    assert len((review / "suspects" / f"{stem0}.txt").read_text().split()) == 5
    # the reviewer draws the missing box on one, and returns the other unchanged (keeping a wrong class: their call)
    (review / "labels" / f"{stem0}.txt").write_text(_text(_truth(int(items[0].path.stem))))
    (review / "labels" / f"{stem1}.txt").write_text((review / "current" / f"{stem1}.txt").read_text())
    pulled = runner.invoke(app, ["annotate", "pull", "--review", *args], env={"COLUMNS": "250"})
    assert pulled.exit_code == 0, pulled.output
    assert f"1 suspect label(s) kept by the reviewers (confirmed): {items[1].path.name}" in pulled.output
    assert "1 corrected label(s) taken from the review, 0 suspect(s) not reviewed yet" in pulled.output
    ws = Workspace(ws.root)
    assert ws.store.label(items[0].image_id) == [tuple(b) for b in _truth(int(items[0].path.stem))]
    assert {r["status"] for r in ws.store.suspects(2)} == {"changed", "confirmed"}
    assert ws.qa_suspects() == []
    nothing = runner.invoke(app, ["annotate", "push", "--review", *args])
    assert nothing.exit_code == 2 and "no open label QA suspects" in nothing.output


# -- review in a real Label Studio -------------------------------------------------------------------------------------


@pytest.mark.server
def test_review_through_label_studio_marks_tasks_and_takes_the_second_look(tmp_path, label_studio_server,
                                                                           monkeypatch):
    import uuid

    ls = label_studio_server
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", ls.token)
    pool = _scenes(ls.document_root / f"qa-pool-{uuid.uuid4().hex[:8]}", 24, 1)
    val = _scenes(tmp_path / "val", 4, 2)
    Workspace.create(tmp_path / "ws", images=[pool / "images"], classes=["a", "b"], val=val / "images",
                     model="yolo11n.yaml", budget={"per_round": 6, "initial": 6}, train={"epochs": 1},
                     stopping={"rule": "none"},
                     annotation={"backend": "label_studio", "url": ls.url, "document_root": str(ls.document_root),
                                 "project_title": f"qa {uuid.uuid4().hex[:6]}"}).ingest_sources(progress=False)
    ws = Workspace(tmp_path / "ws", detector=TruthDetector())
    items = _second_round(ws, pool / "labels")
    wrong = _with_errors(items)
    ws.push()
    pid = ws.backend().project_id
    tasks = ws.backend()._round_tasks(2)

    def annotate(api, item, boxes) -> None:
        result = [{"from_name": "label", "to_name": "image", "type": "rectanglelabels", "original_width": SIZE,
                   "original_height": SIZE, "value": {"x": (cx - w / 2) * 100, "y": (cy - h / 2) * 100,
                                                      "width": w * 100, "height": h * 100, "rotation": 0,
                                                      "rectanglelabels": [["a", "b"][c]]}}
                  for c, cx, cy, w, h in boxes]
        r = api.post(f"/api/tasks/{tasks[item.sha256]}/annotations", json={"result": result, "lead_time": 2.0})
        assert r.status_code == 201, r.text

    with ls.client() as api:
        for item in items:
            annotate(api, item, wrong[item.sha256])
    pulled = ws.pull()
    assert pulled.complete and {r["sha256"] for r in pulled.qa.suspects} == {items[0].sha256, items[1].sha256}
    args = ["-w", str(ws.root)]
    pushed = runner.invoke(app, ["annotate", "push", "--review", *args], env={"COLUMNS": "250"})
    assert pushed.exit_code == 0, pushed.output
    assert f"sent 2 label QA suspect(s) for review to Label Studio project {pid}, tab 'labelwise review'" in \
        pushed.output
    with ls.client() as api:
        data = {item.sha256: api.get(f"/api/tasks/{tasks[item.sha256]}/").json()["data"] for item in items}
        views = api.get("/api/dm/views", params={"project": pid}).json()
    assert {sha for sha, d in data.items() if d.get("labelwise_review") == "yes"} == {items[0].sha256,
                                                                                     items[1].sha256}
    assert data[items[0].sha256]["labelwise_qa_issue"] == "missing_box"
    assert "missing box" in data[items[0].sha256]["labelwise_review_note"]
    assert data[items[0].sha256]["labelwise_sha256"] == items[0].sha256  # the task's own data is kept
    (view,) = [v for v in views if v["data"]["title"] == "labelwise review"]
    with ls.client() as api:  # the tab shows the suspects' tasks, and only them
        shown = api.get("/api/tasks", params={"project": pid, "view": view["id"], "fields": "all"}).json()["tasks"]
    assert {t["data"]["labelwise_sha256"] for t in shown} == {items[0].sha256, items[1].sha256}
    # nothing looked at yet: nothing taken, nothing confirmed
    early = runner.invoke(app, ["annotate", "pull", "--review", *args])
    assert early.exit_code == 0 and "2 suspect(s) not reviewed yet" in early.output, early.output
    # the reviewer draws the missing box on one and submits the other again as it was
    with ls.client() as api:
        annotate(api, items[0], _truth(int(items[0].path.stem)))
        annotate(api, items[1], wrong[items[1].sha256])
    done = runner.invoke(app, ["annotate", "pull", "--review", *args], env={"COLUMNS": "250"})
    assert done.exit_code == 0, done.output
    assert f"(confirmed): {items[1].path.name}" in done.output and "1 corrected label(s) taken" in done.output
    ws = Workspace(ws.root)
    assert ws.store.label(items[0].image_id) == [tuple(b) for b in _truth(int(items[0].path.stem))]
    assert {r["sha256"]: r["status"] for r in ws.store.suspects(2)} == {items[0].sha256: "changed",
                                                                       items[1].sha256: "confirmed"}
