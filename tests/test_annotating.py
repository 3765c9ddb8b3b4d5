"""The workflow side of annotation, without a server: what taking labels back reports, held images, the next command
per backend, re-selection retiring the old batch, archives, and labels for images that were not selected."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from labelwise.cli import app
from labelwise.loop import Workspace

runner = CliRunner()


def _scenes(root: Path, n: int, seed: int) -> Path:
    """`n` random images under root/images with a one-box YOLO label each under root/labels."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / "images" / f"{i:03d}.png")
        (root / "labels" / f"{i:03d}.txt").write_text(f"{i % 2} 0.5 0.5 0.2 0.3\n")
    return root


def _workspace(tmp_path: Path, n_pool: int = 12, per_round: int = 4, **settings) -> Workspace:
    pool, val = _scenes(tmp_path / "pool", n_pool, 1), _scenes(tmp_path / "val", 3, 2)
    Workspace.create(tmp_path / "ws", images=[pool / "images"], classes=["a", "b"], val=val / "images",
                     model="yolo11n.yaml", budget={"per_round": per_round, "initial": per_round},
                     **settings).ingest_sources(progress=False)
    return Workspace(tmp_path / "ws")


def _label_file(folder: Path, item, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{Path(item.staged_name).stem}.txt"
    path.write_text(text)
    return path


# -- 2. a newer invalid annotation of an image already pulled: held out of training ---------------------------------


def test_a_newer_invalid_label_holds_the_image_out_of_training_until_it_is_fixed(tmp_path):
    ws = _workspace(tmp_path)
    ws.select()
    items = ws.batch().items
    first = tmp_path / "first"
    for item in items[:2]:
        _label_file(first, item, "0 0.5 0.5 0.2 0.2\n")
    report = ws.import_labels(first)
    assert (report.imported, report.newly_held, report.held) == (2, [], [])
    held_item = items[0]
    root = ws.write_dataset(1).parent  # an earlier attempt of the round's training wrote it
    assert held_item.sha256[:16] in {p.stem for p in (root / "images" / "train").iterdir()}
    # the annotator replaces the first file with something that cannot be taken
    newer = tmp_path / "newer"
    bad = _label_file(newer, held_item, "0 0.5 0.5 1.7 0.2\n")
    report = ws.import_labels(newer)
    assert report.newly_held == [held_item.staged_name] and report.needs_correction
    (name, why), = report.held
    assert name == held_item.staged_name and "earlier pull is out of date" in why and str(bad) in why
    assert [image.sha256 for image, *_ in ws.store.held()] == [held_item.sha256]
    # training's dataset leaves it out (the other labeled image stays), and takes out what the earlier attempt wrote
    ws.write_dataset(1)
    train = {p.stem for p in (root / "images" / "train").iterdir()}
    assert held_item.sha256[:16] not in train and items[1].sha256[:16] in train
    assert not (root / "labels" / "train" / f"{held_item.sha256[:16]}.txt").exists()
    assert held_item.sha256 not in {image.sha256 for image, _ in ws.store.labels("pool")}
    assert held_item.sha256 in {image.sha256 for image, _ in ws.store.labels("pool", held=True)}
    # the CLI says so on its own line and exits 1; status shows it
    args = ["-w", str(ws.root)]
    again = runner.invoke(app, ["import", str(newer), *args])
    assert again.exit_code == 1, again.output
    (line,) = [x for x in again.output.splitlines() if "held out of training:" in x]
    assert f"still held out of training: image {held_item.staged_name}" in line and "once a valid annotation" in line
    status = runner.invoke(app, ["status", *args], env={"COLUMNS": "250"})
    assert status.exit_code == 0, status.output
    assert "held out of training" in status.output
    assert any("held:" in x and str(held_item.path) in x for x in status.output.splitlines())
    # fixed: released, back in training
    _label_file(newer, held_item, "1 0.5 0.5 0.3 0.2\n")
    fixed = runner.invoke(app, ["import", str(newer), *args])
    assert fixed.exit_code == 0, fixed.output
    assert f"released: image {held_item.staged_name}" in fixed.output
    ws = Workspace(ws.root)
    assert ws.store.held() == [] and ws.store.label(held_item.image_id) == [(1, 0.5, 0.5, 0.3, 0.2)]
    root = ws.write_dataset(1).parent
    assert held_item.sha256[:16] in {p.stem for p in (root / "images" / "train").iterdir()}


def test_a_held_image_keeps_the_round_open(tmp_path):
    ws = _workspace(tmp_path, per_round=2)
    ws.select()
    a, b = ws.batch().items
    labels = tmp_path / "labels"
    _label_file(labels, a, "0 0.5 0.5 0.2 0.2\n")
    assert not ws.import_labels(labels).complete
    _label_file(labels, a, "9 0.5 0.5 0.2 0.2\n")  # class 9 of 2: refused, and a was pulled before
    _label_file(labels, b, "1 0.5 0.5 0.2 0.2\n")
    report = ws.import_labels(labels)
    assert report.pending == 0 and not report.complete and ws.store.current_round().step == "annotate"
    p = report.progress
    assert (p.accepted, p.rejected, p.pending, p.held) == (1, 1, 0, 1)
    _label_file(labels, a, "1 0.5 0.5 0.2 0.2\n")
    assert ws.import_labels(labels).complete and ws.store.held() == []


# -- 3. status: the next command for the configured backend; skipped images go back to the pool ----------------------


def test_status_with_label_studio_says_push_then_wait_never_export_import(tmp_path):
    ws = _workspace(tmp_path, annotation={"backend": "label_studio", "url": "http://127.0.0.1:9",
                                          "document_root": str(tmp_path)})
    ws.select()
    s = ws.status()
    assert s.next_command.startswith(f"labelwise annotate push -w {ws.root}") and "import" not in s.next_command
    from labelwise.annotation.base import PushReport
    from labelwise.workflow.annotating import record_push

    record_push(ws.ctx, 1, "label_studio", PushReport(1, 4, where="Label Studio project 3"))
    s = ws.status()
    assert s.next_command.startswith(f"labelwise annotate wait -w {ws.root}") and "export" not in s.next_command
    out = runner.invoke(app, ["status", "-w", str(ws.root)], env={"COLUMNS": "250"})
    assert "labelwise annotate wait" in out.output and "labelwise export" not in out.output


def test_skipped_images_go_back_to_the_pool_and_are_not_counted_as_labeled(tmp_path):
    ws = _workspace(tmp_path)
    args = ["-w", str(ws.root)]
    assert ws.status().next_command.startswith("labelwise select")
    ws.select()
    assert ws.status().next_command.startswith(f"labelwise export -w {ws.root}")
    folder = ws.export()
    assert ws.status().next_command == (f"put one YOLO txt per image in {folder / 'labels'}, then: "
                                        f"labelwise import {folder / 'labels'} -w {ws.root}")
    a, b, *_ = ws.batch().items
    _label_file(folder / "labels", a, "0 0.5 0.5 0.2 0.2\n")
    (folder / "skipped.txt").write_text(f"{b.staged_name}\n")
    pulled = runner.invoke(app, ["annotate", "pull", *args])
    assert pulled.exit_code == 0, pulled.output
    assert "pulled 1 label(s), 1 newly skipped; 2/4 done (1 accepted, 1 skipped), 0 rejected, 2 pending" in \
        pulled.output
    ws = Workspace(ws.root)
    s = ws.status()
    assert "2/4 selected images done (1 labeled, 1 skipped and back in the pool), 0 rejected, 2 pending" in s.message
    assert s.counts["pool_labeled"] == 1  # the skipped image is not labeled ...
    assert ws.store.image_by_sha(b.sha256).state == "unlabeled"  # ... it is back in the pool
    table = runner.invoke(app, ["status", *args], env={"COLUMNS": "250"})
    assert "1 labeled, 1 skipped" in table.output


# -- 4. selecting again takes the earlier batch's unlabeled tasks back, and says which ------------------------------


def test_selecting_again_retires_the_earlier_batch_and_prints_which(tmp_path):
    ws = _workspace(tmp_path)
    args = ["-w", str(ws.root)]
    assert runner.invoke(app, ["select", *args]).exit_code == 0
    exported = runner.invoke(app, ["export", *args])
    assert exported.exit_code == 0, exported.output
    ws = Workspace(ws.root)
    old = ws.batch().items
    folder = ws.root / "annotation" / "round-001"
    again = runner.invoke(app, ["select", *args, "--k", "2"])
    assert again.exit_code == 0, again.output
    new = {r["sha256"] for r in Workspace(ws.root).store.selection(1)}
    gone = [i for i in old if i.sha256 not in new]
    assert len(new) == 2 and len(gone) == 2
    assert f"earlier batch of round 1 in {folder}: removed 2 unlabeled task(s), kept 2, 0 not there" in again.output
    for item in old:
        state = "kept, asked to keep it" if item.sha256 in new else "removed, no label file"
        assert f"images/{item.staged_name}: {state}" in again.output
    assert {p.name for p in (folder / "images").iterdir()} == {i.staged_name for i in old if i.sha256 in new}
    assert set((folder / "retired.txt").read_text().split()) == {i.staged_name for i in gone}
    assert f"next: labelwise export -w {ws.root}" in again.output  # not pushed since: stage it again


def test_a_batch_never_pushed_retires_nothing_and_needs_no_server(tmp_path):
    ws = _workspace(tmp_path, annotation={"backend": "label_studio", "url": "http://127.0.0.1:9",
                                          "document_root": str(tmp_path)})
    ws.select()
    seen = []
    ws.select(k=2, on_retire=lambda where, report: seen.append(report))  # no server at :9, and none asked
    assert seen == [] and len(ws.store.selection(1)) == 2
