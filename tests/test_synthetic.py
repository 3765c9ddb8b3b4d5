"""The built-in synthetic scenario dataset: determinism, layout, scenario mix, rare classes, bursts, atomic writes."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from labelwise import synthetic as syn
from labelwise.synthetic import CLASS_NAMES, RARE_CLASSES, ScenarioSpec, generate, is_complete, read_scenarios

SMALL = ScenarioSpec(n_train=60, n_val=15, image_size=64, seed=3)


def tree_hash(root: Path) -> str:
    """Hash of every file's relative path and bytes (data.yaml minus its machine-specific absolute path)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name == "data.yaml":
                data = b"\n".join(line for line in data.splitlines() if not line.startswith(b"path:"))
            h.update(str(p.relative_to(root)).encode() + b"\0" + data + b"\0")
    return h.hexdigest()


def labels_of(root: Path, rel: str) -> list[tuple[int, float, float, float, float]]:
    text = (root / rel.replace("/images/", "/labels/").replace(".png", ".txt")).read_text()
    out = []
    for line in text.splitlines():
        c, *xywh = line.split()
        out.append((int(c), *map(float, xywh)))
    return out


@pytest.fixture(scope="module")
def default_ds(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("syn") / "default"
    generate(root)  # the default spec: 400 train + 100 val at 128 px
    return root


def test_same_spec_gives_byte_identical_tree_and_other_seed_differs(tmp_path):
    a = generate(tmp_path / "a", SMALL).parent
    b = generate(tmp_path / "b", SMALL).parent
    c = generate(tmp_path / "c", ScenarioSpec(n_train=60, n_val=15, image_size=64, seed=4)).parent
    assert tree_hash(a) == tree_hash(b)
    assert tree_hash(a) != tree_hash(c)
    assert len(list((a / "train" / "images").glob("*.png"))) == 60


def test_layout_is_ultralytics_ready_and_every_label_line_is_valid(default_ds):
    root = default_ds
    data = yaml.safe_load((root / "data.yaml").read_text())
    assert Path(data["path"]) == root.resolve()
    assert data["train"] == "train/images" and data["val"] == "val/images"
    assert data["names"] == dict(enumerate(CLASS_NAMES))
    assert (root / "spec.json").is_file()

    rows = read_scenarios(root)
    header = (root / "scenarios.csv").read_text().splitlines()[0]
    assert header == "file,split,scenario,burst_id,hard,rare,n_objects,classes"
    for split, n in (("train", 400), ("val", 100)):
        images = sorted(p.name for p in (root / split / "images").iterdir())
        labels = sorted(p.name for p in (root / split / "labels").iterdir())
        assert len(images) == n and all(name.endswith(".png") for name in images)
        assert [Path(x).stem for x in images] == [Path(x).stem for x in labels]
        assert {f for f, r in rows.items() if r["split"] == split} == {f"{split}/images/{x}" for x in images}

    n_empty = 0
    for rel, row in rows.items():
        with Image.open(root / rel) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (128, 128)
        text = (root / rel.replace("/images/", "/labels/").replace(".png", ".txt")).read_text()
        lines = text.splitlines()
        n_empty += not lines
        classes = []
        for line in lines:
            fields = line.split(" ")
            assert len(fields) == 5, line
            assert all(len(f.split(".")[1]) == 6 for f in fields[1:]), line  # 6 decimals
            c = int(fields[0])
            cx, cy, w, h = map(float, fields[1:])
            assert 0 <= c < len(CLASS_NAMES)
            assert 0 < w <= 1 and 0 < h <= 1
            assert cx - w / 2 >= -1e-6 and cx + w / 2 <= 1 + 1e-6
            assert cy - h / 2 >= -1e-6 and cy + h / 2 <= 1 + 1e-6
            classes.append(c)
        assert row["n_objects"] == len(lines)
        assert row["classes"] == tuple(sorted(classes))
        assert row["rare"] == any(c in RARE_CLASSES for c in classes)
        assert row["hard"] == (row["scenario"] != "daylight")
        assert row["scenario"] in syn.SCENARIOS
    assert n_empty >= 5  # a few daylight images hold no object: an empty label file
    assert all(rows[f]["scenario"] == "daylight" for f, r in rows.items() if r["n_objects"] == 0)


@pytest.mark.parametrize("split,n", [("train", 400), ("val", 100)])
def test_scenario_mix_follows_the_spec(default_ds, split, n):
    rows = [r for r in read_scenarios(default_ds).values() if r["split"] == split]
    counts = Counter(r["scenario"] for r in rows)
    assert len(rows) == n
    assert abs(sum(r["hard"] for r in rows) / n - 0.2) <= 0.02
    for scenario in syn.HARD_SCENARIOS:  # equal thirds of the hard share by default
        assert abs(counts[scenario] - 0.2 * n / 3) <= 1.5, counts
    burst_frames = sum(r["burst_id"] is not None for r in rows)
    if split == "train":
        assert abs(burst_frames / n - 0.4) <= 0.03
        assert all(r["scenario"] == "daylight" for r in rows if r["burst_id"] is not None)
        sizes = Counter(r["burst_id"] for r in rows if r["burst_id"] is not None)
        assert all(3 <= s <= 8 for s in sizes.values()), sizes
        assert len(set(sizes.values())) > 1  # lengths vary
    else:
        assert burst_frames == 0  # validation images are independent scenes
    crowded = [r["n_objects"] for r in rows if r["scenario"] == "crowded"]
    others = [r["n_objects"] for r in rows if r["scenario"] != "crowded"]
    assert min(crowded) >= 8 and max(others) <= 4


def test_spec_knobs_change_the_mix(tmp_path):
    spec = ScenarioSpec(n_train=100, n_val=20, image_size=64, hard_fraction=0.5, burst_fraction=0.0,
                        hard_mix=(1.0, 0.0, 0.0))
    rows = read_scenarios(generate(tmp_path / "x", spec).parent)
    train = [r for r in rows.values() if r["split"] == "train"]
    assert Counter(r["scenario"] for r in train) == {"daylight": 50, "night": 50}
    assert not any(r["burst_id"] is not None for r in train)


def test_rare_classes_are_rare(default_ds):
    rows = read_scenarios(default_ds)
    for split in ("train", "val"):
        objects = Counter(c for r in rows.values() if r["split"] == split for c in r["classes"])
        total = sum(objects.values())
        for rare in RARE_CLASSES:
            assert abs(objects[rare] / total - 0.03) <= 0.006, (split, objects)
        for common in set(range(len(CLASS_NAMES))) - set(RARE_CLASSES):
            assert objects[common] / total >= 0.15, (split, objects)
    rare_images = [r for r in rows.values() if r["rare"]]
    assert 0 < len(rare_images) < 0.3 * len(rows)
    # rare objects turn up in hard scenes too, not only in one kind of image
    assert len({r["scenario"] for r in rare_images}) >= 3


def test_rare_fraction_knob(tmp_path):
    spec = ScenarioSpec(n_train=150, n_val=0, image_size=64, rare_fraction=0.01)
    rows = read_scenarios(generate(tmp_path / "r", spec).parent)
    objects = Counter(c for r in rows.values() for c in r["classes"])
    total = sum(objects.values())
    for rare in RARE_CLASSES:
        assert objects[rare] / total <= 0.015


def _pixels(root: Path, rel: str) -> np.ndarray:
    with Image.open(root / rel) as im:
        return np.asarray(im, dtype=np.float32)


def test_burst_members_are_near_duplicates_and_other_scenes_are_not(default_ds):
    rows = read_scenarios(default_ds)
    bursts: dict[int, list[str]] = defaultdict(list)
    for f, r in rows.items():
        if r["burst_id"] is not None:
            bursts[r["burst_id"]].append(f)
    assert len(bursts) >= 10
    within, heads = [], []
    for files in bursts.values():
        files.sort()
        first = _pixels(default_ds, files[0])
        heads.append(first)
        for other in files[1:]:
            within.append(np.abs(first - _pixels(default_ds, other)).mean())
            # same objects, same classes, boxes moved by a few pixels at most
            a, b = labels_of(default_ds, files[0]), labels_of(default_ds, other)
            assert [x[0] for x in a] == [x[0] for x in b]
            for (_, *ba), (_, *bb) in zip(a, b, strict=True):
                assert np.abs(np.subtract(ba, bb)).max() * 128 <= 12
                assert ba[2:] == bb[2:]  # objects keep their size
        assert not any(np.array_equal(first, _pixels(default_ds, o)) for o in files[1:])  # never byte-identical
    between = [np.abs(heads[i] - heads[j]).mean() for i in range(len(heads)) for j in range(i + 1, len(heads))]
    # what is left between frames is mostly sensor noise (sigma 2-4) and a few pixels of motion
    assert np.median(within) < 6.0 and max(within) < 9.0, (np.median(within), max(within))
    assert np.median(between) > 25.0 and min(between) > 1.5 * max(within)


def test_hard_scenarios_look_different(default_ds):
    rows = read_scenarios(default_ds)
    mean = defaultdict(list)
    side = defaultdict(list)
    for f, r in rows.items():
        mean[r["scenario"]].append(_pixels(default_ds, f).mean())
        side[r["scenario"]].extend(min(w, h) * 128 for _, _, _, w, h in labels_of(default_ds, f))
    assert np.mean(mean["night"]) < 0.35 * np.mean(mean["daylight"])
    for scenario in ("daylight", "night", "occluded"):
        assert min(side[scenario]) >= 10, scenario  # objects are not tiny outside crowded scenes
    assert np.median(side["crowded"]) < 0.6 * np.median(side["daylight"])
    assert min(side["crowded"]) >= 6


def test_generate_is_idempotent_and_refreshes_a_moved_path(tmp_path):
    root = tmp_path / "ds"
    data = generate(root, SMALL)
    stamp = {p: p.stat().st_mtime_ns for p in root.rglob("*.png")}
    t0 = time.perf_counter()
    assert generate(root, SMALL) == data
    assert time.perf_counter() - t0 < 0.5
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.png")} == stamp  # nothing rewritten

    moved = tmp_path / "moved"
    root.rename(moved)
    generate(moved, SMALL)
    assert yaml.safe_load((moved / "data.yaml").read_text())["path"] == str(moved.resolve())
    assert {p.name: p.stat().st_mtime_ns for p in moved.rglob("*.png")} == {p.name: t for p, t in stamp.items()}


def test_a_different_spec_replaces_the_dataset(tmp_path):
    root = tmp_path / "ds"
    generate(root, SMALL)
    other = ScenarioSpec(n_train=30, n_val=10, image_size=64, seed=3)
    generate(root, other)
    assert is_complete(root, other) and not is_complete(root, SMALL)
    assert len(list((root / "train" / "images").iterdir())) == 30
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no work or trash dirs left


@pytest.mark.parametrize("damage", ["spec.json", "one image", "one label", "scenarios.csv", "bad spec.json"])
def test_a_damaged_dataset_is_not_taken_for_complete(tmp_path, damage):
    root = tmp_path / "ds"
    generate(root, SMALL)
    reference = tree_hash(root)
    if damage == "spec.json":
        (root / "spec.json").unlink()
    elif damage == "one image":
        next((root / "val" / "images").iterdir()).unlink()
    elif damage == "one label":
        next((root / "train" / "labels").iterdir()).unlink()
    elif damage == "scenarios.csv":
        (root / "scenarios.csv").write_text("file,split\n")
    else:
        (root / "spec.json").write_text("{not json")
    assert not is_complete(root, SMALL)
    generate(root, SMALL)
    assert is_complete(root, SMALL)
    assert tree_hash(root) == reference


def test_a_killed_run_leaves_nothing_half_made(tmp_path):
    root = tmp_path / "ds"
    code = (
        "import sys; from pathlib import Path; from labelwise.synthetic import generate, ScenarioSpec; "
        "generate(Path(sys.argv[1]), ScenarioSpec(n_train=20000, n_val=0, image_size=64))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(root)])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            partial = [p for p in tmp_path.glob(".ds.partial-*")]
            if partial and len(list((partial[0] / "train" / "images").glob("*.png"))) >= 20:
                break
            assert proc.poll() is None, "the generator finished before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("the generator never started writing")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not root.exists()  # nothing at root: a half-made dataset is never visible there
    assert not is_complete(root)
    assert list(tmp_path.glob(".ds.partial-*"))  # the dead run's work dir is still there ...
    generate(root, SMALL)
    assert is_complete(root, SMALL)
    assert not list(tmp_path.glob(".ds.partial-*"))  # ... until the next run cleans it up


def test_a_partial_dataset_at_root_is_regenerated(tmp_path):
    # e.g. a copy that was interrupted: our folders, no spec.json
    root = tmp_path / "ds"
    (root / "train" / "images").mkdir(parents=True)
    (root / "train" / "images" / "img_000000.png").write_bytes(b"half")
    assert not is_complete(root, SMALL)
    generate(root, SMALL)
    assert is_complete(root, SMALL)
    assert (root / "train" / "images" / "img_000000.png").read_bytes()[:4] == b"\x89PNG"


def test_a_foreign_directory_is_never_deleted(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    (root / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="holiday.jpg"):
        generate(root, SMALL)
    assert (root / "holiday.jpg").read_bytes() == b"precious"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_train": 0},
        {"image_size": 16},
        {"hard_fraction": 1.5},
        {"hard_fraction": 0.7, "burst_fraction": 0.5},
        {"rare_fraction": 0.6},
        {"hard_mix": (0.0, 0.0, 0.0)},
        {"burst_length": (1, 4)},
    ],
)
def test_invalid_specs_are_refused(kwargs):
    with pytest.raises(ValueError):
        ScenarioSpec(**kwargs)


def test_generation_is_fast(tmp_path):
    # CPU time of this process, so that other work on a shared machine does not make it flaky
    t0 = time.process_time()
    generate(tmp_path / "speed", ScenarioSpec(n_train=200, n_val=50))
    assert time.process_time() - t0 < 8  # about 1.5 s for these 250 images at 128 px
