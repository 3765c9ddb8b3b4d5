"""The loop on real photographs (the aquarium dataset, read in place from $LABELWISE_AQUARIUM): JPEGs of many
sizes, 7 imbalanced classes, a user-given val split. Checks the plumbing on real data, not accuracy (a CPU-sized
run from YAML is noise on real photos; accuracy figures live in benchmarks/RESULTS.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labelwise.loop import Workspace
from labelwise.pool import label_path_for, read_yolo_label

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def test_a_round_on_real_photographs(tmp_path, aquarium):
    before = {p: p.stat().st_mtime for p in (aquarium / "train" / "labels").iterdir()}
    ws = Workspace.create(tmp_path / "ws", images=[aquarium / "train" / "images"], data_yaml=aquarium / "data.yaml",
                          model="yolo11n.yaml", imgsz=64, train={"epochs": 1, "batch": 16},
                          budget={"per_round": 8, "initial": 16}, stopping={"rule": "none"},
                          strategy={"name": "detection_and_confusion", "aggregation": "mean_top_n"})
    report = ws.ingest_sources(progress=False)
    assert report.quarantined == []
    counts = ws.store.counts()
    assert counts["pool_unlabeled"] == 448 and counts["val_labeled"] == 127
    assert ws.config.classes == ["fish", "jellyfish", "penguin", "puffin", "shark", "starfish", "stingray"]
    ws.run(oracle=aquarium / "train" / "labels", rounds=2)
    rounds = ws.store.rounds()
    assert [r.step for r in rounds] == ["done", "done"]
    assert set(rounds[1].per_class_ap50) == set(ws.config.classes)
    picks = ws.store.selection(2)
    # a 1-epoch model from YAML sees next to nothing on real photos: the batch covers the pool instead, and says so
    assert len(picks) == 8 and all("detection_and_confusion" in p["reason"] or "too young" in p["reason"]
                                   for p in picks)
    # labels came back exactly, whatever the photo's size
    for image, boxes in ws.store.labels("pool"):
        want = read_yolo_label(label_path_for(image.path), 7)
        assert [b[0] for b in boxes] == [b[0] for b in want]
        assert all(abs(a - b) < 1e-6 for got, exp in zip(boxes, want) for a, b in zip(got[1:], exp[1:]))
    manifest = json.loads((ws.root / "annotation" / "round-002" / "manifest.json").read_text())
    assert {row["sha256"] for row in manifest["images"]} == {p["sha256"] for p in picks}
    # the read-only dataset was read in place and never written to
    assert {p: p.stat().st_mtime for p in (aquarium / "train" / "labels").iterdir()} == before
    assert not list(aquarium.rglob("*.cache"))
