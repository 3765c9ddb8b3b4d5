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


# -- 6. a push is not labeled work: run waits after pushing; a pull takes only what the backend marks accepted -------


class EagerBackend:
    """A backend that lists the model's pre-annotations as finished labels as soon as it has the batch, as the
    live CVAT backend once did, and judges every task as `verdict`."""

    name = "cvat"

    def __init__(self, verdict: str = "accepted"):
        from labelwise.annotation.base import AnnotatedImage

        self.verdict, self.pushes, self.batch, self.Annotated = verdict, 0, None, AnnotatedImage

    def push(self, batch, *, finished=()):
        from labelwise.annotation.base import PushReport

        self.pushes += 1
        sent = 0 if self.batch is not None else len(batch.items)
        self.batch = batch
        return PushReport(batch.round, sent, len(batch.items) - sent, where="CVAT task 7 at http://cvat.test")

    def pull(self, batch):
        from labelwise.annotation.base import PullResult, TaskOutcome

        labels = tuple(self.Annotated(i.sha256, "labeled", ((0, 0.5, 0.5, 0.2, 0.2),), source=f"cvat:frame={i.rank}")
                       for i in batch.items)
        return PullResult(labels, (), tuple(TaskOutcome(i.sha256, self.verdict, i.staged_name) for i in batch.items))

    def progress(self, batch):
        return self.pull(batch).counts()

    def retire(self, batch, *, keep=()):
        from labelwise.annotation.base import RetireReport

        return RetireReport(batch.round)


def test_run_waits_after_a_push_and_takes_only_what_the_backend_marks_accepted(tmp_path, monkeypatch):
    from labelwise.workflow import annotating

    ws = _workspace(tmp_path, annotation={"backend": "cvat", "url": "http://cvat.test"})
    be = EagerBackend(verdict="pending")
    monkeypatch.setattr(annotating, "backend", lambda ctx, name=None: be)
    args = ["-w", str(ws.root)]
    first = runner.invoke(app, ["run", *args])
    assert first.exit_code == 0, first.output
    assert be.pushes == 1 and Workspace(ws.root).store.counts()["pool_labeled"] == 0  # a push labels nothing
    assert "waiting for annotations of round 1: 0/4 done" in first.output
    assert "just pushed (round 1: sent 4 image(s) to CVAT task 7 at http://cvat.test)" in first.output
    assert f"next: labelwise annotate wait -w {ws.root}" in first.output
    # the backend lists boxes for every image but marks them pending (nobody finished a job): none is taken
    second = runner.invoke(app, ["run", *args])
    assert second.exit_code == 0, second.output
    assert Workspace(ws.root).store.counts()["pool_labeled"] == 0
    assert "waiting for annotations of round 1: 0/4 done" in second.output
    notes = [x for x in second.output.splitlines() if "note: cvat:" in x]  # not the CLI's load-average note
    assert len(notes) == 4 and all("not taken, the backend marks it pending, not labeled" in x for x in notes)
    be.verdict = "accepted"  # people finished the jobs
    third = runner.invoke(app, ["annotate", "pull", *args])
    assert third.exit_code == 0, third.output
    assert "4/4 done (4 accepted, 0 skipped)" in third.output and "round complete" in third.output


def test_live_cvat_run_pushes_waits_and_pulls_only_finished_jobs(tmp_path, monkeypatch):
    """The live CVAT backend against the in-memory CVAT of tests/test_cvat_live.py, through the workflow."""
    import httpx

    from labelwise.annotation.cvat import CvatBackend
    from labelwise.annotation.http import RetryPolicy
    from labelwise.workflow import annotating
    from test_cvat_live import ENV, FakeCvat

    ws = _workspace(tmp_path, annotation={"backend": "cvat", "url": "http://cvat.test"})
    fake = FakeCvat(segment_size=2)
    be = CvatBackend("http://cvat.test", annotating.StoreBackendState(ws.store, "backend:cvat"), ws.root, ("a", "b"),
                     transport=httpx.MockTransport(fake), env=ENV, poll_s=0,
                     retry=RetryPolicy(attempts=2, sleep=lambda s: None))
    monkeypatch.setattr(annotating, "backend", lambda ctx, name=None: be)
    args = ["-w", str(ws.root)]
    first = runner.invoke(app, ["run", *args])
    assert first.exit_code == 0, first.output
    (tid,) = fake.tasks
    assert "just pushed (round 1: sent 4 image(s)" in first.output and f"CVAT task {tid}" in first.output
    jobs = fake.task_jobs(tid)
    for frame in range(4):  # the model's boxes as pre-annotations on every frame
        fake.draw(tid, frame, "a", [4, 4, 20, 20])["source"] = "auto"
    fake.finish(jobs[0])  # frames 0 and 1: a person finished that job
    pulled = runner.invoke(app, ["annotate", "pull", *args])
    assert pulled.exit_code == 0, pulled.output
    assert "pulled 2 label(s); 2/4 done (2 accepted, 0 skipped), 0 rejected, 2 pending" in pulled.output
    ws = Workspace(ws.root)
    assert {r["outcome"] for r in ws.store.selection(1)} == {"labeled", "pending"}


# -- 7. labels of images that were not selected are reported; archives are unpacked into a folder removed after ------


def test_import_says_which_label_files_are_not_for_the_batch(tmp_path):
    ws = _workspace(tmp_path)
    ws.select()
    items = ws.batch().items
    labels = tmp_path / "labels"
    _label_file(labels, items[0], "0 0.5 0.5 0.2 0.2\n")
    for n in range(7):
        (labels / f"other_{n}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (labels / "classes.txt").write_text("a\nb\n")  # not a label of an image
    result = runner.invoke(app, ["import", str(labels), "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    (line,) = [x for x in result.output.splitlines() if "note:" in x]
    assert f"7 label file(s) in {labels} are not for an image of round 1's batch and were ignored" in line
    assert "e.g. other_0.txt, other_1.txt, other_2.txt, other_3.txt, other_4.txt ..." in line
    assert "classes.txt" not in line and "labelwise add --labeled" in line
    assert "imported 1 label(s)" in result.output


def test_archive_import_unpacks_into_a_temporary_folder_removed_afterwards(tmp_path, monkeypatch):
    import tarfile
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    ws = _workspace(tmp_path, per_round=2)
    ws.select()
    a, b = ws.batch().items
    src = tmp_path / "src"
    _label_file(src / "labels", a, "0 0.5 0.5 0.2 0.2\n")
    _label_file(src / "labels", b, "0 0.5 0.5 0.2\n")  # malformed
    (src / "labels" / "stranger.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    archive = tmp_path / "labels.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "labels", arcname="labels")
    result = runner.invoke(app, ["import", str(archive), "-w", str(ws.root)])
    assert result.exit_code == 1, result.output
    (problem,) = [x for x in result.output.splitlines() if "rejected:" in x]
    # named as a member of the archive, not by the temporary folder it was read from
    assert f"{archive}:labels/{Path(b.staged_name).stem}.txt:1" in problem and str(scratch) not in result.output
    assert f"e.g. {archive}:labels/stranger.txt" in result.output
    assert list(scratch.iterdir()) == [] and not (ws.root / "imports").exists()  # nothing left behind
    (source,) = ws.store.conn.execute("SELECT source FROM labels WHERE image_id=?", (a.image_id,)).fetchone()
    assert source == f"{archive}:labels/{Path(a.staged_name).stem}.txt"
