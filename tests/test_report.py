"""`labelwise report`: the HTML page of a workspace, checked as it renders in headless Chromium.

The workspace is real (store, config, images, labels) but its rounds are written straight into the store, with
made-up metrics and cached detections, so no model is trained and the test takes seconds. Chromium (Debian's
`chromium` package) must be installed: `apt-get update && apt-get install -y chromium`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelwise.detections import ImageDetections
from labelwise.loop import Workspace
from labelwise.pool import label_path_for, read_yolo_label
from labelwise.report import build_report
from labelwise.synthetic import CLASS_NAMES, ScenarioSpec, generate

CHROMIUM_INSTALL = "apt-get update && apt-get install -y chromium"
PER_ROUND = 6


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(f"headless Chromium is needed to check the report renders; install it with: {CHROMIUM_INSTALL}")


def chromium(args: list[str], tmp_path: Path, url: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    cmd = [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           *args, url]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def fake_detections(boxes: list[tuple], width: int, height: int, conf: float) -> ImageDetections:
    """The oracle's boxes shifted a little, as a model would predict them, with the full class-score vector."""
    n = len(boxes)
    xyxy = np.array([[(cx - w / 2) * width + 2, (cy - h / 2) * height + 1, (cx + w / 2) * width + 2,
                      (cy + h / 2) * height + 1] for _c, cx, cy, w, h in boxes], np.float32).reshape(n, 4)
    scores = np.full((n, len(CLASS_NAMES)), 0.01, np.float32)
    for i, (c, *_rest) in enumerate(boxes):
        scores[i, int(c)] = conf
    return ImageDetections(boxes=xyxy, class_scores=scores, box_features=np.zeros((n, 8), np.float16),
                           embedding=np.zeros(16, np.float32), max_candidate_score=conf, width=width, height=height)


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    data = generate(tmp_path / "scenes", ScenarioSpec(n_train=30, n_val=6, image_size=64, seed=5))
    ws = Workspace.create(tmp_path / "ws", images=[data.parent / "train" / "images"], data_yaml=data,
                          model="yolo11n.yaml", imgsz=64, budget={"per_round": PER_ROUND, "initial": PER_ROUND},
                          strategy={"name": "detection_and_confusion"})
    ws.ingest_sources(progress=False)
    store = ws.store
    pool = store.images(split="pool")
    maps = {2: 0.21, 3: 0.34}
    for round_no in (1, 2, 3):
        store.start_round(round_no, "select" if round_no == 1 else "train")
        if round_no > 1:
            model_hash = f"model{round_no}"
            n_labeled = store.counts()["pool_labeled"]
            store.update_round(round_no, step="select", strategy='{"name": "detection_and_confusion"}',
                               model_path=str(tmp_path / f"r{round_no}.pt"), model_hash=model_hash,
                               n_labeled=n_labeled, map50=maps[round_no], map50_95=maps[round_no] / 2,
                               per_class_ap50={c: round(0.1 * i + maps[round_no] / 3, 3)
                                               for i, c in enumerate(CLASS_NAMES)},
                               train_seconds=12.0, score_seconds=3.0, agreement=0.8 if round_no == 3 else None)
            store.put_detections(model_hash, 64, [
                (img.sha256, fake_detections(read_yolo_label(label_path_for(img.path), 6), img.width, img.height,
                                             0.6)) for img in pool])
        batch = pool[(round_no - 1) * PER_ROUND: round_no * PER_ROUND]
        picks = [(img.id, rank, 1.0 - rank / 10, {"detection_and_confusion": 1.0 - rank / 10, "boxes": 2},
                  f"pick {rank}: least confident <b>box</b>") for rank, img in enumerate(batch, start=1)]
        store.save_selection(round_no, picks, [], next_step="annotate")
        # round 3's batch is still with the annotators: only half of it is labeled
        labeled = batch if round_no < 3 else batch[: PER_ROUND // 2]
        for img in labeled:
            store.put_label(img.id, read_yolo_label(label_path_for(img.path), 6), round_no=round_no, source="test")
            store.set_outcome(round_no, img.id, "labeled")
        if round_no < 3:
            store.update_round(round_no, step="done")
    return ws


class Collector(HTMLParser):
    """Table rows by table id, img elements, and text."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.imgs: list[dict[str, str]] = []
        self.text: list[str] = []
        self._table: str | None = None
        self._in_body = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id")
            self.tables[self._table] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._in_body:
            self._cell = []
        elif tag == "img":
            self.imgs.append(a)

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False
        elif tag in ("td", "th") and self._cell is not None and self._table:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def parse(text: str) -> Collector:
    c = Collector()
    c.feed(text)
    return c


def test_report_is_one_self_contained_file_with_every_section(workspace, tmp_path):
    path = build_report(workspace, tmp_path / "out")
    assert path == tmp_path / "out" / "report.html"
    text = path.read_text()
    page = parse(text)
    # nothing is linked from outside the file: every image is a data URI
    assert page.imgs and all(img["src"].startswith("data:image/") for img in page.imgs)
    assert not re.search(r'(src|href)="(?!data:)', text)
    ap = page.tables["per-class-ap"]
    assert [row[0] for row in ap] == ["2", "3"]  # one row per trained round
    assert ap[1][2] == str(PER_ROUND * 2) and ap[1][3] == "0.340"
    header = text[text.index('id="per-class-ap"'):text.index("</thead>", text.index('id="per-class-ap"'))]
    assert all(f">{c}<" in header for c in CLASS_NAMES)
    thumbs = [img for img in page.imgs if img.get("class") == "thumb"]
    assert len(thumbs) == 3 * PER_ROUND
    assert any(img.get("id") == "learning-curve" for img in page.imgs)
    counts = dict((row[0], row[1]) for row in page.tables["label-counts"])
    assert counts["labeled pool images"] == str(2 * PER_ROUND + PER_ROUND // 2)
    assert counts["selected, awaiting labels"] == str(PER_ROUND - PER_ROUND // 2)
    classes = page.tables["class-counts"]
    assert [row[0] for row in classes[:-1]] == list(CLASS_NAMES) and classes[-1][0] == "all"
    assert int(classes[-1][1]) == int(workspace.store.class_box_counts(6).sum()) > 0
    # every rule's advice is there, and the reasons (user text) are escaped, never markup
    advice = "".join(page.text)
    for rule in ("min_gain", "learning_curve", "knee", "stabilizing_predictions"):
        assert rule in advice
    assert "least confident &lt;b&gt;box&lt;/b&gt;" in text and "least confident <b>box</b>" not in text
    # the newest round comes first: the batch people are working on
    assert text.index('id="round-3"') < text.index('id="round-2"') < text.index('id="round-1"')
    assert "pending" in text[text.index('id="round-3"'):text.index('id="round-2"')]


def test_thumbnails_show_label_and_predicted_boxes(workspace, tmp_path):
    from labelwise.report import LABEL_COLOUR, PREDICTION_COLOUR, thumbnail

    image = workspace.store.labels("pool")[0][0]
    labels = workspace.store.label(image.id)
    assert labels
    jpeg = thumbnail(image.path, labels, [(*labels[0], 0.9)], list(CLASS_NAMES))
    (tmp_path / "t.jpg").write_bytes(jpeg)
    pixels = np.asarray(Image.open(tmp_path / "t.jpg").convert("RGB")).astype(int)
    assert max(pixels.shape[:2]) == 224  # small images are scaled up so that boxes can be seen

    def near(colour):
        return (np.abs(pixels - np.array(colour)).sum(axis=2) < 90).sum()

    assert near(LABEL_COLOUR) > 50 and near(PREDICTION_COLOUR) > 20
    assert thumbnail(tmp_path / "missing.png", [], [], []) is None


def test_report_renders_in_headless_chromium(workspace, tmp_path):
    path = build_report(workspace, tmp_path / "report.html")
    url = path.absolute().as_uri()
    dom = chromium(["--dump-dom"], tmp_path, url).stdout
    page = parse(dom)
    assert len(page.tables["per-class-ap"]) == 2
    assert len([img for img in page.imgs if img.get("class") == "thumb"]) == 3 * PER_ROUND
    assert "Stopping advice" in dom and "Round 3: 6 images selected by detection_and_confusion" in dom

    shot = tmp_path / "shot.png"
    chromium([f"--screenshot={shot}", "--window-size=1280,3200", "--hide-scrollbars"], tmp_path, url)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (3200, 1280)
    # not blank: text, tables, the plot and the thumbnails give many colours and real contrast
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500 and pixels.std() > 20
    # the thumbnails were decoded and painted: their label boxes' green shows up in the screenshot
    green = (np.abs(pixels - np.array([46, 204, 64])).sum(axis=2) < 60).sum()
    assert green > 500


def test_report_of_a_fresh_workspace_says_no_model_yet(tmp_path):
    data = generate(tmp_path / "scenes", ScenarioSpec(n_train=8, n_val=2, image_size=64, seed=1))
    ws = Workspace.create(tmp_path / "ws", images=[data.parent / "train" / "images"], data_yaml=data,
                          model="yolo11n.yaml")
    ws.ingest_sources(progress=False)
    text = build_report(ws, tmp_path / "r.html").read_text()
    assert 'id="learning-curve-missing"' in text and "No trained round yet" in text
    assert parse(text).tables["label-counts"][1] == ["unlabeled pool images", "8"]
