"""Near duplicates from perceptual hashes: the pure distances, hashes at ingest, the store's columns and migration,
and the synthetic bursts found while different scenes are not."""

from __future__ import annotations

import sqlite3
from itertools import combinations
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image

from labelwise.detections import ImageDetections
from labelwise.loop import Workspace
from labelwise.neardup import (
    DEFAULT_MAX_HAMMING,
    RULES,
    _popcount64,
    bits_to_uint64,
    combined_distance,
    hamming,
    is_hash_duplicate,
    nearest_hash_duplicate,
)
from labelwise.pool import ImageFile, backfill_hashes, inspect_image
from labelwise.store import SCHEMA_VERSION, STORE_NAME, Store
from labelwise.synthetic import ScenarioSpec, generate, read_scenarios

U64_MAX = (1 << 64) - 1


def _hashes(*rows: tuple[int, int]) -> np.ndarray:
    return np.array(rows, dtype=np.uint64).reshape(-1, 2)


def _image(path: Path, seed: int, size=(64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _imagehash_pair(path: Path) -> tuple[int, int]:
    """The hashes straight from imagehash's own hex strings, independent of labelwise's bit packing."""
    with Image.open(path) as img:
        return int(str(imagehash.phash(img)), 16), int(str(imagehash.dhash(img)), 16)


# -- pure distances --------------------------------------------------------------------------------------------------


def test_hamming_counts_differing_bits_and_broadcasts():
    assert hamming(np.uint64(0), np.uint64(U64_MAX)) == 64
    assert hamming(np.uint64(0b1011), np.uint64(0b0001)) == 2
    assert hamming(np.uint64(1 << 63), np.uint64(0)) == 1
    table = hamming(np.array([0, 1, 3], dtype=np.uint64)[:, None], np.array([0, 7], dtype=np.uint64)[None, :])
    assert table.tolist() == [[0, 3], [1, 2], [2, 1]]


def test_portable_popcount_matches_python_on_random_words():
    words = np.random.default_rng(0).integers(0, 1 << 64, 2000, dtype=np.uint64, endpoint=False)
    words[:3] = [0, U64_MAX, 1 << 63]
    assert _popcount64(words).tolist() == [bin(int(w)).count("1") for w in words]


def test_bits_pack_row_major_most_significant_first_like_imagehash_hex(tmp_path):
    bits = np.zeros((8, 8), dtype=bool)
    bits[0, 0] = True
    bits[7, 7] = True
    assert bits_to_uint64(bits) == (1 << 63) | 1
    with Image.open(_image(tmp_path / "a.png", 3)) as img:
        h = imagehash.phash(img)
    assert bits_to_uint64(h.hash) == int(str(h), 16)
    with pytest.raises(ValueError, match="64 bits"):
        bits_to_uint64(np.zeros(63, dtype=bool))


def test_rules_combine_the_two_hash_distances():
    a, b = _hashes((0, 0)), _hashes((0b111, 0b1))  # pHash 3 bits apart, dHash 1
    got = {rule: int(combined_distance(a, b, rule)[0]) for rule in RULES}
    assert got == {"phash": 3, "dhash": 1, "both": 3, "either": 1, "sum": 4}
    with pytest.raises(ValueError, match="unknown near-duplicate rule"):
        combined_distance(a, b, "mean")


def test_nearest_hash_duplicate_picks_the_nearest_reference_within_the_limit():
    refs = _hashes((0, 0), (U64_MAX, U64_MAX), (0xFF, 0xFF))
    hashes = _hashes(
        (0b1, 0b11),  # 1 and 2 bits from ref 0: under "both" at distance 2
        (U64_MAX ^ 0xF, U64_MAX),  # 4 bits from ref 1 in pHash only
        (0xFFFF_0000_0000, 0),  # 16 pHash bits from ref 0, 24 from ref 2: nearest is 0, but too far
        (0xF, 0xF),  # 4 bits from both ref 0 and ref 2: a tie goes to the lower row
    )
    index, distance = nearest_hash_duplicate(hashes, refs, max_distance=4)
    assert index.tolist() == [0, 1, -1, 0]
    assert distance.tolist() == [2, 4, 16, 4]
    assert is_hash_duplicate(hashes, refs, 4).tolist() == [True, True, False, True]
    assert nearest_hash_duplicate(hashes, refs, max_distance=1)[0].tolist() == [-1, -1, -1, -1]
    empty_index, empty_distance = nearest_hash_duplicate(hashes, _hashes(), 4)
    assert empty_index.tolist() == [-1] * 4 and empty_distance.tolist() == [-1] * 4
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        nearest_hash_duplicate(hashes[:, 0], refs, 4)


@pytest.mark.parametrize("rule", RULES)
def test_chunked_search_equals_brute_force_over_many_references(rule):
    rng = np.random.default_rng(1)
    refs = rng.integers(0, 1 << 64, (1 << 20, 2), dtype=np.uint64, endpoint=False)  # 2 rows per chunk
    hashes = refs[[5, 70_000, 1_000_000, 9, 3]] ^ np.array([[1, 0], [3, 3], [0, 255], [0, 0], [1 << 40, 1]],
                                                             dtype=np.uint64)
    index, distance = nearest_hash_duplicate(hashes, refs, max_distance=4, rule=rule)
    full = combined_distance(hashes[:, None, :], refs[None, :, :], rule)
    assert distance.tolist() == full.min(axis=1).tolist()
    assert index.tolist() == np.where(full.min(axis=1) <= 4, full.argmin(axis=1), -1).tolist()
    if rule == "both":
        assert index.tolist() == [5, 70_000, -1, 9, 3]


# -- hashes at ingest and in the store -------------------------------------------------------------------------------


def test_ingest_stores_the_hashes_and_scored_pool_returns_them(tmp_path):
    paths = [_image(tmp_path / "pool" / f"{k}.png", k) for k in range(3)]
    ws = Workspace.create(tmp_path / "ws", images=[tmp_path / "pool"], classes=["x"], model="yolo11n.yaml")
    ws.ingest_sources(progress=False)
    rows = {img.path.name: img.id for img in ws.store.images()}
    ids = [rows["2.png"], rows["0.png"], rows["1.png"]]
    expected = np.array([_imagehash_pair(paths[2]), _imagehash_pair(paths[0]), _imagehash_pair(paths[1])],
                        dtype=np.uint64)
    assert np.array_equal(ws.store.image_hashes(ids), expected)
    assert ws.store.images_without_hashes() == []

    detections = ImageDetections(boxes=np.array([[1, 2, 10, 12]], np.float32),
                                 class_scores=np.array([[0.7]], np.float32),
                                 box_features=np.zeros((1, 4), np.float16), embedding=np.ones(8, np.float32),
                                 max_candidate_score=0.7, width=64, height=48)
    shas = {img.id: img.sha256 for img in ws.store.images()}
    ws.store.put_detections("model", 64, [(shas[i], detections) for i in ids])
    pool = ws.store.scored_pool(np.array(ids), "model", 64, n_classes=1)
    assert pool.image_ids.tolist() == ids
    assert pool.hashes is not None and pool.hashes.dtype == np.uint64
    assert np.array_equal(pool.hashes, expected)
    assert np.array_equal(pool.subset(np.array([2, 0])).hashes, expected[[2, 0]])

    with ws.store.transaction() as c:  # an image whose hashes are not computed yet
        c.execute("UPDATE images SET phash=NULL WHERE id=?", (ids[1],))
    assert ws.store.scored_pool(np.array(ids), "model", 64, n_classes=1).hashes is None
    with pytest.raises(LookupError, match="0.png"):
        ws.store.image_hashes(ids)
    with pytest.raises(KeyError, match="no image with id 999"):
        ws.store.image_hashes([999])


def test_hashes_with_the_top_bit_set_survive_sqlites_signed_integers(tmp_path):
    store = Store(tmp_path / STORE_NAME)
    image_id, _ = store.add_image("a" * 64, "/x/a.png", 8, 8, phash=U64_MAX, dhash=1 << 63)
    other, _ = store.add_image("b" * 64, "/x/b.png", 8, 8)
    assert store.images_without_hashes() == [(other, Path("/x/b.png"))]
    store.set_image_hashes([(other, (1 << 63) - 1, 0)])
    assert store.image_hashes([image_id, other]).tolist() == [[U64_MAX, 1 << 63], [(1 << 63) - 1, 0]]
    with pytest.raises(ValueError, match="2\\*\\*64"):
        store.add_image("c" * 64, "/x/c.png", 8, 8, phash=1 << 64, dhash=0)
    store.close()


def test_a_store_made_before_hashes_migrates_on_open_and_backfills(tmp_path):
    good = _image(tmp_path / "pool" / "good.png", 4)
    gone = tmp_path / "pool" / "gone.png"
    db = tmp_path / STORE_NAME
    Store(db).close()
    # Make it exactly what the previous labelwise left: no hash columns, schema version 1, images already added.
    conn = sqlite3.connect(db)
    conn.execute("ALTER TABLE images DROP COLUMN phash")
    conn.execute("ALTER TABLE images DROP COLUMN dhash")
    conn.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    conn.executemany("INSERT INTO images(sha256, path, width, height, added_at) VALUES (?, ?, 64, 48, 'then')",
                     [("1" * 64, str(good)), ("2" * 64, str(gone))])
    conn.commit()
    assert {r[1] for r in conn.execute("PRAGMA table_info(images)")}.isdisjoint({"phash", "dhash"})
    conn.close()

    store = Store(db)
    columns = {r["name"] for r in store.conn.execute("PRAGMA table_info(images)")}
    assert {"phash", "dhash"} <= columns
    assert store.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    assert [path for _, path in store.images_without_hashes()] == [good, gone]
    with pytest.raises(LookupError, match="no perceptual hashes"):
        store.image_hashes([1])

    failed = backfill_hashes(store)
    assert len(failed) == 1 and failed[0][0] == str(gone) and "gone.png" in failed[0][1]
    assert store.image_hashes([1]).tolist() == [list(_imagehash_pair(good))]
    assert store.images_without_hashes() == [(2, gone)]
    store.close()
    Store(db).close()  # opening a migrated store again changes nothing and does not fail


def test_readding_the_same_bytes_fills_hashes_missing_from_an_old_row(tmp_path):
    path = _image(tmp_path / "a.png", 5)
    found = inspect_image(path)
    assert isinstance(found, ImageFile)
    store = Store(tmp_path / STORE_NAME)
    image_id, _ = store.add_image(found.sha256, str(path), found.width, found.height)
    _, created = store.add_image(found.sha256, str(tmp_path / "copy.png"), found.width, found.height,
                                 phash=found.phash, dhash=found.dhash)
    assert not created
    assert store.image_hashes([image_id]).tolist() == [[found.phash, found.dhash]]
    store.close()


# -- the synthetic bursts ---------------------------------------------------------------------------------------------


def test_burst_frames_are_found_and_different_scenes_are_not(tmp_path):
    root = tmp_path / "synthetic"
    generate(root, ScenarioSpec(n_train=150, n_val=0, image_size=128, seed=11))
    rows = [r for r in read_scenarios(root).values() if r["split"] == "train"]
    found = [inspect_image(root / r["file"]) for r in rows]
    hashes = np.array([(f.phash, f.dhash) for f in found], dtype=np.uint64)
    burst = [r["burst_id"] for r in rows]

    true_pairs = [(i, j) for i, j in combinations(range(len(rows)), 2) if burst[i] is not None and burst[i] == burst[j]]
    distance = combined_distance(hashes[:, None, :], hashes[None, :, :])
    found_pairs = [(i, j) for i, j in true_pairs if distance[i, j] <= DEFAULT_MAX_HAMMING]
    assert len(true_pairs) > 50
    assert len(found_pairs) / len(true_pairs) >= 0.9

    # One frame per burst plus every single image: all different scenes, none may be another's duplicate.
    first_frames = {b: k for k, b in reversed(list(enumerate(burst))) if b is not None}
    scenes = sorted(first_frames.values()) + [k for k, b in enumerate(burst) if b is None]
    daylight = [k for k in scenes if rows[k]["scenario"] == "daylight"]
    assert len(daylight) > 40
    scene_hashes = hashes[scenes]
    for k in range(len(scenes)):
        others = np.delete(scene_hashes, k, axis=0)
        assert not is_hash_duplicate(scene_hashes[k:k + 1], others)[0], rows[scenes[k]]["file"]
