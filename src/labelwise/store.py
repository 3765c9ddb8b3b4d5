"""The SQLite store: the single source of truth of a workspace.

Everything that must survive a crash lives here: images (by content hash), labels (and every earlier version of
them), rounds and the step each is at, selections with every score component, quarantined files, the annotation
backends' bookkeeping, and the index of the vector shards. WAL mode, and every change inside one transaction, so
`kill -9` at any moment leaves the store as it was before the interrupted step or after it, never between.

The cached detections (boxes, class scores, box features, embeddings) are not in SQLite: they are Parquet shards
under `<workspace>/vectors/` (labelwise.vectors), and the table `shards` records which files are finished and which
round's scores each holds. A shard file is written (atomically) first and registered after; a file without a row
is ignored, and swept once it is older than ORPHAN_GRACE_S. `put_detections`, `scored_shas`, `detections`,
`scored_pool` and `drop_detections` keep the signatures they had when the vectors were BLOBs here.

A store made before (schema 4, the BLOB table `detections`) migrates when it is first opened: its rows are written
as shards, then one transaction registers them, drops the table and sets the schema version. A crash before that
transaction leaves the old table in place (the files written so far are orphans) and the next open migrates again.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from labelwise.detections import ImageDetections, ScoredPool
from labelwise.vectors import COMPACT_ROWS, VECTORS_DIR, VectorStore, detections_table

STORE_NAME = "labelwise.db"
# 2: images.phash, images.dhash; 3: quarantine.sha256, quarantine.label_rejected; 4: held; 5: the detections BLOB
# table became Parquet shards under vectors/ and the `shards` index
SCHEMA_VERSION = 5
LEGACY_DETECTIONS = "detections"  # the schema-4 BLOB table, migrated on open (see Store._migrate_vectors)
ORPHAN_GRACE_S = 3600.0  # a shard file without a row is deleted on open once it is this old (a write in progress
#                          is never that old between its file and its row)
COMPACT_FANOUT = 8  # shards of one size tier merged together (see Store._compact_tiers)
_LEGACY_CHUNK = 20_000  # BLOB rows read at a time when migrating

#: Rows of `images` read at a time by `scored_pool` (held as Python objects only that long).
_FETCH_ROWS = 65_536

# SQLite INTEGER is a signed 64-bit integer; the unsigned 64-bit perceptual hashes are stored as the signed integer
# with the same bits (two's complement) and read back with `.view(np.uint64)`.
_TWO_63 = 1 << 63

HOLD_KINDS = ("rejected", "qa")  # why an image is held out of training (see the table `held`)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images(
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    split TEXT NOT NULL DEFAULT 'pool' CHECK (split IN ('pool', 'val')),
    state TEXT NOT NULL DEFAULT 'unlabeled' CHECK (state IN ('unlabeled', 'selected', 'labeled')),
    added_at TEXT NOT NULL,
    phash INTEGER,
    dhash INTEGER
);
CREATE INDEX IF NOT EXISTS images_state ON images(split, state);
CREATE TABLE IF NOT EXISTS image_paths(path TEXT PRIMARY KEY, image_id INTEGER NOT NULL REFERENCES images(id));
-- label_rejected: the image was readable but its label file was refused. sha256: the image's, set only for files
-- held out because of a refused label (its own, or that of the same bytes under another name)
CREATE TABLE IF NOT EXISTS quarantine(path TEXT PRIMARY KEY, reason TEXT NOT NULL, at TEXT NOT NULL,
                                      sha256 TEXT, label_rejected INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS labels(
    image_id INTEGER PRIMARY KEY REFERENCES images(id),
    boxes TEXT NOT NULL,
    round INTEGER,
    source TEXT,
    annotator TEXT,
    lead_time_s REAL,
    updated_at TEXT,
    imported_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS label_history(
    id INTEGER PRIMARY KEY,
    image_id INTEGER NOT NULL,
    boxes TEXT NOT NULL,
    round INTEGER,
    source TEXT,
    annotator TEXT,
    lead_time_s REAL,
    updated_at TEXT,
    imported_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds(
    round INTEGER PRIMARY KEY,
    step TEXT NOT NULL CHECK (step IN ('train', 'score', 'select', 'annotate', 'done')),
    strategy TEXT,
    model_path TEXT,
    model_hash TEXT,
    n_labeled INTEGER,
    map50 REAL,
    map50_95 REAL,
    per_class_ap50 TEXT,
    train_seconds REAL,
    score_seconds REAL,
    agreement REAL,
    started_at TEXT NOT NULL,
    finished_at TEXT
);
-- The finished vector shards (labelwise.vectors): path relative to <workspace>/vectors, the file holding `rows` rows
-- of (model_hash, imgsz, variant), the scores of `round` (NULL: before any round, or unknown), written by `engine`.
-- Within a key, the shard with the higher id wins for an image found in two.
CREATE TABLE IF NOT EXISTS shards(
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    model_hash TEXT NOT NULL,
    imgsz INTEGER NOT NULL,
    variant TEXT NOT NULL DEFAULT '',
    round INTEGER,
    rows INTEGER NOT NULL,
    engine TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS shards_key ON shards(model_hash, imgsz, variant);
CREATE TABLE IF NOT EXISTS selections(
    round INTEGER NOT NULL,
    image_id INTEGER NOT NULL REFERENCES images(id),
    rank INTEGER NOT NULL,
    score REAL NOT NULL,
    components TEXT NOT NULL,
    reason TEXT NOT NULL,
    outcome TEXT NOT NULL DEFAULT 'pending' CHECK (outcome IN ('pending', 'labeled', 'skipped')),
    PRIMARY KEY (round, image_id)
);
CREATE TABLE IF NOT EXISTS duplicate_skips(
    round INTEGER NOT NULL,
    image_id INTEGER NOT NULL,
    duplicate_of TEXT NOT NULL,
    similarity REAL NOT NULL
);
-- Labeled images kept out of training. kind 'rejected': the annotation tool now holds a newer annotation for them that
-- cannot be taken, so the label pulled earlier is out of date (released when a valid annotation is pulled). kind 'qa':
-- label QA suspects the label (qa.hold_suspects), released when it is confirmed or changed. (kind: added to older
-- stores on open, their rows 'rejected'.)
CREATE TABLE IF NOT EXISTS held(image_id INTEGER PRIMARY KEY REFERENCES images(id), round INTEGER,
                                reason TEXT NOT NULL, since TEXT NOT NULL, kind TEXT NOT NULL DEFAULT 'rejected');
-- Label QA (labelwise.workflow.qa): the images of a returned batch whose label most likely holds an error, one row
-- per round and image: its rank among the round's suspects, the label quality score and the three subscores, the
-- kind of error (missing_box, wrong_class, badly_placed), the box behind it (JSON [class, cx, cy, w, h], or null) and
-- the class suggested for a wrong one (or null), the label that was checked (JSON, as `labels.boxes`), the model
-- whose cached predictions checked it, and where the review stands: open, confirmed (a person kept the label),
-- changed (a new label came), cleared (no longer suspect). reviewed: a person has had a second look (a confirmed or
-- changed label is never held again). Additive: created on open like every table here.
CREATE TABLE IF NOT EXISTS qa_suspects(
    round INTEGER NOT NULL,
    image_id INTEGER NOT NULL REFERENCES images(id),
    rank INTEGER NOT NULL,
    score REAL NOT NULL,
    missing_box REAL NOT NULL,
    wrong_class REAL NOT NULL,
    badly_placed REAL NOT NULL,
    issue TEXT NOT NULL,
    box TEXT,
    suggested_class INTEGER,
    label TEXT NOT NULL,
    model_hash TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'confirmed', 'changed', 'cleared')),
    reviewed INTEGER NOT NULL DEFAULT 0,
    at TEXT NOT NULL,
    PRIMARY KEY (round, image_id)
);
CREATE TABLE IF NOT EXISTS kv(namespace TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
                              PRIMARY KEY (namespace, key));
-- Production images `labelwise monitor` has seen (labelwise.workflow.monitoring), one row per content hash: where and
-- when it was first seen, the model that scored it, what that model said (uncertainty, novelty, detections per class
-- as JSON {class id: [boxes, confidence sum]}), the rules it met (JSON list) and what became of it: passed, flagged
-- into the pool (image_id), capped (the day's cap was reached), duplicate (of duplicate_of) or known (already in
-- the workspace). Additive: created on open like every table here, so older stores gain it without a migration.
CREATE TABLE IF NOT EXISTS monitored(
    sha256 TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    seen_at TEXT NOT NULL,
    day TEXT NOT NULL,
    model_hash TEXT NOT NULL,
    imgsz INTEGER NOT NULL,
    uncertainty REAL,
    novelty REAL,
    detections INTEGER NOT NULL,
    class_stats TEXT NOT NULL,
    reasons TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('passed', 'flagged', 'capped', 'duplicate', 'known')),
    image_id INTEGER REFERENCES images(id),
    duplicate_of TEXT
);
CREATE INDEX IF NOT EXISTS monitored_day ON monitored(day, outcome);
-- Every file name the monitor has read, with the size and mtime it had: a rerun passes over it without reading it.
CREATE TABLE IF NOT EXISTS monitored_paths(path TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
                                           mtime_ns INTEGER NOT NULL);
"""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ImageRow:
    id: int
    sha256: str
    path: Path
    width: int
    height: int
    split: str
    state: str


@dataclass(frozen=True)
class RoundRow:
    round: int
    step: str
    strategy: str | None
    model_path: str | None
    model_hash: str | None
    n_labeled: int | None
    map50: float | None
    map50_95: float | None
    per_class_ap50: dict[str, float] | None
    train_seconds: float | None
    score_seconds: float | None
    agreement: float | None
    started_at: str
    finished_at: str | None


Box = tuple[int, float, float, float, float]


class Store:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.vectors = VectorStore(self.path.absolute().parent / VECTORS_DIR, index=self._shard_paths)
        with self.transaction():
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self.conn.execute(statement)
            self._migrate()
            # With the BLOB table still there, everything but the vectors is up to date: version 4 until they move.
            self._set_version(SCHEMA_VERSION - 1 if self._has_legacy_detections() else SCHEMA_VERSION)
        if self._has_legacy_detections():
            self._migrate_vectors()
        self.sweep_orphans(ORPHAN_GRACE_S)

    def _set_version(self, version: int) -> None:
        self.conn.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?) "
                          "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (str(version),))

    def _has_legacy_detections(self) -> bool:
        return self.conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                                 (LEGACY_DETECTIONS,)).fetchone() is not None

    def _migrate_vectors(self) -> None:
        """Schema 4 -> 5: the BLOB rows of `detections` become Parquet shards (one or more per model, size and
        variant, the round the first round that recorded the model), then ONE transaction registers them, drops the
        table and sets the version. Interrupted before that transaction, the store is as it was (the table and
        version 4; the files written are unregistered orphans) and the next open starts over. Two processes opening
        the store at once: the second finds the table gone in its transaction and deletes its own files."""
        rounds: dict[str, int] = {}
        for model_hash, round_no in self.conn.execute(
                "SELECT model_hash, MIN(round) FROM rounds WHERE model_hash IS NOT NULL GROUP BY model_hash"):
            rounds[model_hash] = round_no
        keys = self.conn.execute(f"SELECT DISTINCT model_hash, imgsz, variant FROM {LEGACY_DETECTIONS}"
                                 " ORDER BY model_hash, imgsz, variant").fetchall()
        written: list[tuple[Path, int, str, int, str]] = []
        try:
            for model_hash, imgsz, variant in keys:
                cursor = self.conn.execute(
                    f"SELECT * FROM {LEGACY_DETECTIONS} WHERE model_hash=? AND imgsz=? AND variant=? ORDER BY sha256",
                    (model_hash, imgsz, variant))

                def tables(cursor: sqlite3.Cursor = cursor, key: tuple = (model_hash, imgsz, variant)) -> Iterator:
                    while rows := cursor.fetchmany(_LEGACY_CHUNK):
                        yield detections_table(((r["sha256"], _legacy_detections(r)) for r in rows), *key)

                for path, n in self.vectors.write_shards(tables(), max_rows=COMPACT_ROWS):
                    written.append((path, n, model_hash, imgsz, variant))
            with self.transaction() as c:
                if not self._has_legacy_detections():  # another process migrated meanwhile
                    raise _AlreadyMigrated
                stamp = now()
                c.executemany(
                    "INSERT INTO shards(path, model_hash, imgsz, variant, round, rows, engine, created)"
                    " VALUES (?, ?, ?, ?, ?, ?, 'migrated', ?)",
                    [(self._relative(path), model_hash, imgsz, variant, rounds.get(model_hash), n, stamp)
                     for path, n, model_hash, imgsz, variant in written])
                c.execute(f"DROP TABLE {LEGACY_DETECTIONS}")
                self._set_version(SCHEMA_VERSION)
        except _AlreadyMigrated:
            self.vectors.remove(p for p, *_ in written)
            return
        except BaseException:
            self.vectors.remove(p for p, *_ in written)
            raise
        try:  # give the BLOBs' pages back to the file system (best effort: another connection may hold the file)
            self.conn.execute("VACUUM")
        except sqlite3.OperationalError:
            pass

    def _migrate(self) -> None:
        """Bring a store made by an earlier labelwise up to SCHEMA (inside the opening transaction, so a failed
        migration leaves the file as it was). Version 1 -> 2: the perceptual-hash columns, left NULL for the
        images already there (`labelwise.pool.backfill_hashes` fills them). 2 -> 3: which quarantined files are
        there for a rejected label (from the reason ingest has always written), and the image's hash (unknown for
        the old rows)."""
        columns = {row["name"] for row in self.conn.execute("PRAGMA table_info(images)")}
        for column in ("phash", "dhash"):
            if column not in columns:
                self.conn.execute(f"ALTER TABLE images ADD COLUMN {column} INTEGER")
        columns = {row["name"] for row in self.conn.execute("PRAGMA table_info(quarantine)")}
        if "sha256" not in columns:
            self.conn.execute("ALTER TABLE quarantine ADD COLUMN sha256 TEXT")
        if "label_rejected" not in columns:
            self.conn.execute("ALTER TABLE quarantine ADD COLUMN label_rejected INTEGER NOT NULL DEFAULT 0")
            self.conn.execute("UPDATE quarantine SET label_rejected=1 WHERE reason LIKE 'label rejected:%'")
        self.conn.execute("CREATE INDEX IF NOT EXISTS quarantine_sha ON quarantine(sha256)")
        if "kind" not in {row["name"] for row in self.conn.execute("PRAGMA table_info(held)")}:
            self.conn.execute("ALTER TABLE held ADD COLUMN kind TEXT NOT NULL DEFAULT 'rejected'")

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic unit of change. Nested use joins the outer transaction."""
        if self.conn.in_transaction:
            yield self.conn
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- key-value (backend bookkeeping, workspace facts) ---------------------------------------------------------

    def kv_get(self, namespace: str, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM kv WHERE namespace=? AND key=?", (namespace, key)).fetchone()
        return json.loads(row[0]) if row else default

    def kv_set(self, namespace: str, key: str, value: Any) -> None:
        with self.transaction() as c:
            c.execute(
                "INSERT INTO kv(namespace, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT(namespace, key) DO UPDATE SET value=excluded.value",
                (namespace, key, json.dumps(value)),
            )

    # -- images --------------------------------------------------------------------------------------------------

    def image_by_sha(self, sha256: str) -> ImageRow | None:
        row = self.conn.execute("SELECT * FROM images WHERE sha256=?", (sha256,)).fetchone()
        return _image(row) if row else None

    def image(self, image_id: int) -> ImageRow:
        row = self.conn.execute("SELECT * FROM images WHERE id=?", (image_id,)).fetchone()
        if row is None:
            raise KeyError(f"no image with id {image_id}")
        return _image(row)

    def known_path(self, path: str) -> int | None:
        row = self.conn.execute("SELECT image_id FROM image_paths WHERE path=?", (path,)).fetchone()
        return int(row[0]) if row else None

    def add_image(self, sha256: str, path: str, width: int, height: int, split: str = "pool",
                  phash: int | None = None, dhash: int | None = None) -> tuple[int, bool]:
        """Insert an image (or find it by hash). Returns (id, created). Records `path` as one of its names.

        `phash`, `dhash`: the image's unsigned 64-bit perceptual hashes (labelwise.neardup); an image found by its
        SHA-256 that has none yet gets them."""
        with self.transaction() as c:
            row = c.execute("SELECT id FROM images WHERE sha256=?", (sha256,)).fetchone()
            created = row is None
            if created:
                cur = c.execute(
                    "INSERT INTO images(sha256, path, width, height, split, added_at, phash, dhash)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (sha256, path, width, height, split, now(), _signed(phash), _signed(dhash)),
                )
                image_id = int(cur.lastrowid)
            else:
                image_id = int(row[0])
                if phash is not None and dhash is not None:
                    c.execute("UPDATE images SET phash=?, dhash=? WHERE id=? AND (phash IS NULL OR dhash IS NULL)",
                              (_signed(phash), _signed(dhash), image_id))
            c.execute("INSERT OR IGNORE INTO image_paths(path, image_id) VALUES (?, ?)", (path, image_id))
            c.execute("DELETE FROM quarantine WHERE path=?", (path,))
            if created:  # names of these bytes held back because a label of theirs was refused: it is in now
                c.execute("DELETE FROM quarantine WHERE sha256=?", (sha256,))
        return image_id, created

    def images_without_hashes(self) -> list[tuple[int, Path]]:
        """(id, path) of every image that has no perceptual hashes yet, by id."""
        rows = self.conn.execute("SELECT id, path FROM images WHERE phash IS NULL OR dhash IS NULL ORDER BY id")
        return [(int(r[0]), Path(r[1])) for r in rows]

    def ids_with_hashes(self, image_ids: np.ndarray) -> np.ndarray:
        """`image_ids` without those that have no perceptual hashes, order kept."""
        missing = {image_id for image_id, _ in self.images_without_hashes()}
        ids = np.asarray(image_ids, dtype=np.int64)
        return ids[[int(i) not in missing for i in ids]] if missing else ids

    def set_image_hashes(self, hashes: Iterable[tuple[int, int, int]]) -> None:
        """Store (image_id, phash, dhash) triples, the hashes as unsigned 64-bit integers, in one transaction."""
        with self.transaction() as c:
            c.executemany("UPDATE images SET phash=?, dhash=? WHERE id=?",
                          [(_signed(p), _signed(d), int(i)) for i, p, d in hashes])

    def image_hashes(self, image_ids: Iterable[int]) -> np.ndarray:
        """(N, 2) uint64 (pHash, dHash) rows of `image_ids`, in the order given.

        Raises KeyError for an unknown id and LookupError, naming the images, for images that have no hashes yet
        (no sentinel: every uint64 is a valid hash). `labelwise.pool.backfill_hashes` computes the missing ones."""
        ids = [int(i) for i in image_ids]
        found: dict[int, tuple[int | None, int | None, str]] = {}
        for start in range(0, len(ids), 900):  # SQLite's bound-parameter limit
            chunk = ids[start:start + 900]
            for r in self.conn.execute(
                f"SELECT id, phash, dhash, path FROM images WHERE id IN ({','.join('?' * len(chunk))})", chunk
            ):
                found[r[0]] = (r[1], r[2], r[3])
        unknown = [i for i in ids if i not in found]
        if unknown:
            more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
            raise KeyError(f"no image with id {unknown[0]}{more}")
        missing = [found[i][2] for i in ids if found[i][0] is None or found[i][1] is None]
        if missing:
            raise LookupError(f"{len(missing)} image(s) have no perceptual hashes yet, e.g. {missing[0]}; "
                              "run labelwise.pool.backfill_hashes on the store")
        return _unsigned([(found[i][0], found[i][1]) for i in ids])

    def images(self, split: str | None = None, state: str | None = None) -> list[ImageRow]:
        sql, args = "SELECT * FROM images WHERE 1=1", []
        if split:
            sql += " AND split=?"
            args.append(split)
        if state:
            sql += " AND state=?"
            args.append(state)
        return [_image(r) for r in self.conn.execute(sql + " ORDER BY id", args)]

    def image_ids(self, split: str, state: str) -> np.ndarray:
        rows = self.conn.execute("SELECT id FROM images WHERE split=? AND state=? ORDER BY id", (split, state))
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def counts(self) -> dict[str, int]:
        out = {"pool_unlabeled": 0, "pool_selected": 0, "pool_labeled": 0, "val_labeled": 0, "val_unlabeled": 0}
        for split, state, n in self.conn.execute("SELECT split, state, COUNT(*) FROM images GROUP BY split, state"):
            out[f"{split}_{state}"] = n
        out["quarantined"] = self.conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
        out["held"] = self.conn.execute("SELECT COUNT(*) FROM held").fetchone()[0]
        out["duplicate_paths"] = self.conn.execute(
            "SELECT COUNT(*) FROM image_paths p JOIN images i ON i.id = p.image_id WHERE p.path != i.path"
        ).fetchone()[0]
        return out

    def quarantine(self, path: str, reason: str, *, sha256: str | None = None, label_rejected: bool = False) -> None:
        """Hold `path` out of the pool with the reason. label_rejected: the image is fine but its label file was
        refused; such an image stays out however often it is seen (see `rejected_label`)."""
        with self.transaction() as c:
            c.execute(
                "INSERT INTO quarantine(path, reason, at, sha256, label_rejected) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(path) DO UPDATE SET reason=excluded.reason, at=excluded.at, sha256=excluded.sha256,"
                " label_rejected=excluded.label_rejected",
                (path, reason, now(), sha256, int(label_rejected)),
            )

    def rejected_label(self, *, path: str | None = None, sha256: str | None = None,
                       other_than: str | None = None) -> str | None:
        """A quarantined path whose own label file was rejected, found by that path or by the image's hash (a
        path other than `other_than`); else None."""
        row = self.conn.execute(
            "SELECT path FROM quarantine WHERE label_rejected=1 AND (path=? OR sha256=?) AND path IS NOT ?"
            " ORDER BY path LIMIT 1", (path, sha256, other_than),
        ).fetchone()
        return row[0] if row else None

    def quarantined(self) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in self.conn.execute("SELECT path, reason FROM quarantine ORDER BY path")]

    def set_split(self, image_id: int, split: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE images SET split=? WHERE id=?", (split, image_id))

    # -- labels --------------------------------------------------------------------------------------------------

    def put_label(self, image_id: int, boxes: Iterable[Box], *, round_no: int | None, source: str,
                  annotator: str | None = None, lead_time_s: float | None = None,
                  updated_at: str | None = None) -> None:
        """Set an image's label (the newest wins; every version stays in label_history) and mark it labeled."""
        payload = json.dumps([[int(b[0]), *(round(float(v), 8) for v in b[1:5])] for b in boxes])
        stamp = now()
        with self.transaction() as c:
            c.execute(
                "INSERT INTO label_history(image_id, boxes, round, source, annotator, lead_time_s, updated_at,"
                " imported_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (image_id, payload, round_no, source, annotator, lead_time_s, updated_at, stamp),
            )
            c.execute(
                "INSERT INTO labels(image_id, boxes, round, source, annotator, lead_time_s, updated_at, imported_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(image_id) DO UPDATE SET boxes=excluded.boxes,"
                " round=excluded.round, source=excluded.source, annotator=excluded.annotator,"
                " lead_time_s=excluded.lead_time_s, updated_at=excluded.updated_at, imported_at=excluded.imported_at",
                (image_id, payload, round_no, source, annotator, lead_time_s, updated_at, stamp),
            )
            c.execute("UPDATE images SET state='labeled' WHERE id=?", (image_id,))

    def label(self, image_id: int) -> list[Box] | None:
        row = self.conn.execute("SELECT boxes FROM labels WHERE image_id=?", (image_id,)).fetchone()
        return [tuple(b) for b in json.loads(row[0])] if row else None  # type: ignore[misc]

    def labels(self, split: str, *, held: bool = False) -> list[tuple[ImageRow, list[Box]]]:
        """The labeled images of `split` with their boxes, by id. Held images (see `hold`) are left out: their label
        is out of date, so nothing may train on it; `held=True` includes them."""
        rows = self.conn.execute(
            "SELECT i.*, l.boxes AS label_boxes FROM images i JOIN labels l ON l.image_id = i.id "
            "WHERE i.split=? AND i.state='labeled'"
            + ("" if held else " AND i.id NOT IN (SELECT image_id FROM held)") + " ORDER BY i.id", (split,)
        )
        return [(_image(r), [tuple(b) for b in json.loads(r["label_boxes"])]) for r in rows]  # type: ignore[misc]

    def hold(self, image_id: int, round_no: int | None, reason: str, *, kind: str = "rejected") -> bool:
        """Keep a labeled image out of training. kind 'rejected': the annotation tool holds a newer annotation of it
        that cannot be taken; 'qa': label QA suspects its label. True when it was not held before (the reason is
        updated either way). A 'rejected' hold replaces a 'qa' one; a 'qa' hold never replaces a 'rejected' one."""
        if kind not in HOLD_KINDS:
            raise ValueError(f"hold kind {kind!r} is not one of {', '.join(HOLD_KINDS)}")
        with self.transaction() as c:
            before = c.execute("SELECT 1 FROM held WHERE image_id=?", (image_id,)).fetchone()
            c.execute("INSERT INTO held(image_id, round, reason, since, kind) VALUES (?, ?, ?, ?, ?) "
                      "ON CONFLICT(image_id) DO UPDATE SET round=excluded.round, reason=excluded.reason, "
                      "kind=excluded.kind WHERE held.kind = excluded.kind OR excluded.kind = 'rejected'",
                      (image_id, round_no, reason, now(), kind))
        return before is None

    def release(self, image_id: int, *, kind: str | None = None) -> bool:
        """Take an image off hold (of `kind` only, when given); True when it was held so."""
        with self.transaction() as c:
            if kind is None:
                return c.execute("DELETE FROM held WHERE image_id=?", (image_id,)).rowcount > 0
            return c.execute("DELETE FROM held WHERE image_id=? AND kind=?", (image_id, kind)).rowcount > 0

    def held(self, kind: str | None = None) -> list[tuple[ImageRow, int | None, str, str]]:
        """(image, round, reason, since) of every held image (of `kind` only, when given), by id."""
        rows = self.conn.execute("SELECT i.*, h.round AS held_round, h.reason AS held_reason, h.since AS held_since "
                                 "FROM held h JOIN images i ON i.id = h.image_id"
                                 + (" WHERE h.kind = ?" if kind is not None else "") + " ORDER BY i.id",
                                 (kind,) if kind is not None else ())
        return [(_image(r), r["held_round"], r["held_reason"], r["held_since"]) for r in rows]

    def held_kind(self, image_id: int) -> str | None:
        """'rejected' or 'qa' when the image is held, else None."""
        row = self.conn.execute("SELECT kind FROM held WHERE image_id=?", (image_id,)).fetchone()
        return row[0] if row else None

    # -- label QA (labelwise.workflow.qa) ---------------------------------------------------------------------------

    def put_suspects(self, rows: Iterable[dict[str, Any]]) -> None:
        """Insert or replace label QA rows (the columns of `qa_suspects`; box a list or None, label a list of
        boxes), in one transaction."""
        columns = ("round", "image_id", "rank", "score", "missing_box", "wrong_class", "badly_placed", "issue", "box",
                   "suggested_class", "label", "model_hash", "status", "reviewed", "at")
        values = []
        for row in rows:
            row = {"status": "open", "reviewed": 0, "at": now(), **row}
            row["box"] = None if row.get("box") is None else json.dumps(list(row["box"]))
            row["label"] = label_json(row["label"])
            row["reviewed"] = int(bool(row["reviewed"]))
            values.append(tuple(row.get(k) for k in columns))
        with self.transaction() as c:
            c.executemany(f"INSERT OR REPLACE INTO qa_suspects({', '.join(columns)}) VALUES "
                          f"({', '.join('?' * len(columns))})", values)

    def suspects(self, round_no: int | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Label QA rows with the image's sha256 and path, by round and rank; box and label decoded."""
        where, args = [], []
        if round_no is not None:
            where.append("q.round = ?")
            args.append(round_no)
        if status is not None:
            where.append("q.status = ?")
            args.append(status)
        rows = self.conn.execute(
            "SELECT q.*, i.sha256, i.path, i.width, i.height FROM qa_suspects q JOIN images i ON i.id = q.image_id"
            + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY q.round, q.rank, q.image_id", args)
        return [{**dict(r), "box": None if r["box"] is None else json.loads(r["box"]),
                 "label": [tuple(b) for b in json.loads(r["label"])], "reviewed": bool(r["reviewed"])}
                for r in rows]

    def set_suspect_status(self, round_no: int, image_id: int, status: str, *, reviewed: bool | None = None) -> None:
        with self.transaction() as c:
            c.execute("UPDATE qa_suspects SET status=?, reviewed=COALESCE(?, reviewed), at=? WHERE round=? AND "
                      "image_id=?", (status, None if reviewed is None else int(reviewed), now(), round_no, image_id))

    def label_history_count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM label_history").fetchone()[0]

    def class_box_counts(self, n_classes: int, split: str = "pool") -> np.ndarray:
        counts = np.zeros(n_classes, dtype=np.int64)
        for (payload,) in self.conn.execute(
            "SELECT l.boxes FROM labels l JOIN images i ON i.id = l.image_id WHERE i.split=?", (split,)
        ):
            for box in json.loads(payload):
                if 0 <= box[0] < n_classes:
                    counts[box[0]] += 1
        return counts

    # -- rounds --------------------------------------------------------------------------------------------------

    def rounds(self) -> list[RoundRow]:
        return [_round(r) for r in self.conn.execute("SELECT * FROM rounds ORDER BY round")]

    def current_round(self) -> RoundRow | None:
        row = self.conn.execute("SELECT * FROM rounds ORDER BY round DESC LIMIT 1").fetchone()
        return _round(row) if row else None

    def start_round(self, round_no: int, step: str) -> None:
        with self.transaction() as c:
            c.execute("INSERT INTO rounds(round, step, started_at) VALUES (?, ?, ?)", (round_no, step, now()))

    def update_round(self, round_no: int, **fields: Any) -> None:
        if "per_class_ap50" in fields and fields["per_class_ap50"] is not None:
            fields["per_class_ap50"] = json.dumps(fields["per_class_ap50"])
        cols = ", ".join(f"{k}=?" for k in fields)
        with self.transaction() as c:
            c.execute(f"UPDATE rounds SET {cols} WHERE round=?", (*fields.values(), round_no))

    # -- detections cache: Parquet shards under vectors/ (labelwise.vectors), indexed in `shards` --------------

    def _relative(self, path: Path) -> str:
        path = Path(path).absolute()
        root = self.vectors.root.absolute()
        if not path.is_relative_to(root):
            raise ValueError(f"a shard must lie under {root}, got {path}")
        return path.relative_to(root).as_posix()

    def _shard_paths(self, model_hash: str, imgsz: int, variant: str) -> list[Path]:
        rows = self.conn.execute("SELECT path FROM shards WHERE model_hash=? AND imgsz=? AND variant=? ORDER BY id",
                                 (model_hash, int(imgsz), variant))
        return [self.vectors.root / r[0] for r in rows]

    def shards(self, model_hash: str | None = None) -> list[dict[str, Any]]:
        """The registered shards (every column of `shards`, `path` absolute), by id; of one model when given."""
        sql, args = "SELECT * FROM shards", ()
        if model_hash is not None:
            sql, args = sql + " WHERE model_hash=?", (model_hash,)
        return [{**dict(r), "path": self.vectors.root / r["path"]} for r in self.conn.execute(sql + " ORDER BY id",
                                                                                              args)]

    def _round_now(self) -> int | None:
        row = self.conn.execute("SELECT MAX(round) FROM rounds").fetchone()
        return row[0] if row else None

    def register_shards(self, paths: Iterable[Path], *, round_no: int | None = None, engine: str = "local") -> None:
        """Record finished shard files (DETECTIONS_SCHEMA, each of one model, size and variant; anywhere under
        vectors/, e.g. the files Ray Data wrote) in one transaction, in the order given (a later one wins for an
        image found in two). `round_no` defaults to the current round. The files must be complete: this is the
        moment they count."""
        from labelwise.vectors import shard_info

        infos = [(Path(p), *shard_info(p)) for p in paths]
        round_no = self._round_now() if round_no is None else round_no
        stamp = now()
        with self.transaction() as c:
            c.executemany(
                "INSERT INTO shards(path, model_hash, imgsz, variant, round, rows, engine, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(self._relative(p), mh, sz, var, round_no, n, engine, stamp) for p, mh, sz, var, n in infos])

    def put_detections(self, model_hash: str, imgsz: int, items: Iterable[tuple[str, ImageDetections | str]],
                       variant: str = "", *, round_no: int | None = None, engine: str = "local") -> None:
        """Write `items` as one new shard and register it (round: `round_no`, default the current round). An item
        whose detections are a string records an image that could not be scored, with the reason. For an image
        already cached under the same key, the new row wins."""
        items = list(items)
        if not items:
            return
        table = detections_table(items, model_hash, imgsz, variant)
        path = self.vectors.write_shard(table)
        try:
            with self.transaction() as c:
                c.execute("INSERT INTO shards(path, model_hash, imgsz, variant, round, rows, engine, created)"
                          " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                          (self._relative(path), model_hash, int(imgsz), variant,
                           self._round_now() if round_no is None else round_no, table.num_rows, engine, now()))
        except BaseException:
            self.vectors.remove([path])
            raise
        self._compact_tiers(model_hash, imgsz, variant)

    def compact_detections(self, model_hash: str, imgsz: int, variant: str = "") -> int:
        """Merge the key's trailing run of small shards (fewer than COMPACT_ROWS rows each, of one round and
        engine) into as few files as fit. Returns how many shards were merged (0: nothing to do)."""
        rows = self._key_shards(model_hash, imgsz, variant)
        run: list[sqlite3.Row] = []
        for r in reversed(rows):
            if r["rows"] >= COMPACT_ROWS or (run and (r["round"], r["engine"]) != (run[0]["round"], run[0]["engine"])):
                break
            run.append(r)
        run.reverse()
        if len(run) < 2:
            return 0
        self._merge(model_hash, imgsz, variant, run)
        return len(run)

    def _key_shards(self, model_hash: str, imgsz: int, variant: str) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT id, path, round, engine, rows FROM shards WHERE model_hash=? AND imgsz=?"
                                 " AND variant=? ORDER BY id", (model_hash, int(imgsz), variant)).fetchall()

    def _compact_tiers(self, model_hash: str, imgsz: int, variant: str) -> int:
        """Size-tiered merging after each write: while the key's last COMPACT_FANOUT shards are of one size tier
        (rows in [F^t, F^(t+1)), F the fan-out), one round and engine, and fit in COMPACT_ROWS together, they become
        one. Scoring writes a shard per chunk of images; this keeps the number of files of a key logarithmic, and
        each row is rewritten at most log_F(COMPACT_ROWS / chunk) times. Only a suffix is ever merged, so the order
        that decides which copy of an image wins is kept."""
        merged = 0
        while True:
            rows = self._key_shards(model_hash, imgsz, variant)[-COMPACT_FANOUT:]
            if len(rows) < COMPACT_FANOUT:
                return merged
            tiers = {_tier(r["rows"]) for r in rows}
            same = len({(r["round"], r["engine"]) for r in rows}) == 1
            if len(tiers) != 1 or not same or sum(r["rows"] for r in rows) > COMPACT_ROWS:
                return merged
            self._merge(model_hash, imgsz, variant, rows)
            merged += len(rows)

    def _merge(self, model_hash: str, imgsz: int, variant: str, run: list[sqlite3.Row]) -> None:
        """Replace the shards `run` (consecutive, in id order) by merged files: written first, then one transaction
        swaps the rows, then the old files go."""
        old = [self.vectors.root / r["path"] for r in run]
        merged = self.vectors.compact(old)
        try:
            with self.transaction() as c:
                c.executemany("DELETE FROM shards WHERE id=?", [(r["id"],) for r in run])
                c.executemany(
                    "INSERT INTO shards(path, model_hash, imgsz, variant, round, rows, engine, created)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(self._relative(p), model_hash, int(imgsz), variant, run[-1]["round"], n, run[-1]["engine"],
                      now()) for p, n in merged])
        except BaseException:
            self.vectors.remove(p for p, _ in merged)
            raise
        self.vectors.remove(old)

    def drop_detections(self, model_hash: str) -> None:
        """Forget every cached detection of `model_hash`: the rows go in one transaction, then the files."""
        with self.transaction() as c:
            paths = [self.vectors.root / r[0] for r in c.execute("SELECT path FROM shards WHERE model_hash=?",
                                                                 (model_hash,))]
            c.execute("DELETE FROM shards WHERE model_hash=?", (model_hash,))
        self.vectors.remove(paths)

    def sweep_orphans(self, min_age_s: float = ORPHAN_GRACE_S) -> list[Path]:
        """Delete the files directly in vectors/ that no row names (interrupted writes), last changed at least
        `min_age_s` ago. Returns them."""
        registered = {self.vectors.root / r[0] for r in self.conn.execute("SELECT path FROM shards")}
        try:
            orphans = self.vectors.orphans(registered, min_age_s)
        except OSError:
            return []
        self.vectors.remove(orphans)
        return orphans

    def scored_shas(self, model_hash: str, imgsz: int, variant: str = "") -> set[str]:
        """The images with a finished row for (model, size, variant): scored, or recorded as not scorable."""
        return self.vectors.scored_shas(model_hash, imgsz, variant)

    def detections(self, sha256: str, model_hash: str, imgsz: int, variant: str = "") -> ImageDetections | None:
        return self.detections_many([sha256], model_hash, imgsz, variant).get(sha256)

    def detections_many(self, shas: Iterable[str], model_hash: str, imgsz: int,
                        variant: str = "", features: bool = True) -> dict[str, ImageDetections]:
        """The cached detections of `shas` (those that have them), in one pass over the key's shards.
        features=False: without the box features (see `VectorStore.detections`)."""
        found = self.vectors.detections(shas, model_hash, imgsz, variant, features=features)
        return {sha: d for sha, d in found.items() if not isinstance(d, str)}

    def scored_pool(self, image_ids: np.ndarray, model_hash: str, imgsz: int, variant: str = "",
                    n_classes: int | None = None, embedding_dtype: type = np.float32) -> ScoredPool:
        """The cached detections of `image_ids` packed for the core, in the order of `image_ids` (ids without
        detections are left out). The ids' hashes come from SQLite in one pass; the vectors from the shards,
        memory-mapped, only the columns selection needs (labelwise.vectors). `hashes` is None when any of the
        images has no perceptual hashes yet (see `image_hashes`). `embedding_dtype`: see
        `VectorStore.scored_pool` (np.float16: as stored, half the memory)."""
        ids = np.asarray(image_ids, dtype=np.int64).ravel()
        wanted = {int(i) for i in ids} if len(ids) <= 20_000 else None
        select = ("SELECT id, sha256, coalesce(phash, 0), coalesce(dhash, 0), phash IS NULL OR dhash IS NULL"
                  " FROM images")
        if wanted is None:  # most of the pool: one scan beats many index probes
            cursors = [self.conn.execute(select)]
        else:
            chunked = sorted(wanted)
            cursors = [self.conn.execute(f"{select} WHERE id IN ({','.join('?' * len(chunk))})", chunk)
                       for chunk in (chunked[s:s + 900] for s in range(0, len(chunked), 900))]  # bound-parameter limit
        # Read a block of rows at a time into NumPy and Arrow: a million rows as Python tuples would take some
        # 400 MB, which the interpreter keeps after they are freed.
        id_parts, sha_parts, hash_parts, null_parts = [], [], [], []
        for cursor in cursors:
            while block := cursor.fetchmany(_FETCH_ROWS):
                id_parts.append(np.fromiter((r[0] for r in block), dtype=np.int64, count=len(block)))
                sha_parts.append(pa.array([r[1] for r in block], pa.string()))
                hash_parts.append(np.fromiter((v for r in block for v in (r[2], r[3])), dtype=np.int64,
                                              count=2 * len(block)).reshape(-1, 2))
                null_parts.append(np.fromiter((r[4] for r in block), dtype=bool, count=len(block)))
                del block
        row_ids_np = np.concatenate(id_parts) if id_parts else np.zeros(0, np.int64)
        shas = pa.chunked_array(sha_parts, pa.string())
        pair_np = np.concatenate(hash_parts) if hash_parts else np.zeros((0, 2), np.int64)
        missing = np.concatenate(null_parts) if null_parts else np.zeros(0, bool)
        by_id = np.argsort(row_ids_np, kind="stable")
        sorted_ids = row_ids_np[by_id]
        at = np.searchsorted(sorted_ids, ids)
        found = at < len(sorted_ids)
        found[found] = sorted_ids[at[found]] == ids[found]
        rows_of_ids = by_id[at[found]]
        pool = self.vectors.scored_pool(model_hash, imgsz, variant,
                                        shas.take(pa.array(rows_of_ids)).combine_chunks(), ids[found],
                                        n_classes=n_classes, embedding_dtype=embedding_dtype)
        if not len(pool):
            return dataclasses.replace(pool, hashes=_unsigned([]))
        rows_of_pool = by_id[np.searchsorted(sorted_ids, pool.image_ids)]
        hashes = None if missing[rows_of_pool].any() else pair_np[rows_of_pool].view(np.uint64)
        return dataclasses.replace(pool, hashes=hashes)

    # -- selections ----------------------------------------------------------------------------------------------

    def save_selection(self, round_no: int, picks: list[tuple[int, int, float, dict, str]],
                       skipped: list[tuple[int, str, float]], next_step: str) -> None:
        """Store a round's batch (image_id, rank, score, components, reason), mark its images selected and move the
        round to `next_step`, all in one transaction."""
        with self.transaction() as c:
            c.execute("DELETE FROM selections WHERE round=?", (round_no,))
            c.execute("DELETE FROM duplicate_skips WHERE round=?", (round_no,))
            c.executemany(
                "INSERT INTO selections(round, image_id, rank, score, components, reason) VALUES (?, ?, ?, ?, ?, ?)",
                [(round_no, i, r, s, json.dumps(comp), why) for i, r, s, comp, why in picks],
            )
            c.executemany(
                "INSERT INTO duplicate_skips(round, image_id, duplicate_of, similarity) VALUES (?, ?, ?, ?)",
                [(round_no, i, of, sim) for i, of, sim in skipped],
            )
            c.executemany("UPDATE images SET state='selected' WHERE id=? AND state='unlabeled'",
                          [(i,) for i, *_ in picks])
            c.execute("UPDATE rounds SET step=? WHERE round=?", (next_step, round_no))

    def selection(self, round_no: int) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT s.*, i.sha256, i.path, i.width, i.height, i.state FROM selections s"
            " JOIN images i ON i.id = s.image_id WHERE s.round=? ORDER BY s.rank", (round_no,)
        )
        return [
            {**dict(r), "components": json.loads(r["components"])} for r in rows
        ]

    def duplicate_skips(self, round_no: int) -> list[tuple[int, str, float]]:
        return [(r[0], r[1], r[2]) for r in self.conn.execute(
            "SELECT image_id, duplicate_of, similarity FROM duplicate_skips WHERE round=?", (round_no,))]

    def set_outcome(self, round_no: int, image_id: int, outcome: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE selections SET outcome=? WHERE round=? AND image_id=?", (outcome, round_no, image_id))
            if outcome == "skipped":
                c.execute("UPDATE images SET state='unlabeled' WHERE id=? AND state='selected'", (image_id,))

    # -- production monitoring (labelwise.workflow.monitoring) ------------------------------------------------------

    def monitored_path(self, path: str, size: int, mtime_ns: int) -> bool:
        """Whether the monitor has read `path` as it is now (same size and modification time)."""
        row = self.conn.execute("SELECT 1 FROM monitored_paths WHERE path=? AND size=? AND mtime_ns=?",
                                (path, size, mtime_ns)).fetchone()
        return row is not None

    def note_monitored_path(self, path: str, sha256: str, size: int, mtime_ns: int) -> None:
        with self.transaction() as c:
            c.execute("INSERT INTO monitored_paths(path, sha256, size, mtime_ns) VALUES (?, ?, ?, ?) ON CONFLICT(path)"
                      " DO UPDATE SET sha256=excluded.sha256, size=excluded.size, mtime_ns=excluded.mtime_ns",
                      (path, sha256, size, mtime_ns))

    def is_monitored(self, sha256: str) -> bool:
        return self.conn.execute("SELECT 1 FROM monitored WHERE sha256=?", (sha256,)).fetchone() is not None

    def record_monitored(self, row: dict[str, Any], *, size: int, mtime_ns: int,
                         add: tuple[str, int, int, int, int] | None = None) -> int | None:
        """Record one monitored image (the columns of `monitored` but image_id; reasons a list, class_stats a
        mapping) and its file name, in ONE transaction; with `add` = (path, width, height, phash, dhash) the image
        also joins the pool as an unlabeled image, as `labelwise add` registers one. Returns the pool image's id
        (None without `add`). An image already recorded keeps its first row."""
        with self.transaction() as c:
            image_id = row.get("image_id")
            if add is not None:
                path, width, height, phash, dhash = add
                image_id, _created = self.add_image(row["sha256"], path, width, height, "pool", phash, dhash)
            values = {**row, "image_id": image_id, "reasons": json.dumps(list(row["reasons"])),
                      "class_stats": json.dumps({str(k): v for k, v in dict(row["class_stats"]).items()})}
            columns = ("sha256", "source", "seen_at", "day", "model_hash", "imgsz", "uncertainty", "novelty",
                       "detections", "class_stats", "reasons", "outcome", "image_id", "duplicate_of")
            c.execute(f"INSERT OR IGNORE INTO monitored({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                      tuple(values.get(k) for k in columns))
            self.note_monitored_path(row["source"], row["sha256"], size, mtime_ns)
        return image_id

    def monitored_on(self, day: str, outcome: str = "flagged") -> int:
        """How many images seen on `day` had `outcome`."""
        return self.conn.execute("SELECT COUNT(*) FROM monitored WHERE day=? AND outcome=?",
                                 (day, outcome)).fetchone()[0]

    def monitored_fingerprint(self) -> tuple[int, str | None]:
        """(rows, latest seen_at) of `monitored`: changes whenever an image is recorded."""
        n, last = self.conn.execute("SELECT COUNT(*), MAX(seen_at) FROM monitored").fetchone()
        return int(n), last

    def monitored_days(self) -> list[dict[str, Any]]:
        """Per day seen, in order: images, images per outcome, images per rule met ('any': at least one), the
        models that scored them, and detections per class id as (boxes, confidence sum)."""
        days: dict[str, dict[str, Any]] = {}
        for day, outcome, met, n in self.conn.execute(
                "SELECT day, outcome, reasons != '[]', COUNT(*) FROM monitored GROUP BY day, outcome, reasons != '[]'"
                " ORDER BY day"):
            d = days.setdefault(day, {"day": day, "images": 0, "outcomes": {}, "reasons": {}, "models": [],
                                      "classes": {}})
            d["images"] += n
            d["outcomes"][outcome] = d["outcomes"].get(outcome, 0) + n
            if met:
                d["reasons"]["any"] = d["reasons"].get("any", 0) + n
        for day, reason, n in self.conn.execute(
                "SELECT m.day, j.value, COUNT(*) FROM monitored m, json_each(m.reasons) j GROUP BY m.day, j.value"):
            days[day]["reasons"][reason] = n
        for day, cls, boxes, conf in self.conn.execute(
                "SELECT m.day, CAST(j.key AS INTEGER), SUM(json_extract(j.value, '$[0]')),"
                " SUM(json_extract(j.value, '$[1]')) FROM monitored m, json_each(m.class_stats) j"
                " GROUP BY m.day, j.key"):
            days[day]["classes"][int(cls)] = (int(boxes), float(conf))
        for day, model_hash in self.conn.execute(
                "SELECT day, model_hash FROM monitored GROUP BY day, model_hash ORDER BY day, MIN(seen_at)"):
            days[day]["models"].append(model_hash)
        return list(days.values())


def label_json(boxes: Iterable[Box]) -> str:
    """A label as `labels.boxes` stores it: [[class, cx, cy, w, h], ...], coordinates rounded to 8 places."""
    return json.dumps([[int(b[0]), *(round(float(v), 8) for v in b[1:5])] for b in boxes])


def _signed(value: int | None) -> int | None:
    """An unsigned 64-bit integer as the signed one with the same bits (SQLite INTEGER is signed 64-bit)."""
    if value is None:
        return None
    if not 0 <= value < 2 * _TWO_63:
        raise ValueError(f"a 64-bit hash must be in [0, 2**64), got {value}")
    return value - 2 * _TWO_63 if value >= _TWO_63 else value


def _unsigned(pairs: list[tuple[int, int]]) -> np.ndarray:
    """(N, 2) uint64 from stored signed pairs: the same bits reinterpreted."""
    return np.array(pairs, dtype=np.int64).reshape(-1, 2).view(np.uint64)


def _image(row: sqlite3.Row) -> ImageRow:
    return ImageRow(row["id"], row["sha256"], Path(row["path"]), row["width"], row["height"], row["split"],
                    row["state"])


def _round(row: sqlite3.Row) -> RoundRow:
    d = dict(row)
    if d["per_class_ap50"]:
        d["per_class_ap50"] = json.loads(d["per_class_ap50"])
    return RoundRow(**d)


def _tier(rows: int) -> int:
    tier = 0
    while rows >= COMPACT_FANOUT:
        rows //= COMPACT_FANOUT
        tier += 1
    return tier


class _AlreadyMigrated(Exception):
    pass


def _legacy_detections(row: sqlite3.Row) -> ImageDetections:
    """A row of the schema-4 BLOB table `detections` as the store returned it."""
    n, nc = row["n_boxes"], row["n_classes"]
    features = np.frombuffer(row["box_features"], dtype=np.float16)
    return ImageDetections(
        boxes=np.frombuffer(row["boxes"], dtype=np.float32).reshape(n, 4),
        class_scores=np.frombuffer(row["class_scores"], dtype=np.float32).reshape(n, nc),
        box_features=features.reshape(n, -1) if n else np.zeros((0, 0), np.float16),
        embedding=np.frombuffer(row["embedding"], dtype=np.float16).astype(np.float32),
        max_candidate_score=row["max_candidate"],
        width=row["width"],
        height=row["height"],
    )
