"""The CLI over the Python API: init, add, status; clear errors; no prompts."""

from __future__ import annotations

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from labelwise.cli import app

runner = CliRunner()


def _images(folder, n, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / f"img{i}.png")


def test_init_status_add(tmp_path):
    _images(tmp_path / "pool", 5)
    (tmp_path / "pool" / "broken.png").write_bytes(b"garbage")
    result = runner.invoke(app, ["init", str(tmp_path / "ws"), "--images", str(tmp_path / "pool"),
                                 "--classes", "cat,dog", "--model", "yolo11n.yaml"])
    assert result.exit_code == 0, result.output
    assert "added 5 images" in result.output and "quarantined" in result.output
    assert (tmp_path / "ws" / "labelwise.yaml").exists() and (tmp_path / "ws" / "labelwise.db").exists()
    status = runner.invoke(app, ["status", "-w", str(tmp_path / "ws")])
    assert status.exit_code == 0, status.output
    assert "labelwise select" in status.output  # nothing labeled yet: the next step is the first batch
    # a model YAML has no embeddings to choose with: status says the first batch will be random
    assert "picked at random" in status.output and "not a trained checkpoint" in status.output
    assert "broken.png" in status.output
    _images(tmp_path / "more", 2, seed=1)
    added = runner.invoke(app, ["add", str(tmp_path / "more"), "-w", str(tmp_path / "ws")])
    assert "added 2 images" in added.output


def test_select_and_export_cold_start_then_import_from_the_cli(tmp_path):
    _images(tmp_path / "pool", 6)
    runner.invoke(app, ["init", str(tmp_path / "ws"), "--images", str(tmp_path / "pool"), "--classes", "a",
                        "--per-round", "3", "--model", "yolo11n.yaml"])
    ws = ["-w", str(tmp_path / "ws")]
    sel = runner.invoke(app, ["select", *ws])
    assert sel.exit_code == 0, sel.output
    assert "selected 3 images" in sel.output
    exp = runner.invoke(app, ["export", *ws])
    assert exp.exit_code == 0, exp.output
    staged = sorted((tmp_path / "ws" / "annotation" / "round-001" / "images").iterdir())
    assert len(staged) == 3
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / f"{staged[0].stem}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (labels / f"{staged[1].stem}.txt").write_text("0 0.5 0.5 0.2\n")  # malformed: 4 fields
    imp = runner.invoke(app, ["import", str(labels), *ws])
    # a refused label file is rejected work: named on its own line, with what to do, and the exit code says so
    assert imp.exit_code == 1, imp.output
    assert "imported 1 label(s); 1/3 done (1 accepted, 0 skipped), 1 rejected, 1 pending" in imp.output
    (line,) = [x for x in imp.output.splitlines() if "rejected:" in x]
    assert f"{staged[1].stem}.txt:1" in line and "4 fields" in line and "Fix the file" in line
    assert "next: fix the label files named above, then: labelwise import" in imp.output
    # status lists the same problem without reading the files again
    status = runner.invoke(app, ["status", *ws], env={"COLUMNS": "250"})
    assert status.exit_code == 0, status.output
    assert "1/3 selected images done (1 labeled, 0 skipped and back in the pool), 1 rejected, 1 pending" in \
        status.output
    assert any(f"{staged[1].stem}.txt:1" in x and "rejected:" in x for x in status.output.splitlines())
    (labels / f"{staged[1].stem}.txt").write_text("0 0.5 0.5 0.2 0.2\n")  # corrected: nothing rejected any more
    again = runner.invoke(app, ["import", str(labels), *ws])
    assert again.exit_code == 0, again.output
    assert "2/3 done (2 accepted, 0 skipped), 0 rejected, 1 pending" in again.output and "rejected:" not in again.output


def test_errors_are_one_clear_line_with_exit_code_2(tmp_path):
    result = runner.invoke(app, ["status", "-w", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "labelwise init" in result.output
    result = runner.invoke(app, ["train", "-w", str(tmp_path / "nowhere")])
    assert result.exit_code == 2


def test_import_from_an_archive_is_unpacked_safely(tmp_path):
    import zipfile

    _images(tmp_path / "pool", 4)
    runner.invoke(app, ["init", str(tmp_path / "ws"), "--images", str(tmp_path / "pool"), "--classes", "a",
                        "--per-round", "2", "--model", "yolo11n.yaml"])
    ws = ["-w", str(tmp_path / "ws")]
    runner.invoke(app, ["select", *ws])
    runner.invoke(app, ["export", *ws])
    staged = sorted((tmp_path / "ws" / "annotation" / "round-001" / "images").iterdir())
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr(f"{staged[0].stem}.txt", "0 0.5 0.5 0.2 0.2\n")
        z.writestr("../../escaped.txt", "0 0.5 0.5 0.2 0.2\n")
    bad = runner.invoke(app, ["import", str(evil), *ws])
    assert bad.exit_code == 2 and "escaped.txt" in bad.output
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "ws" / "escaped.txt").exists()
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as z:
        for path in staged:
            z.writestr(f"labels/{path.stem}.txt", "0 0.5 0.5 0.2 0.2\n")
    ok = runner.invoke(app, ["import", str(good), *ws])
    assert ok.exit_code == 0, ok.output
    assert "imported 2" in ok.output and "round complete" in ok.output
