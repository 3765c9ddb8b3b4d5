"""Benchmark (issue 10, "Vectors out of SQLite"): `scored_pool` of 80,000 images from the schema-4 SQLite BLOBs vs
from the Parquet shards of labelwise.vectors, and what each costs on disk.

The data: N pool images (default 80,000), each with cached detections as scoring writes them: about 5 boxes (Poisson,
mean 5, at most 40), a 6-class score vector per box, a 448-d fp16 feature per box and a 448-d embedding (the sizes
yolo11n gives). Made once, in chunks, and written three ways:
  1. legacy: a schema-4 store: `labelwise.db` with the BLOB table `detections`, rows inserted with the schema-4
     `put_detections` SQL in chunks of 1,000 (copied below, as bench_store built it);
  2. migrated: a copy of (1) opened by the current `Store`, which migrates it (timed) to shards under vectors/;
  3. written: a fresh store filled by `Store.put_detections` in chunks of 64 images, as the local scoring engine
     commits them (each chunk a shard, merged in size tiers as it goes; timed, files counted).
Timed, each in a fresh subprocess (so the peak RSS is that read's alone; the kernel's peak mark is reset after the
imports): `scored_pool` of every pool image, the schema-4 reader (its SQL and `np.frombuffer` code, copied below) on
(1), `Store.scored_pool` on (2) and on (3). Each subprocess reads once to warm up (reported as "first") and then
`--repeat` times; the three alternate, twice, and the median of all timed reads is reported with the peak RSS over
the RSS before the first read and a checksum of every array, which must be the same for all three.

Run alone: `.venv/bin/python benchmarks/bench_vectors.py [--images 80000] [--repeat 3] [--keep DIR] [--json FILE]`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from labelwise.detections import ImageDetections, ScoredPool, csr_offsets  # noqa: E402
from labelwise.store import STORE_NAME, Store, now  # noqa: E402

N_CLASSES = 6
EMB_DIM = 448
MODEL_HASH = "0123456789abcdef"
IMGSZ = 320

# -- the schema-4 store, as it was (store.py before the vectors moved out) -----------------------------------------

LEGACY_TABLE = """
CREATE TABLE IF NOT EXISTS detections(
    sha256 TEXT NOT NULL,
    model_hash TEXT NOT NULL,
    imgsz INTEGER NOT NULL,
    variant TEXT NOT NULL DEFAULT '',
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    n_boxes INTEGER NOT NULL,
    n_classes INTEGER NOT NULL,
    max_candidate REAL NOT NULL,
    boxes BLOB NOT NULL,
    class_scores BLOB NOT NULL,
    embedding BLOB NOT NULL,
    box_features BLOB NOT NULL,
    PRIMARY KEY (model_hash, imgsz, variant, sha256)
)"""


def legacy_put_detections(conn: sqlite3.Connection, model_hash: str, imgsz: int,
                          items: list[tuple[str, ImageDetections]], variant: str = "") -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT OR REPLACE INTO detections(sha256, model_hash, imgsz, variant, width, height, n_boxes,"
        " n_classes, max_candidate, boxes, class_scores, embedding, box_features)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (sha, model_hash, imgsz, variant, d.width, d.height, d.n_boxes, d.class_scores.shape[1],
             float(d.max_candidate_score), d.boxes.astype(np.float32).tobytes(),
             d.class_scores.astype(np.float32).tobytes(), d.embedding.astype(np.float16).tobytes(),
             d.box_features.astype(np.float16).tobytes())
            for sha, d in items
        ],
    )
    conn.execute("COMMIT")


def legacy_scored_pool(conn: sqlite3.Connection, image_ids: np.ndarray, model_hash: str, imgsz: int,
                       variant: str = "", n_classes: int | None = None) -> ScoredPool:
    """The schema-4 `Store.scored_pool`, verbatim but for `self.conn` -> `conn`."""
    order = {int(image_id): k for k, image_id in enumerate(image_ids)}
    sql = ("SELECT i.id, d.width, d.height, d.n_boxes, d.n_classes, d.max_candidate, d.boxes, d.class_scores,"
           " d.embedding, i.phash, i.dhash FROM images i CROSS JOIN detections d ON d.sha256 = i.sha256"
           " AND d.model_hash=? AND d.imgsz=? AND d.variant=?")
    if len(order) > 20_000:
        rows = [r for r in conn.execute(sql, (model_hash, imgsz, variant)) if r[0] in order]
    else:
        ids = list(order)
        rows = []
        for start in range(0, len(ids), 900):
            chunk = ids[start:start + 900]
            rows.extend(conn.execute(f"{sql} WHERE i.id IN ({','.join('?' * len(chunk))})",
                                     (model_hash, imgsz, variant, *chunk)))
    rows.sort(key=lambda r: order[r[0]])
    ncs = {r[4] for r in rows}
    if n_classes is None and ncs:
        n_classes = ncs.pop() if len(ncs) == 1 else -1
    if any(nc != n_classes for nc in {r[4] for r in rows}):
        raise ValueError(f"cached detections have {sorted({r[4] for r in rows})} classes, expected {n_classes}")
    nc = n_classes or 0
    counts = np.fromiter((r[3] for r in rows), dtype=np.int64, count=len(rows))
    offsets = csr_offsets(counts)
    sizes = np.array([(r[1], r[2]) for r in rows], dtype=np.float32).reshape(-1, 2)
    boxes = np.frombuffer(b"".join(r[6] for r in rows), dtype=np.float32).reshape(-1, 4)
    scale = np.repeat(np.concatenate([sizes, sizes], axis=1), counts, axis=0)
    embeddings = np.frombuffer(b"".join(r[8] for r in rows), dtype=np.float16)
    return ScoredPool(
        image_ids=np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)),
        embeddings=embeddings.reshape(len(rows), -1).astype(np.float32) if rows else np.zeros((0, 0), np.float32),
        box_offsets=offsets,
        class_scores=np.frombuffer(b"".join(r[7] for r in rows), dtype=np.float32).reshape(-1, nc)
        if nc else np.zeros((0, 0), np.float32),
        boxes=boxes / scale if len(boxes) else np.zeros((0, 4), np.float32),
        max_candidate_score=np.fromiter((r[5] for r in rows), dtype=np.float32, count=len(rows)),
        hashes=None if any(r[9] is None or r[10] is None for r in rows)
        else np.array([(r[9], r[10]) for r in rows], dtype=np.int64).reshape(-1, 2).view(np.uint64),
    )


# -- the data --------------------------------------------------------------------------------------------------------


def sha_of(i: int) -> str:
    return hashlib.sha256(f"image-{i}".encode()).hexdigest()


def detections(n_images: int, chunk: int, seed: int = 0):
    """(sha256, ImageDetections) in chunks, the same for every writer."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_images, chunk):
        out = []
        for i in range(start, min(n_images, start + chunk)):
            n = int(min(rng.poisson(5.0), 40))
            xy = rng.uniform(0, [1180, 620], (n, 2)).astype(np.float32)
            wh = rng.uniform(10, 100, (n, 2)).astype(np.float32)
            scores = rng.beta(0.5, 8.0, (n, N_CLASSES)).astype(np.float32)
            scores[np.arange(n), rng.integers(0, N_CLASSES, n)] = rng.uniform(0.05, 0.98, n)
            out.append((sha_of(i), ImageDetections(
                boxes=np.concatenate([xy, xy + wh], axis=1),
                class_scores=scores,
                box_features=rng.standard_normal((n, EMB_DIM), dtype=np.float32).astype(np.float16),
                embedding=np.abs(rng.standard_normal(EMB_DIM, dtype=np.float32)),
                max_candidate_score=float(scores.max(initial=rng.uniform(0.01, 0.25))),
                width=1280, height=720,
            )))
        yield out


def add_images(store: Store, n_images: int) -> None:
    stamp = now()
    rng = np.random.default_rng(1)
    hashes = rng.integers(-(2**63), 2**63 - 1, size=(n_images, 2), dtype=np.int64)
    with store.transaction() as c:
        c.executemany("INSERT INTO images(sha256, path, width, height, added_at, phash, dhash)"
                      " VALUES (?, ?, 1280, 720, ?, ?, ?)",
                      [(sha_of(i), f"/data/pool/img_{i:07d}.jpg", stamp, int(hashes[i, 0]), int(hashes[i, 1]))
                       for i in range(n_images)])


def size_mb(root: Path) -> dict[str, float]:
    db = sum(p.stat().st_size for p in root.glob(f"{STORE_NAME}*")) / 2**20
    vec = sum(p.stat().st_size for p in (root / "vectors").rglob("*") if p.is_file()) / 2**20 \
        if (root / "vectors").exists() else 0.0
    files = len(list((root / "vectors").glob("*.parquet"))) if (root / "vectors").exists() else 0
    return {"sqlite_mb": db, "vectors_mb": vec, "total_mb": db + vec, "shard_files": files}


def build(tmp: Path, n_images: int) -> dict:
    out: dict = {}
    legacy = tmp / "legacy"
    legacy.mkdir(parents=True)
    store = Store(legacy / STORE_NAME)
    add_images(store, n_images)
    store.conn.execute(LEGACY_TABLE)
    store.conn.execute("UPDATE meta SET value='4' WHERE key='schema_version'")
    t = time.perf_counter()
    boxes = 0
    for chunk in detections(n_images, 1000):
        boxes += sum(d.n_boxes for _, d in chunk)
        legacy_put_detections(store.conn, MODEL_HASH, IMGSZ, chunk)
    out["legacy_write_s"] = time.perf_counter() - t
    out["boxes_per_image"] = boxes / n_images
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    out["legacy"] = size_mb(legacy)

    migrated = tmp / "migrated"
    migrated.mkdir()
    shutil.copy2(legacy / STORE_NAME, migrated / STORE_NAME)
    t = time.perf_counter()
    Store(migrated / STORE_NAME).close()  # the first open migrates
    out["migrate_s"] = time.perf_counter() - t
    out["migrated"] = size_mb(migrated)

    written = tmp / "written"
    written.mkdir()
    store = Store(written / STORE_NAME)
    add_images(store, n_images)
    t = time.perf_counter()
    for chunk in detections(n_images, 64):
        store.put_detections(MODEL_HASH, IMGSZ, chunk)
    out["chunked_write_s"] = time.perf_counter() - t
    out["written_shards"] = [s["rows"] for s in store.shards()]
    store.close()
    out["written"] = size_mb(written)
    return out


# -- one measurement, in its own process -------------------------------------------------------------------------


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak() -> bool:
    """Start the kernel's peak-RSS mark (VmHWM) afresh, so imports do not count (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def checksum(pool: ScoredPool) -> str:
    h = hashlib.sha256()
    for name in ("image_ids", "embeddings", "box_offsets", "class_scores", "boxes", "max_candidate_score", "hashes"):
        a = getattr(pool, name)
        h.update(name.encode() + (b"none" if a is None else str(a.dtype).encode() + str(a.shape).encode()
                                  + np.ascontiguousarray(a).tobytes()))
    return h.hexdigest()[:16]


def measure(kind: str, db: Path, repeat: int) -> dict:
    if kind == "legacy":
        conn = sqlite3.connect(db)
        ids = np.fromiter((r[0] for r in conn.execute("SELECT id FROM images ORDER BY id")), dtype=np.int64)

        def read() -> ScoredPool:
            return legacy_scored_pool(conn, ids, MODEL_HASH, IMGSZ, n_classes=N_CLASSES)
    else:
        store = Store(db)
        ids = store.image_ids("pool", "unlabeled")

        def read() -> ScoredPool:
            return store.scored_pool(ids, MODEL_HASH, IMGSZ, n_classes=N_CLASSES)
    reset_peak()
    base = rss_mb()
    times, pool = [], None
    for _ in range(repeat + 1):  # the first read warms the page cache and the library: reported apart
        pool = None
        t = time.perf_counter()
        pool = read()
        times.append(time.perf_counter() - t)
    peak = peak_mb()
    return {"kind": kind, "first_s": times[0], "runs_s": times[1:], "rows": len(pool),
            "boxes": int(pool.box_offsets[-1]), "peak_rss_over_base_mb": peak - base,
            "result_mb": sum(a.nbytes for a in (pool.embeddings, pool.class_scores, pool.boxes)) / 2**20,
            "checksum": checksum(pool)}


KINDS = (("legacy", "legacy"), ("parquet-migrated", "migrated"), ("parquet-written", "written"))


def run(n_images: int, repeat: int, keep: Path | None) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="lw-bench-vectors-")) if keep is None else keep
    if keep is not None and tmp.exists():
        shutil.rmtree(tmp)
    load_at_start = os.getloadavg()[0]
    try:
        print(f"building {n_images:,} images' detections three ways in {tmp} ...", flush=True)
        built = build(tmp, n_images)
        print(json.dumps(built, indent=1), flush=True)
        reads: dict[str, dict] = {}
        for rnd in range(2):  # alternate the three, twice: a load that comes and goes hits them alike
            for kind, folder in KINDS:
                res = subprocess.run([sys.executable, __file__, "--measure", kind, "--db",
                                      str(tmp / folder / STORE_NAME), "--repeat", str(repeat)],
                                     capture_output=True, text=True, check=True)
                r = json.loads(res.stdout.strip().splitlines()[-1])
                if kind in reads:
                    seen = reads[kind]
                    seen["runs_s"] += r["runs_s"]
                    seen["first_s"] = min(seen["first_s"], r["first_s"])
                    seen["peak_rss_over_base_mb"] = max(seen["peak_rss_over_base_mb"], r["peak_rss_over_base_mb"])
                    assert seen["checksum"] == r["checksum"]
                else:
                    reads[kind] = r
                print(f"  round {rnd + 1}: scored_pool [{kind:<16}] runs {', '.join(f'{x:.3f}' for x in r['runs_s'])}"
                      f" s (first {r['first_s']:.3f} s), peak RSS +{r['peak_rss_over_base_mb']:.0f} MB",
                      flush=True)
        for r in reads.values():
            r["median_s"] = statistics.median(r["runs_s"])
        for kind, r in reads.items():
            print(f"  scored_pool [{kind:<16}] median {r['median_s']:.3f} s of {len(r['runs_s'])}, first read "
                  f"{r['first_s']:.3f} s, peak RSS +{r['peak_rss_over_base_mb']:.0f} MB (result "
                  f"{r['result_mb']:.0f} MB), {r['rows']:,} rows, {r['boxes']:,} boxes, checksum {r['checksum']}")
        reads = list(reads.values())
        same = len({r["checksum"] for r in reads}) == 1
        print(f"  the three pools are {'identical' if same else 'DIFFERENT'}; load average at the end "
              f"{os.getloadavg()[0]:.1f} (started at {load_at_start:.1f}) on {os.cpu_count()} CPUs")
        return {"bench": "vectors", "n_images": n_images, "build": built, "reads": reads, "identical": same,
                "loadavg_start": load_at_start, "loadavg_end": os.getloadavg()[0], "cpus": os.cpu_count(),
                "date": time.strftime("%Y-%m-%d")}
    finally:
        if keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=80_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", type=Path, default=None, help="build here and keep it")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    ap.add_argument("--measure", choices=["legacy", "parquet-migrated", "parquet-written"], help=argparse.SUPPRESS)
    ap.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure:
        print(json.dumps(measure("legacy" if args.measure == "legacy" else "parquet", args.db, args.repeat)
                         | {"kind": args.measure}))
        return 0
    print(f"bench_vectors: {platform.platform()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    out = run(args.images, args.repeat, args.keep)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0 if out["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
