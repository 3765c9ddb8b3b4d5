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
    assert "not finished" in pulled.output
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

