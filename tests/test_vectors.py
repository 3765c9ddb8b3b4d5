"""labelwise.vectors: the Parquet layout of the cached detections (the schema other engines write), the round trip
of ImageDetections through it, atomic shards, and the reads selection makes (memory-mapped, a few columns)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from labelwise.detections import ImageDetections
from labelwise.vectors import (
    DETECTIONS_SCHEMA,
    POOL_COLUMNS,
    TMP_PREFIX,
    VectorStore,
    detections_table,
    shard_info,
    table_detections,
)


def _det(rng: np.random.Generator, n: int, nc: int = 3, d_box: int = 5, d: int = 7,
         size: tuple[int, int] = (64, 48)) -> ImageDetections:
    xy = rng.uniform(0, 30, (n, 2))
    return ImageDetections(
        boxes=np.concatenate([xy, xy + rng.uniform(1, 10, (n, 2))], axis=1).astype(np.float32),
        class_scores=rng.uniform(0, 1, (n, nc)).astype(np.float32),
        box_features=rng.normal(size=(n, d_box)).astype(np.float16),
        embedding=rng.normal(size=d).astype(np.float16).astype(np.float32),  # what fp16 keeps
        max_candidate_score=float(np.float32(rng.uniform(0.1, 0.9))),
        width=size[0], height=size[1],
    )


def _same(a: ImageDetections, b: ImageDetections) -> None:
    for name in ("boxes", "class_scores", "box_features", "embedding"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x, y), name
    assert (a.max_candidate_score, a.width, a.height) == (b.max_candidate_score, b.width, b.height)


def test_the_schema_is_the_documented_one():
    assert [(f.name, str(f.type)) for f in DETECTIONS_SCHEMA] == [
        ("sha256", "string"), ("model_hash", "string"), ("imgsz", "int32"), ("variant", "string"),
        ("width", "int32"), ("height", "int32"), ("max_candidate_score", "float"),
        ("boxes", "list<item: float>"), ("class_scores", "list<item: float>"), ("n_classes", "int32"),
        ("box_features", "list<item: halffloat>"), ("d_box", "int32"), ("embedding", "list<item: halffloat>"),
        ("error", "string")]
    assert set(POOL_COLUMNS) <= set(DETECTIONS_SCHEMA.names) and "box_features" not in POOL_COLUMNS


def test_detections_round_trip_through_a_table_with_empty_images_and_error_rows():
    rng = np.random.default_rng(0)
    rows = [("a", _det(rng, 3)), ("b", _det(rng, 0)), ("c", "cannot identify image file"), ("d", _det(rng, 1))]
    table = detections_table(rows, "m1", 320, "flip")
    assert table.schema == DETECTIONS_SCHEMA and table.num_rows == 4
    assert table.column("variant").to_pylist() == ["flip"] * 4
    assert table.column("n_classes").to_pylist() == [3, 3, None, 3]
    assert table.column("d_box").to_pylist() == [5, 5, None, 5]
    assert table.column("boxes")[0].as_py()[:4] == rows[0][1].boxes[0].tolist()  # row-major x1 y1 x2 y2
    back = dict(table_detections(table))
    assert back["c"] == "cannot identify image file"
    for sha, det in rows:
        if not isinstance(det, str):
            _same(back[sha], det)
    assert back["b"].boxes.shape == (0, 4) and back["b"].class_scores.shape == (0, 3)


def test_detections_table_refuses_misshapen_arrays():
    rng = np.random.default_rng(1)
    good = _det(rng, 2)
    bad = ImageDetections(good.boxes, good.class_scores[:1], good.box_features, good.embedding, 0.5, 64, 48)
    with pytest.raises(ValueError, match="class_scores"):
        detections_table([("x", bad)], "m", 64)


def test_write_shard_is_atomic_and_named_by_its_key(tmp_path):
    rng = np.random.default_rng(2)
    vs = VectorStore(tmp_path / "vectors")
    assert vs.shards("m1", 320) == [] and vs.scored_shas("m1", 320) == set()
    path = vs.write_shard(detections_table([("a", _det(rng, 2))], "m1", 320))
    other = vs.write_shard(detections_table([("a", _det(rng, 2))], "m1", 320))
    assert path != other and path.name.startswith("m1-320--") and path.suffix == ".parquet"
    assert not [p for p in (tmp_path / "vectors").iterdir() if p.name.startswith(TMP_PREFIX)]
    assert shard_info(path) == ("m1", 320, "", 1)
    assert pq.read_schema(path).names == DETECTIONS_SCHEMA.names
    with pytest.raises(ValueError, match="one"):
        vs.write_shard(pa.concat_tables([detections_table([("a", _det(rng, 1))], "m1", 320),
                                         detections_table([("b", _det(rng, 1))], "m2", 320)]))
    assert len(list((tmp_path / "vectors").iterdir())) == 2  # the refused write left nothing behind


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    vs = VectorStore(tmp_path / "vectors")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        vs.write_shard(detections_table([("a", _det(rng, 2))], "m1", 320))
    assert list((tmp_path / "vectors").iterdir()) == []


def test_scored_pool_reads_in_the_asked_order_and_the_last_shard_wins(tmp_path):
    rng = np.random.default_rng(4)
    vs = VectorStore(tmp_path / "vectors")
    first = {s: _det(rng, int(rng.integers(0, 4)), size=(64 + i, 48)) for i, s in enumerate("abcde")}
    vs.write_shard(detections_table(list(first.items()) + [("f", "unreadable")], "m", 64))
    time.sleep(0.01)  # without an index the files are ordered by time
    newer = _det(rng, 2)
    vs.write_shard(detections_table([("c", newer)], "m", 64))
    vs.write_shard(detections_table([("a", _det(rng, 1))], "other-model", 64))  # another key: not read
    assert vs.scored_shas("m", 64) == set("abcdef")
    assert vs.scored_shas("m", 64, errors=False) == set("abcde")
    want = {**first, "c": newer}
    order = ["e", "x", "c", "a", "f", "b"]  # x: never scored, f: an error row; both left out
    pool = vs.scored_pool("m", 64, "", order, np.array([50, 51, 52, 53, 54, 55]), n_classes=3)
    kept = ["e", "c", "a", "b"]
    assert pool.image_ids.tolist() == [50, 52, 53, 55]
    assert pool.boxes_per_image.tolist() == [want[s].n_boxes for s in kept]
    assert np.array_equal(pool.embeddings, np.stack([want[s].embedding for s in kept]))
    assert pool.embeddings.dtype == np.float32
    assert np.array_equal(pool.class_scores, np.concatenate([want[s].class_scores for s in kept]))
    scale = np.concatenate([np.tile([want[s].width, want[s].height] * 2, (want[s].n_boxes, 1)) for s in kept])
    assert np.allclose(pool.boxes, np.concatenate([want[s].boxes for s in kept]) / scale, rtol=0, atol=1e-7)
    assert pool.max_candidate_score.tolist() == [want[s].max_candidate_score for s in kept]
    found = vs.detections(["c", "f", "x"], "m", 64)
    assert set(found) == {"c", "f"} and found["f"] == "unreadable"
    _same(found["c"], newer)
    with pytest.raises(ValueError, match="classes"):
        vs.scored_pool("m", 64, "", order, n_classes=4)
    empty = vs.scored_pool("m", 64, "", ["x"], n_classes=3)
    assert len(empty) == 0 and empty.class_scores.shape == (0, 3) and empty.boxes.shape == (0, 4)


def test_compact_keeps_the_last_copy_and_streams_into_bounded_files(tmp_path):
    rng = np.random.default_rng(5)
    vs = VectorStore(tmp_path / "vectors")
    dets = {f"s{i:02d}": _det(rng, 1) for i in range(10)}
    paths = [vs.write_shard(detections_table(list(dets.items())[:6], "m", 64))]
    later = {"s01": _det(rng, 2), "s09": _det(rng, 3)}
    paths.append(vs.write_shard(detections_table(list(later.items()), "m", 64)))
    paths.append(vs.write_shard(detections_table(list(dets.items())[6:9], "m", 64)))
    merged = vs.compact(paths, max_rows=4)
    assert [n for _, n in merged] == [4, 4, 2]  # 11 rows, 10 images: s01's first copy is gone
    got = dict(row for path, _ in merged for row in table_detections(pq.read_table(path)))
    assert set(got) == set(dets)
    for sha in dets:
        _same(got[sha], later.get(sha, dets[sha]))
    assert all(p.exists() for p in paths)  # the caller swaps the index, then removes the old files


def test_orphans_are_files_without_a_row_old_enough(tmp_path):
    rng = np.random.default_rng(6)
    vs = VectorStore(tmp_path / "vectors")
    kept = vs.write_shard(detections_table([("a", _det(rng, 1))], "m", 64))
    orphan = vs.write_shard(detections_table([("b", _det(rng, 1))], "m", 64))
    tmp = vs.root / f"{TMP_PREFIX}x.parquet"
    tmp.write_bytes(b"half")
    staging = vs.root / "ray-run" / "part-0.parquet"
    staging.parent.mkdir()
    staging.write_bytes(b"a writer's own")
    assert vs.orphans({kept}, min_age_s=3600) == []  # too young: a write may be in progress
    old = time.time() - 7200
    for p in (orphan, tmp, staging):
        os.utime(p, (old, old))
    assert vs.orphans({kept}, min_age_s=3600) == sorted([orphan, tmp])


def test_an_index_decides_which_shards_count(tmp_path):
    rng = np.random.default_rng(7)
    registered: list[Path] = []
    vs = VectorStore(tmp_path / "vectors", index=lambda m, s, v: [p for p in registered])
    done = vs.write_shard(detections_table([("a", _det(rng, 1))], "m", 64))
    vs.write_shard(detections_table([("b", _det(rng, 1))], "m", 64))  # written, never registered
    registered.append(done)
    assert vs.scored_shas("m", 64) == {"a"}
    assert len(vs.scored_pool("m", 64, "", ["a", "b"], n_classes=3)) == 1


# -- the store: SQLite keeps the shard index, the vectors live in the files -------------------------------------------


def _store(tmp_path: Path, n_images: int = 6):
    from labelwise.store import Store

    store = Store(tmp_path / "labelwise.db")
    ids = [store.add_image(f"{i:064x}", f"/p/{i}.png", 64, 48, phash=i + 1, dhash=2 * i + 1)[0]
           for i in range(n_images)]
    return store, ids


def test_put_detections_writes_a_shard_then_its_row(tmp_path):
    store, ids = _store(tmp_path)
    rng = np.random.default_rng(8)
    store.start_round(1, "train")
    store.start_round(2, "score")
    dets = {f"{i:064x}": _det(rng, i % 3) for i in range(4)}
    store.put_detections("m", 64, list(dets.items()))
    store.put_detections("m", 64, [(f"{5:064x}", "unreadable")], "flip", round_no=1, engine="ray")
    shards = store.shards()
    assert [(s["model_hash"], s["imgsz"], s["variant"], s["round"], s["rows"], s["engine"]) for s in shards] == [
        ("m", 64, "", 2, 4, "local"), ("m", 64, "flip", 1, 1, "ray")]
    assert all(s["path"].parent == tmp_path / "vectors" and s["path"].exists() for s in shards)
    assert store.scored_shas("m", 64) == set(dets) and store.scored_shas("m", 64, "flip") == {f"{5:064x}"}
    _same(store.detections(f"{1:064x}", "m", 64), dets[f"{1:064x}"])
    assert store.detections(f"{5:064x}", "m", 64, "flip") is None  # an error row has no detections
    assert set(store.detections_many(list(dets) + ["nope"], "m", 64)) == set(dets)
    pool = store.scored_pool(np.array([ids[3], 999, ids[0], ids[5], ids[1]]), "m", 64, n_classes=3)
    assert pool.image_ids.tolist() == [ids[3], ids[0], ids[1]]
    assert pool.hashes.tolist() == [[4, 7], [1, 1], [2, 3]]
    assert pool.boxes_per_image.tolist() == [0, 0, 1]
    store.put_detections("m", 64, [])  # nothing to write: no shard
    assert len(store.shards()) == 2
    store.close()


def test_scored_pool_has_no_hashes_when_an_image_lacks_them(tmp_path):
    store, ids = _store(tmp_path, 2)
    extra, _ = store.add_image("f" * 64, "/p/new.png", 64, 48)
    rng = np.random.default_rng(9)
    store.put_detections("m", 64, [(f"{0:064x}", _det(rng, 1)), ("f" * 64, _det(rng, 2))])
    assert store.scored_pool(np.array([ids[0], extra]), "m", 64).hashes is None
    assert store.scored_pool(np.array([ids[0]]), "m", 64).hashes.tolist() == [[1, 1]]
    many = np.array([ids[0]] * 1 + list(range(1000, 21_000)))  # the one-scan path of a large request
    assert store.scored_pool(many, "m", 64).image_ids.tolist() == [ids[0]]
    store.close()


def test_a_shard_without_a_row_is_ignored_and_swept_when_old(tmp_path):
    from labelwise.store import Store

    store, _ = _store(tmp_path)
    rng = np.random.default_rng(10)
    store.put_detections("m", 64, [(f"{0:064x}", _det(rng, 1))])
    # a write interrupted between its file and its row
    orphan = store.vectors.write_shard(detections_table([(f"{1:064x}", _det(rng, 1))], "m", 64))
    assert store.scored_shas("m", 64) == {f"{0:064x}"}
    assert len(store.scored_pool(np.arange(1, 7), "m", 64)) == 1
    store.close()
    Store(tmp_path / "labelwise.db").close()
    assert orphan.exists()  # young: perhaps a write in progress in another process
    old = time.time() - 7200
    os.utime(orphan, (old, old))
    store = Store(tmp_path / "labelwise.db")
    assert not orphan.exists() and len(store.shards()) == 1 and store.shards()[0]["path"].exists()
    store.close()


def test_a_failed_registration_removes_its_file(tmp_path, monkeypatch):
    from labelwise.store import Store

    store, _ = _store(tmp_path)
    rng = np.random.default_rng(11)

    def refuse(self, path):
        raise RuntimeError("database is locked")

    monkeypatch.setattr(Store, "_relative", refuse)
    with pytest.raises(RuntimeError, match="locked"):
        store.put_detections("m", 64, [(f"{0:064x}", _det(rng, 1))])
    assert store.shards() == [] and list((tmp_path / "vectors").glob("*.parquet")) == []
    store.close()


def test_drop_detections_forgets_one_model_rows_first_then_files(tmp_path):
    store, _ = _store(tmp_path)
    rng = np.random.default_rng(12)
    store.put_detections("m1", 64, [(f"{0:064x}", _det(rng, 1))])
    store.put_detections("m1", 64, [(f"{0:064x}", _det(rng, 1))], "flip")
    store.put_detections("m2", 64, [(f"{0:064x}", _det(rng, 1))])
    files = {s["model_hash"]: s["path"] for s in store.shards()}
    store.drop_detections("m1")
    assert [s["model_hash"] for s in store.shards()] == ["m2"]
    assert store.scored_shas("m1", 64) == set() and store.scored_shas("m2", 64) == {f"{0:064x}"}
    assert not files["m1"].exists() and files["m2"].exists()
    store.close()


def test_chunked_writes_are_merged_in_size_tiers_keeping_the_newest_copy(tmp_path):
    from labelwise.store import COMPACT_FANOUT

    store, ids = _store(tmp_path, 10)
    rng = np.random.default_rng(13)
    shas = [f"{i:064x}" for i in range(10)]
    want: dict[str, ImageDetections] = {}
    for k in range(COMPACT_FANOUT ** 2 + 1):  # one image per write, as scoring's chunks but smaller
        sha = shas[k % 10]
        want[sha] = _det(rng, int(rng.integers(0, 3)))
        store.put_detections("m", 64, [(sha, want[sha])])
    rows = [s["rows"] for s in store.shards()]
    assert rows == [COMPACT_FANOUT ** 2 - 54, 1]  # 64 writes -> 8 -> 1 file, the 65th apart; 54 older copies gone
    assert len(list((tmp_path / "vectors").iterdir())) == 2  # the merged files' sources are deleted
    got = store.detections_many(shas, "m", 64)
    for sha in shas:
        _same(got[sha], want[sha])
    pool = store.scored_pool(np.array(ids), "m", 64, n_classes=3)
    assert np.array_equal(pool.embeddings, np.stack([want[s].embedding for s in shas]))
    assert store.compact_detections("m", 64) == 2 and [s["rows"] for s in store.shards()] == [10]
    assert store.compact_detections("m", 64) == 0
    store.close()


def test_register_shards_takes_files_another_writer_made(tmp_path):
    store, ids = _store(tmp_path)
    rng = np.random.default_rng(14)
    run = tmp_path / "vectors" / "ray-run-1"
    run.mkdir(parents=True)
    dets = {f"{i:064x}": _det(rng, 2) for i in range(3)}
    # as Ray Data writes them: its own file names, the schema's columns
    pq.write_table(detections_table(list(dets.items())[:2], "m", 64), run / "0_000000_000000.parquet")
    pq.write_table(detections_table(list(dets.items())[2:] + [(f"{4:064x}", "decode failed")], "m", 64),
                   run / "1_000000_000000.parquet")
    store.register_shards(sorted(run.glob("*.parquet")), round_no=3, engine="ray")
    assert [(s["rows"], s["round"], s["engine"]) for s in store.shards()] == [(2, 3, "ray"), (1 + 1, 3, "ray")]
    assert store.scored_shas("m", 64) == set(dets) | {f"{4:064x}"}
    assert store.scored_pool(np.array(ids), "m", 64).image_ids.tolist() == ids[:3]
    outside = tmp_path / "elsewhere.parquet"
    pq.write_table(detections_table([(f"{0:064x}", _det(rng, 1))], "m", 64), outside)
    with pytest.raises(ValueError, match="under"):
        store.register_shards([outside])
    pq.write_table(pa.table({"sha256": ["x"]}), run / "other.parquet")
    with pytest.raises(ValueError, match="not a detections shard"):
        store.register_shards([run / "other.parquet"])
    assert len(store.shards()) == 2
    store.close()


# -- migration of a workspace written by the schema-4 store (BLOBs in SQLite) -----------------------------------------

FIXTURE = Path(__file__).parent / "fixtures" / "workspace-schema4.zip"


def _unzip_fixture(tmp_path: Path) -> tuple[Path, dict]:
    import json
    import zipfile

    with zipfile.ZipFile(FIXTURE) as zf:
        zf.extractall(tmp_path)
    root = tmp_path / "ws"
    return root, json.loads((root / "expected.json").read_text())


def _array(spec: dict | None) -> np.ndarray | None:
    return None if spec is None else np.array(spec["data"], dtype=spec["dtype"]).reshape(spec["shape"])


def _legacy_state(db: Path) -> tuple[str, int]:
    import sqlite3

    with sqlite3.connect(db) as conn:
        version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
        has = conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name='detections'").fetchone()[0]
        rows = conn.execute("SELECT COUNT(*) FROM detections").fetchone()[0] if has else -1
    conn.close()
    return version, rows


def _check_against_the_blobs(store, expected: dict, imgsz: int = 32) -> None:
    """Everything the schema-4 store returned (recorded in the fixture when it was made) comes back the same."""
    pool_ids = np.array([img.id for img in store.images(split="pool")], dtype=np.int64)
    assert expected["variants"]  # a plain and a flip pass
    for key, want in expected["variants"].items():
        model_hash, variant = key.split("/")
        assert sorted(store.scored_shas(model_hash, imgsz, variant)) == want["scored_shas"]
        pool = store.scored_pool(pool_ids, model_hash, imgsz, variant, n_classes=2)
        for name, spec in want["scored_pool"].items():
            got, ref = getattr(pool, name), _array(spec)
            if ref is None:
                assert got is None, name
            else:
                assert got.dtype == ref.dtype and got.shape == ref.shape and np.array_equal(got, ref), (key, name)
        found = store.detections_many(list(want["detections"]), model_hash, imgsz, variant)
        for sha, spec in want["detections"].items():
            if spec is None:
                assert sha not in found and store.detections(sha, model_hash, imgsz, variant) is None
                continue
            det = found[sha]
            for name in ("boxes", "class_scores", "embedding"):
                ref = _array(spec[name])
                assert getattr(det, name).dtype == ref.dtype and np.array_equal(getattr(det, name), ref), name
            ref = _array(spec["box_features"])
            assert det.box_features.dtype == np.float16 and np.array_equal(det.box_features.ravel(), ref.ravel())
            assert det.box_features.shape[0] == ref.shape[0]
            # the BLOB table kept it as a REAL; the schema keeps float32, as selection always read it
            assert det.max_candidate_score == float(np.float32(spec["max_candidate_score"]))
            assert (det.width, det.height) == (spec["width"], spec["height"])
    assert store.counts() == expected["counts"]
    assert [[r.round, r.step, r.model_hash] for r in store.rounds()] == expected["rounds"]
    assert sorted(img.id for img, _ in store.labels("pool")) == expected["labeled"]


def test_a_workspace_written_by_the_schema4_store_migrates_on_first_open(tmp_path):
    from labelwise.store import SCHEMA_VERSION, Store

    root, expected = _unzip_fixture(tmp_path)
    db = root / "labelwise.db"
    assert _legacy_state(db) == ("4", 16)  # 9 plain rows, 7 flip rows
    assert not (root / "vectors").exists()
    store = Store(db)
    assert _legacy_state(db) == (str(SCHEMA_VERSION), -1)  # the BLOB table is gone
    shards = store.shards()
    model_hash = expected["rounds"][-1][2]
    assert [(s["model_hash"], s["imgsz"], s["variant"], s["round"], s["rows"], s["engine"]) for s in shards] == [
        (model_hash, 32, "", 2, 9, "migrated"), (model_hash, 32, "flip", 2, 7, "migrated")]
    assert sorted(p.name for p in (root / "vectors").iterdir()) == sorted(s["path"].name for s in shards)
    _check_against_the_blobs(store, expected)
    store.close()

    before = {p: p.stat().st_mtime_ns for p in (root / "vectors").iterdir()}
    store = Store(db)  # opening again changes nothing
    assert store.shards() == shards
    assert {p: p.stat().st_mtime_ns for p in (root / "vectors").iterdir()} == before
    _check_against_the_blobs(store, expected)
    store.close()


def test_a_migrated_workspace_selects_the_same_batch_with_the_same_scores(tmp_path):
    from labelwise.loop import Workspace

    root, expected = _unzip_fixture(tmp_path)
    ws = Workspace(root)
    status = ws.status()
    assert (status.round, status.step) == (2, "annotate") and status.counts == expected["counts"]
    ws.select()  # the round's batch again (allowed while none of it is labeled): consistency, plain + flip passes
    again = [[p["image_id"], p["rank"], p["score"], p["components"], p["reason"]] for p in ws.store.selection(2)]
    assert again == expected["selection_2"]
    ws.store.close()


def test_a_migration_interrupted_before_its_transaction_leaves_the_old_store_and_runs_again(tmp_path, monkeypatch):
    import labelwise.store as store_module
    from labelwise.store import SCHEMA_VERSION, Store

    root, expected = _unzip_fixture(tmp_path)
    db = root / "labelwise.db"

    def killed() -> str:
        raise KeyboardInterrupt("killed between the files and the transaction")

    # as `kill -9` would leave it: the shard files written, nothing deleted, no transaction
    monkeypatch.setattr(store_module, "now", killed)
    monkeypatch.setattr(VectorStore, "remove", lambda self, paths: None)
    with pytest.raises(KeyboardInterrupt):
        Store(db)
    monkeypatch.undo()
    assert _legacy_state(db) == ("4", 16)  # the old store, whole
    left = sorted((root / "vectors").iterdir())
    assert len(left) == 2  # the interrupted attempt's files: orphans

    store = Store(db)  # the next open migrates again
    assert _legacy_state(db) == (str(SCHEMA_VERSION), -1)
    registered = sorted(s["path"] for s in store.shards())
    assert len(registered) == 2 and not set(registered) & set(left)
    _check_against_the_blobs(store, expected)  # the orphans are not read
    assert store.sweep_orphans(min_age_s=0) == left
    assert sorted((root / "vectors").iterdir()) == registered
    _check_against_the_blobs(store, expected)
    store.close()


def test_a_failed_shard_write_during_migration_removes_what_it_wrote(tmp_path, monkeypatch):
    from labelwise.store import Store

    root, expected = _unzip_fixture(tmp_path)
    db = root / "labelwise.db"
    real = VectorStore.write_shards
    calls = []

    def second_fails(self, tables, max_rows):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("No space left on device")
        return real(self, tables, max_rows=max_rows)

    monkeypatch.setattr(VectorStore, "write_shards", second_fails)
    with pytest.raises(OSError, match="No space"):
        Store(db)
    monkeypatch.undo()
    assert _legacy_state(db) == ("4", 16) and list((root / "vectors").iterdir()) == []
    store = Store(db)
    _check_against_the_blobs(store, expected)
    store.close()


def test_scored_pool_gathers_right_when_other_rows_misalign_the_buffers(tmp_path):
    rng = np.random.default_rng(15)
    vs = VectorStore(tmp_path / "vectors")
    dets = {s: _det(rng, int(rng.integers(0, 4))) for s in "abc"}
    table = detections_table([("a", dets["a"]), ("x", "failed"), ("b", dets["b"]), ("c", dets["c"])], "m", 64)
    # another writer's error row that still carries values (3 embedding values, 5 box values): the units of the
    # rows after it no longer start at multiples of their width in the column's buffer
    junk = {"boxes": [1.0] * 5, "embedding": [0.5] * 3}
    columns = {}
    for name in DETECTIONS_SCHEMA.names:
        values = table.column(name).to_pylist()
        if name in junk:
            values[1] = junk[name]
        columns[name] = pa.array(values, DETECTIONS_SCHEMA.field(name).type)
    vs.write_shard(pa.table(columns, schema=DETECTIONS_SCHEMA))
    pool = vs.scored_pool("m", 64, "", ["c", "b", "a"], n_classes=3)
    assert pool.boxes_per_image.tolist() == [dets[s].n_boxes for s in "cba"]
    assert np.array_equal(pool.embeddings, np.stack([dets[s].embedding for s in "cba"]))
    assert np.array_equal(pool.class_scores, np.concatenate([dets[s].class_scores for s in "cba"]))
    vs.write_shard(detections_table([("d", _det(rng, 1, d=9))], "m", 64))
    with pytest.raises(ValueError, match="lengths"):
        vs.scored_pool("m", 64, "", ["a", "d"], n_classes=3)


def test_scored_pool_reads_in_batches_of_row_groups_with_the_same_result(tmp_path, monkeypatch):
    import labelwise.vectors as vectors

    monkeypatch.setattr(vectors, "ROW_GROUP_ROWS", 3)
    rng = np.random.default_rng(16)
    vs = VectorStore(tmp_path / "vectors")
    dets = {f"s{i:02d}": _det(rng, int(rng.integers(0, 4))) for i in range(20)}
    path = vs.write_shard(detections_table(list(dets.items())[:14], "m", 64))
    assert pq.ParquetFile(path).metadata.num_row_groups == 5
    vs.write_shard(detections_table(list(dets.items())[14:] + [("s03", dets["s03"])], "m", 64))
    order = [f"s{i:02d}" for i in (19, 2, 7, 8, 13, 0, 3, 16)]
    whole = vs.scored_pool("m", 64, "", order, n_classes=3)
    for batch_rows in (1, 4, 7):
        part = vs.scored_pool("m", 64, "", order, n_classes=3, batch_rows=batch_rows)
        for name in ("image_ids", "embeddings", "box_offsets", "class_scores", "boxes", "max_candidate_score"):
            assert np.array_equal(getattr(part, name), getattr(whole, name)), (batch_rows, name)
    assert np.array_equal(whole.embeddings, np.stack([dets[s].embedding for s in order]))
    assert np.array_equal(whole.class_scores, np.concatenate([dets[s].class_scores for s in order]))
