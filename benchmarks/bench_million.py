"""Benchmark for issue 10, "Selection from a million": a workspace of 1,000,000 scored pool images on 2 cores.

Targets (issue 10):
- `labelwise status` < 5 s;
- `select` of 1,000 < 60 s, within 2 GB of extra memory (peak RSS over the RSS before the call);
- k-center covering radius of the CPU approximation within 5% of the exact greedy's, on a 100,000 subsample;
- store size and time to build, recorded.

The workspace is real (labelwise.yaml, SQLite store and Parquet vector shards made by `Workspace.create` and `Store`);
its pool is synthetic and has no image files (status and select never open them):
- N pool images (default 1,000,000) inserted in one transaction as bench_store does, with perceptual hashes, of
  which 2,000 are labeled (labels and label history), plus 400 labeled validation images;
- for every pool image one cached detection written through `Store.put_detections` (the public API the scoring
  engines use, 20,000 images a call): 5 boxes, a 7-class sigmoid score vector per box (one class clearly ahead,
  its confidence spread over 0.05-0.98, so uncertainty varies), a 448-d fp16 feature per box (unit normal noise:
  selection never reads them, they only weigh on the store) and a 448-d fp16 embedding from
  `synthetic_embeddings` (a low-rank scene structure, 7 scene kinds, plus a noise floor, clipped at 0 like pooled
  ReLU features);
- rounds 1-3 done, round 4 trained and scored, at step select (as after `labelwise score`).

Measured, each in a fresh subprocess (interpreter start excluded except for the CLI lines; the kernel's peak-RSS mark
is reset just before the call, so the peak is the call's own):
- `labelwise status` (CLI subprocess, wall time) and `Workspace.status()`;
- `Workspace.select(k=1000)` with the workspace's strategy (the default preset: hybrid) and with `coreset`: wall time
  and peak RSS over the RSS before the call; `labelwise select --k 1000` (CLI subprocess, wall time);
- k-center greedy (k = 1,000) on 100,000 pool embeddings read from the store and prepared as selection prepares them
  (centred, L2-normalised): the exact greedy and `approximate_farthest_first`, time and covering radius.

Run: `.venv/bin/python benchmarks/bench_million.py [--images 1000000] [--root benchmarks/out/million]
[--rebuild] [--json FILE]`. The workspace is kept under --root (benchmarks/out/ is ignored by git) and reused by a
later run unless --rebuild (or a different --images) is given.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

EMB_DIM = 448  # yolo11n: 64 + 128 + 256 channels feed the Detect head
N_CLASSES = 7
CLASSES = ["car", "truck", "bus", "person", "bicycle", "motorcycle", "traffic_light"]
BOXES_PER_IMAGE = 5
N_LABELED, N_VAL = 2_000, 400
WRITE_CHUNK = 20_000
MODEL_HASHES = [f"{r:02d}" + hashlib.sha256(f"model{r}".encode()).hexdigest()[:14] for r in range(1, 5)]
TARGETS = {"status_s": 5.0, "select_s": 60.0, "select_extra_gb": 2.0, "radius_ratio": 1.05}


def synthetic_embeddings(n: int, seed: int = 0, d: int = EMB_DIM, rank: int = 32, n_classes: int = N_CLASSES,
                         chunk: int = 100_000, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) float16 image embeddings and (n,) the scene class of each image, rows start..start + n.

    Like pooled ReLU features of a CNN: a few strong directions (a `rank`-dimensional latent with a decaying spectrum,
    around one of `n_classes` scene means) mapped into d dimensions, plus a weak isotropic noise floor, clipped at 0.
    Deterministic per (seed, chunk of `chunk` rows): row i is the same whatever n and start.
    """
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(n_classes, rank)) * 2.0
    scale = 2.0 * np.arange(1, rank + 1) ** -0.5
    w = (rng.normal(size=(rank, d)) / np.sqrt(rank)).astype(np.float32)
    out = np.empty((n, d), dtype=np.float16)
    classes = np.empty(n, dtype=np.int64)
    first = start // chunk * chunk
    for c0 in range(first, start + n, chunk):
        r = np.random.default_rng([seed, c0])
        cls = r.integers(0, n_classes, chunk)
        z = (mu[cls] + r.standard_normal((chunk, rank)) * scale).astype(np.float32)
        e = z @ w
        e += 0.3 * r.standard_normal((chunk, d), dtype=np.float32)
        np.maximum(e, 0, out=e)
        lo, hi = max(start, c0), min(start + n, c0 + chunk)
        if lo < hi:
            out[lo - start:hi - start] = e[lo - c0:hi - c0]
            classes[lo - start:hi - start] = cls[lo - c0:hi - c0]
    return out, classes


def _detections(emb: np.ndarray, cls: np.ndarray, rng: np.random.Generator):
    from labelwise.detections import ImageDetections

    n = len(cls)
    b = BOXES_PER_IMAGE
    xy = rng.uniform(0, [1180, 620], (n, b, 2)).astype(np.float32)
    wh = rng.uniform(10, 100, (n, b, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + wh], axis=2)
    scores = rng.beta(0.5, 8.0, (n, b, N_CLASSES)).astype(np.float32)
    main = np.where(rng.random((n, b)) < 0.7, cls[:, None], rng.integers(0, N_CLASSES, (n, b)))
    scores[np.arange(n)[:, None], np.arange(b)[None, :], main] = rng.uniform(0.05, 0.98, (n, b))
    feats = rng.standard_normal((n, b, EMB_DIM), dtype=np.float32).astype(np.float16)
    top = scores.max(axis=(1, 2))
    return [ImageDetections(boxes=boxes[i], class_scores=scores[i], box_features=feats[i], embedding=emb[i],
                            max_candidate_score=float(top[i]), width=1280, height=720) for i in range(n)]


def build(root: Path, n_images: int, seed: int = 0) -> dict:
    """A workspace at round 4, step select, with `n_images` pool images scored by round 4's model."""
    from labelwise.loop import Workspace
    from labelwise.store import Store, now

    rng = np.random.default_rng(seed)
    src = root.parent / f"{root.name}-images"
    src.mkdir(parents=True, exist_ok=True)
    (src / "README.txt").write_text("the benchmark's pool rows point at files that do not exist; none is opened\n")
    t0 = time.perf_counter()
    ws = Workspace.create(root, images=[src], classes=CLASSES, model="yolo11n.yaml", imgsz=320)
    ws.ingest_sources(progress=False)  # finishes the init (the folder holds no image)
    store: Store = ws.store
    timings: dict[str, float] = {}

    t = time.perf_counter()
    stamp = now()
    hashes = rng.integers(-2**63, 2**63 - 1, size=(n_images + N_VAL, 2), dtype=np.int64)
    with store.transaction() as c:
        for start in range(0, n_images + N_VAL, 100_000):
            rows = []
            for i in range(start, min(n_images + N_VAL, start + 100_000)):
                sha = hashlib.sha256(f"image-{seed}-{i}".encode()).hexdigest()
                split = "val" if i >= n_images else "pool"
                state = "labeled" if (i < N_LABELED or split == "val") else "unlabeled"
                rows.append((sha, f"/data/pool/{i // 1000:04d}/img_{i:07d}.jpg", 1280, 720, split, state, stamp,
                             int(hashes[i, 0]), int(hashes[i, 1])))
            c.executemany("INSERT INTO images(sha256, path, width, height, split, state, added_at, phash, dhash)"
                          " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        c.execute("INSERT INTO image_paths(path, image_id) SELECT path, id FROM images")
        labeled = c.execute("SELECT id FROM images WHERE state='labeled'").fetchall()
        labels = []
        for (image_id,) in labeled:
            boxes = [[int(rng.integers(0, N_CLASSES)), *np.round(rng.uniform(0.1, 0.9, 2), 6).tolist(),
                      *np.round(rng.uniform(0.02, 0.2, 2), 6).tolist()] for _ in range(int(rng.integers(1, 9)))]
            labels.append((image_id, json.dumps(boxes), 0, "bench", stamp))
        c.executemany("INSERT INTO labels(image_id, boxes, round, source, imported_at) VALUES (?, ?, ?, ?, ?)",
                      labels)
        c.executemany("INSERT INTO label_history(image_id, boxes, round, source, imported_at)"
                      " VALUES (?, ?, ?, ?, ?)", labels)
    timings["insert_images_s"] = time.perf_counter() - t

    # Rounds 1-3 finished, round 4 trained: its scores are written next, the step is then select.
    strategy = json.dumps(ws.config.strategy_for_round(4))
    for r, model_hash in enumerate(MODEL_HASHES, start=1):
        store.start_round(r, "train")
        store.update_round(r, step="done" if r < 4 else "score", strategy=strategy,
                           model_path=str(root / "rounds" / f"r{r:03d}" / "train" / "weights" / "best.pt"),
                           model_hash=model_hash, n_labeled=N_LABELED * r // 4, map50=0.3 + 0.1 * r,
                           map50_95=0.15 + 0.05 * r, per_class_ap50={c: 0.5 for c in CLASSES},
                           train_seconds=600.0, score_seconds=None, agreement=None if r == 1 else 0.8 + 0.04 * r)

    t = time.perf_counter()
    shas = [r[0] for r in store.conn.execute("SELECT sha256 FROM images WHERE split='pool' ORDER BY id")]
    for c0 in range(0, n_images, 100_000):
        emb_c, cls_c = synthetic_embeddings(min(100_000, n_images - c0), seed=seed, start=c0)
        for start in range(c0, c0 + len(cls_c), WRITE_CHUNK):
            stop = min(c0 + len(cls_c), start + WRITE_CHUNK)
            dets = _detections(emb_c[start - c0:stop - c0], cls_c[start - c0:stop - c0],
                               np.random.default_rng([seed, 1, start]))
            store.put_detections(MODEL_HASHES[-1], 320, zip(shas[start:stop], dets), round_no=4)
        print(f"    {c0 + len(cls_c):,} images scored in {time.perf_counter() - t:.0f} s", flush=True)
    timings["write_detections_s"] = time.perf_counter() - t
    store.update_round(4, step="select", score_seconds=timings["write_detections_s"])
    store.close()
    timings["build_s"] = time.perf_counter() - t0
    timings["store_mb"] = _size_mb(root)
    timings["sqlite_mb"] = sum(p.stat().st_size for p in root.glob("labelwise.db*")) / 2**20
    timings["vectors_mb"] = _size_mb(root / "vectors")
    timings["n_images"] = n_images
    return timings


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


# -- measurements, each in its own interpreter ---------------------------------------------------------------------

_CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, {src!r}); sys.path.insert(0, {bench!r})

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

def peak_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024

def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False

from labelwise.loop import Workspace
import numpy as np
root = {root!r}
what = {what!r}
out = {{}}
if what == "status":
    t = time.perf_counter(); s = Workspace(root).status(); out["seconds"] = time.perf_counter() - t
    out["counts"] = s.counts
elif what.startswith("select"):
    strategy = None if what == "select" else what.split(":", 1)[1]
    ws = Workspace(root)
    import labelwise.selection, labelwise.diversity  # imported by the call anyway; their import is not its memory
    before = rss_mb(); out["peak_reset"] = reset_peak()
    t = time.perf_counter(); picks = ws.select(k={k}, strategy=strategy); out["seconds"] = time.perf_counter() - t
    out["extra_mb"] = (peak_mb() if out["peak_reset"] else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024) - before
    out["rss_before_mb"] = before
    out["picked"] = sum(1 for p in picks if "validation" not in p["components"])
    out["reasons"] = [p["reason"] for p in picks[:2]]
elif what == "radius":
    from labelwise.diversity import (_farthest_first, approximate_farthest_first, central_point, covering_radius,
                                     l2_normalise, principal_projection)
    from threadpoolctl import threadpool_limits
    ws = Workspace(root)
    st = ws.ctx.store
    ids = st.image_ids("pool", "unlabeled")
    sub = np.sort(np.random.default_rng(0).choice(ids, {sub}, replace=False))
    r = st.current_round()
    pool = st.scored_pool(sub, r.model_hash, ws.ctx.config.imgsz)
    e = pool.embeddings.astype(np.float32)
    x = l2_normalise(e - e.mean(axis=0))
    first = central_point(x)
    with threadpool_limits(limits=1, user_api="blas"):
        t = time.perf_counter(); ex = _farthest_first(x, {k}, first=first); out["exact_s"] = time.perf_counter() - t
        t = time.perf_counter(); ap = approximate_farthest_first(x, {k}, first=first)
        out["approx_s"] = time.perf_counter() - t
    out["rank"] = int(principal_projection(x, fit_rows=np.arange(20_000))[1].shape[1])
    out["exact_radius"] = covering_radius(x, ex.picks)
    out["approx_radius"] = covering_radius(x, ap.picks)
    out["ratio"] = out["approx_radius"] / out["exact_radius"]
    out["same_picks"] = len(set(ex.picks.tolist()) & set(ap.picks.tolist()))
elif what == "kcenter1m":
    from labelwise.diversity import UnitRows, _nearest, approximate_farthest_first, _farthest_first, central_point
    from threadpoolctl import threadpool_limits
    ws = Workspace(root)
    st = ws.ctx.store
    ids = st.image_ids("pool", "unlabeled")
    r = st.current_round()
    pool = st.scored_pool(ids, r.model_hash, ws.ctx.config.imgsz, embedding_dtype=np.float16)
    centre = pool.embeddings.mean(axis=0, dtype=np.float64).astype(np.float32)
    x = UnitRows(pool.embeddings, centre)
    first = central_point(x)
    def radius(picks):
        c = x[np.asarray(picks)]
        best = 0.0
        for a in range(0, x.shape[0], 65536):
            rows = x[a:a + 65536]
            d2, _ = _nearest(rows, np.einsum("ij,ij->i", rows, rows), c, np.einsum("ij,ij->i", c, c))
            best = max(best, float(d2.max()))
        return best ** 0.5
    with threadpool_limits(limits=1, user_api="blas"):
        t = time.perf_counter(); ap = approximate_farthest_first(x, {k}, first=first)
        out["approx_s"] = time.perf_counter() - t
        t = time.perf_counter(); ex = _farthest_first(x, {k}, first=first); out["exact_s"] = time.perf_counter() - t
    out["n"] = int(x.shape[0])
    out["exact_radius"] = radius(ex.picks)
    out["approx_radius"] = radius(ap.picks)
    out["ratio"] = out["approx_radius"] / out["exact_radius"]
print("RESULT " + json.dumps(out))
"""


def reset_to_select(root: Path) -> None:
    """Round 4 back at step select with no batch (as after `labelwise score`), so every timed select is a first
    selection, not a re-selection (which also takes the earlier batch back from the annotation backend)."""
    import sqlite3

    con = sqlite3.connect(root / "labelwise.db")
    with con:
        con.execute("UPDATE images SET state='unlabeled' WHERE state='selected'")
        con.execute("DELETE FROM selections WHERE round=4")
        con.execute("DELETE FROM duplicate_skips WHERE round=4")
        con.execute("UPDATE rounds SET step='select' WHERE round=4")
    con.close()


def child(root: Path, what: str, k: int = 1000, sub: int = 100_000) -> dict:
    code = _CHILD.format(src=str(ROOT / "src"), bench=str(ROOT / "benchmarks"), root=str(root), what=what, k=k,
                         sub=sub)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{what} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def cli(root: Path, *args: str) -> float:
    exe = Path(sys.executable).with_name("labelwise")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "labelwise"]
    t = time.perf_counter()
    res = subprocess.run([*cmd, *args, "-w", str(root)], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "120"})
    took = time.perf_counter() - t
    if res.returncode != 0:
        raise RuntimeError(f"labelwise {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return took


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1_000_000)
    ap.add_argument("--root", type=Path, default=ROOT / "benchmarks" / "out" / "million")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--skip", default="", help="comma-separated: status, select, reselect, coreset, cli, radius, kcenter1m")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    ws = args.root / "ws"
    meta = args.root / "build.json"
    report: dict = {"bench": "million", "machine": f"{platform.platform()}, {len(os.sched_getaffinity(0))} CPUs",
                    "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}
    built = json.loads(meta.read_text()) if meta.exists() else None
    if args.rebuild or built is None or built.get("n_images") != args.images or not ws.exists():
        if args.root.exists():
            shutil.rmtree(args.root)
        args.root.mkdir(parents=True)
        print(f"building a workspace of {args.images:,} scored pool images in {ws} ...", flush=True)
        built = build(ws, args.images)
        meta.write_text(json.dumps(built, indent=1))
    report["build"] = built
    print(f"  store: {built['store_mb']:,.0f} MB (SQLite {built['sqlite_mb']:,.0f} MB, vectors "
          f"{built['vectors_mb']:,.0f} MB), built in {built['build_s']:.0f} s (images {built['insert_images_s']:.0f} s,"
          f" detections {built['write_detections_s']:.0f} s)", flush=True)
    results = report["results"] = {}

    def show(name: str, value: float, unit: str, target: float) -> None:
        ok = value < target
        print(f"  {name:<58} {value:9.2f} {unit:<3} {'PASS' if ok else 'MISS'} (< {target:g})", flush=True)

    if "status" not in skip:
        results["status_cli_s"] = cli(ws, "status")
        show("labelwise status (CLI subprocess)", results["status_cli_s"], "s", TARGETS["status_s"])
        results["status_api"] = child(ws, "status")
        show("Workspace.status()", results["status_api"]["seconds"], "s", TARGETS["status_s"])
    if "select" not in skip:
        reset_to_select(ws)
        r = results["select_default"] = child(ws, "select")
        show("Workspace.select(k=1000) [hybrid, the default]", r["seconds"], "s", TARGETS["select_s"])
        show("  its peak extra memory", r["extra_mb"] / 1024, "GB", TARGETS["select_extra_gb"])
    if "reselect" not in skip:  # at step annotate now: the earlier batch is taken back first
        r = results["reselect_default"] = child(ws, "select")
        show("  the same again: a re-selection (earlier batch taken back)", r["seconds"], "s", TARGETS["select_s"])
        show("  its peak extra memory", r["extra_mb"] / 1024, "GB", TARGETS["select_extra_gb"])
    if "coreset" not in skip:
        reset_to_select(ws)
        r = results["select_coreset"] = child(ws, "select:coreset")
        show("Workspace.select(k=1000, strategy='coreset')", r["seconds"], "s", TARGETS["select_s"])
        show("  its peak extra memory", r["extra_mb"] / 1024, "GB", TARGETS["select_extra_gb"])
    if "cli" not in skip:
        reset_to_select(ws)
        results["select_cli_s"] = cli(ws, "select", "--k", "1000")
        show("labelwise select --k 1000 (CLI subprocess)", results["select_cli_s"], "s", TARGETS["select_s"])
    if "radius" not in skip:
        r = results["radius"] = child(ws, "radius", sub=min(100_000, args.images - N_LABELED))
        print(f"  k-center k=1000 on a 100,000 subsample: exact {r['exact_radius']:.4f} in {r['exact_s']:.1f} s, "
              f"approximate (rank {r['rank']}) {r['approx_radius']:.4f} in {r['approx_s']:.1f} s", flush=True)
        show("  covering radius, approximate / exact", r["ratio"], "", TARGETS["radius_ratio"])
    if "kcenter1m" not in skip:
        r = results["kcenter_full_pool"] = child(ws, "kcenter1m")
        print(f"  k-center k=1000 on all {r['n']:,} pool images (one BLAS thread): exact {r['exact_radius']:.4f} in "
              f"{r['exact_s']:.1f} s, approximate {r['approx_radius']:.4f} in {r['approx_s']:.1f} s, ratio "
              f"{r['ratio']:.3f}", flush=True)
    text = json.dumps(report, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
