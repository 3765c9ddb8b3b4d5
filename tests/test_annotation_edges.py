"""One box-edge tolerance (labelwise.boxes.EDGE_TOLERANCE, a fraction of the image side) and one YOLO txt parser
(labelwise.pool.parse_yolo_label) for every annotation reader. No server needed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from PIL import Image

import labelwise.pool
from labelwise.annotation import cvat, label_studio
from labelwise.annotation.base import Batch, BatchItem
from labelwise.annotation.cvat import parse_cvat_xml, parse_yolo_export
from labelwise.annotation.label_studio import convert_annotation
from labelwise.boxes import EDGE_TOLERANCE

CLASSES = ("fish", "shark")


def make_batch(root: Path) -> Batch:
    items = []
    for rank, (w, h) in enumerate([(200, 100), (50, 400)], start=1):
        path = root / f"img{rank}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.frombytes("RGB", (w, h), os.urandom(w * h * 3)).save(path)
        items.append(BatchItem(rank, hashlib.sha256(path.read_bytes()).hexdigest(), path, w, h, rank, 1.0))
    return Batch(1, "r1-x", CLASSES, tuple(items))


def test_no_private_tolerances_and_one_yolo_parser():
    for module in (cvat, label_studio):
        assert not hasattr(module, "PIXEL_TOLERANCE") and not hasattr(module, "FRACTION_TOLERANCE")
    assert label_studio.EDGE_TOLERANCE is EDGE_TOLERANCE and cvat.EDGE_TOLERANCE is EDGE_TOLERANCE
    assert cvat.parse_yolo_label is labelwise.pool.parse_yolo_label


def ls_region(x, y, w, h, W=200, H=100):
    return {"id": "r1", "type": "rectanglelabels", "original_width": W, "original_height": H,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": ["shark"]}}


def test_label_studio_clips_within_the_tolerance_and_refuses_beyond(tmp_path):
    item = make_batch(tmp_path).items[0]
    slack = EDGE_TOLERANCE * 100 / 2  # percent: half the tolerance past the right edge
    boxes, errors = convert_annotation({"result": [ls_region(50, 0, 50 + slack, 100)]}, item, CLASSES)
    assert errors == [] and boxes == ((1, 0.75, 0.5, 0.5, 1.0),)
    boxes, errors = convert_annotation({"result": [ls_region(50, 0, 50 + 3 * slack, 100)]}, item, CLASSES)
    assert boxes == () and errors[0][0] == "region 1 (id r1)" and "reaches outside the image" in errors[0][1]


def test_cvat_xml_scales_the_tolerance_to_pixels(tmp_path):
    batch = make_batch(tmp_path / "pool")
    a, b = batch.items  # 200x100 and 50x400
    inside_x = 200 + EDGE_TOLERANCE * 200 * 0.9  # 0.18 px past a 200 px side: noise, clipped
    outside_y = 400 + EDGE_TOLERANCE * 400 * 1.5  # 0.6 px past a 400 px side: refused
    xml = f"""<annotations>
  <image id="0" name="{a.staged_name}" width="200" height="100">
    <box label="fish" xtl="100" ytl="0" xbr="{inside_x}" ybr="100"/>
  </image>
  <image id="1" name="{b.staged_name}" width="50" height="400">
    <box label="shark" xtl="0" ytl="200" xbr="50" ybr="{outside_y}"/>
  </image>
</annotations>"""
    path = tmp_path / "annotations.xml"
    path.write_text(xml)
    result = parse_cvat_xml(path, batch)
    assert [lab.boxes for lab in result.labels] == [((0, 0.75, 0.5, 0.5, 1.0),)]
    (problem,) = result.problems
    assert problem.sha256 == b.sha256 and problem.region == "line 6" and "reaches outside the 50x400 image" in problem.why


def test_cvat_yolo_export_goes_through_the_pool_parser(tmp_path):
    batch = make_batch(tmp_path / "pool")
    a, b = batch.items
    root = tmp_path / "export"
    (root / "obj_train_data").mkdir(parents=True)
    (root / "obj.names").write_text("shark\nfish\n")  # another class order than the workspace's
    (root / "obj_train_data" / f"{Path(a.staged_name).stem}.txt").write_text(
        f"0 0.5 0.5 {1 + EDGE_TOLERANCE / 2} 0.5\n")  # edge noise: clipped by the pool parser
    (root / "obj_train_data" / f"{Path(b.staged_name).stem}.txt").write_text("1 0.5 0.5 0.2\n")
    result = parse_yolo_export(root, batch)
    assert result.labels[0].sha256 == a.sha256
    assert result.labels[0].boxes == ((1, 0.5, 0.5, 1.0, 0.5),)  # shark is class 1 of the workspace
    (problem,) = result.problems
    assert problem.sha256 == b.sha256 and problem.region == "line 1" and "expected 5" in problem.why
    assert result.status_of(b.sha256) == "rejected" and result.held == (b.sha256,)

