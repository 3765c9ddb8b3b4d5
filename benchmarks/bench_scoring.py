"""Benchmark: the one-pass scorer against plain `model.predict` and a two-pass scorer; memory of `score` (issue 2).

Throughput (targets: one-pass >= 1.15x plain predict while returning more; >= 2x the two-pass scorer), measured in
ONE process, on the same images, same image size, same confidence threshold and the same torch threads (all cores,
checked before every timed call), the methods interleaved in a rotating order and the median of `--repeat` runs:
  (a) one-pass  `UltralyticsDetector.score`: boxes + full class-score vectors + per-box features + image embedding.
      Timed as the loop calls it, a whole call per run, loading and fusing the checkpoint included.
  (b) predict   `model.predict(paths, imgsz=, conf=, verbose=False, stream=True)`: boxes and top score only
      (Ultralytics' defaults otherwise, batch 1); (b8) the same with batch=8, the scorer's batch size.
  (c) two-pass  `model.predict` for the boxes, then `model.predict(embed=<Detect head input layers>)` for the
      image embeddings: still without full class vectors or box features.
The model is yolo11n built from `yolo11n.yaml` (80 classes) and saved as a checkpoint: nothing can be downloaded and
weight values do not change the network's cost. They do change NMS's: a freshly initialised head scores every anchor
near 0.0002, so no box passes conf 0.25. Two variants are therefore timed: `as-built` (no box survives the
threshold) and `busy` (the head's class biases raised by 8.0 so that about 15-20 boxes per image survive NMS, as
with a trained model on a crowded scene); the boxes per image each method returned are printed.
Images: the first `--images` (default 32) of $LABELWISE_AQUARIUM/valid/images (default
/work/shared/datasets/aquarium, real 1024x768-ish photos); if that folder is missing, generated 800x600 JPEGs.

Memory (target: flat as the pool grows): for each pool size (default 1,000 and 10,000 generated 128x96 JPEGs)
a fresh subprocess builds a workspace (`Workspace.create` + `add`), sets round 1 at step `score` with the checkpoint,
then runs `Workspace.score()` exactly as `labelwise score` does (streaming batches into the store in chunks of 64)
at `--mem-imgsz` (default 64). Peak RSS of the scoring step is read from /proc/self/status (VmHWM, reset through
/proc/self/clear_refs just before scoring; the RSS before scoring is printed too).

Defaults fit a shared 2-core machine in about 12 minutes; a quieter or bigger one can afford
`--imgsz 320 640 --images 64 --repeat 5 --mem-sizes 1000 5000 10000`.
Run alone: `.venv/bin/python benchmarks/bench_scoring.py [--imgsz 320 640] [--images 32] [--repeat 3]
[--variants as-built busy] [--mem-sizes 1000 10000] [--skip-memory] [--skip-throughput] [--json FILE]`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

CONF, IOU, BATCH = 0.25, 0.7, 8
BUSY_BIAS = 8.0
TARGET_PREDICT, TARGET_TWO_PASS = 1.15, 2.0


# -- set-up --------------------------------------------------------------------------------------------------------

def ultralytics_env(tmp: Path):
    """Ultralytics offline, its settings inside `tmp`, torch on every core (labelwise's own set-up)."""
    from labelwise.detectors.ultralytics import _ultralytics

    return _ultralytics(tmp / "ultralytics-config")


def build_checkpoints(ul, tmp: Path) -> dict[str, Path]:
    import torch

    out = {}
    for name, shift in (("as-built", 0.0), ("busy", BUSY_BIAS)):
        model = ul.YOLO("yolo11n.yaml")
        if shift:
            with torch.no_grad():
                for seq in model.model.model[-1].cv3:
                    seq[-1].bias += shift
        path = tmp / f"yolo11n-{name}.pt"
        model.save(path)
        out[name] = path
    return out


def generated_images(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """`n` distinct JPEGs (random rectangles on a gradient): different bytes, so different content hashes."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    base = np.linspace(0, 255, w, dtype=np.float32)[None, :, None].repeat(h, 0).repeat(3, 2)
    paths = []
    for i in range(n):
        img = (base * rng.uniform(0.3, 1.0, 3)).astype(np.uint8)
        for _ in range(int(rng.integers(1, 6))):
            x, y = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
            bw, bh = int(rng.integers(4, max(5, w // 3))), int(rng.integers(4, max(5, h // 3)))
            img[y:y + bh, x:x + bw] = rng.integers(0, 256, 3)
        img[i % h, (i // h) % w] = (i * 7) % 256, (i * 13) % 256, 255  # makes every file's bytes unique
        path = folder / f"img_{i:06d}.jpg"
        cv2.imwrite(str(path), img)
        paths.append(path)
    return paths


def benchmark_images(tmp: Path, n: int) -> tuple[list[Path], str]:
    root = Path(os.environ.get("LABELWISE_AQUARIUM", "/work/shared/datasets/aquarium"))
    found = sorted((root / "valid" / "images").glob("*.jpg"))[:n] if (root / "valid" / "images").is_dir() else []
    if len(found) == n:
        return found, f"{n} real photos from {root / 'valid' / 'images'}"
    return generated_images(tmp / "throughput-images", n, (800, 600)), f"{n} generated 800x600 JPEGs"


# -- throughput ----------------------------------------------------------------------------------------------------

def throughput(ul, checkpoint: Path, images: list[Path], imgsz: int, repeat: int, config_dir: Path) -> dict:
    import torch

    from labelwise.cores import usable_cores
    from labelwise.detectors.ultralytics import UltralyticsDetector

    threads = usable_cores()
    detector = UltralyticsDetector(config_dir)
    items = [(str(p), p) for p in images]
    paths = [str(p) for p in images]
    plain = ul.YOLO(str(checkpoint))
    plain8 = ul.YOLO(str(checkpoint))
    two = ul.YOLO(str(checkpoint))
    head = two.model.model[-1]
    embed_layers = [int(i) for i in head.f]  # the layers feeding the Detect head: [16, 19, 22] for yolo11n

    def one_pass() -> tuple[int, int]:
        out = list(detector.score(checkpoint, items, imgsz=imgsz, conf=CONF, iou=IOU, batch=BATCH, device="cpu"))
        return len(out), sum(d.n_boxes for _, d in out)

    def predict() -> tuple[int, int]:
        res = [len(r.boxes) for r in plain.predict(paths, imgsz=imgsz, conf=CONF, verbose=False, stream=True)]
        return len(res), sum(res)

    def predict8() -> tuple[int, int]:
        res = [len(r.boxes) for r in plain8.predict(paths, imgsz=imgsz, conf=CONF, verbose=False, stream=True,
                                                     batch=BATCH)]
        return len(res), sum(res)

    def two_pass() -> tuple[int, int]:
        boxes = [len(r.boxes) for r in two.predict(paths, imgsz=imgsz, conf=CONF, verbose=False, stream=True)]
        emb = [e for e in two.predict(paths, imgsz=imgsz, conf=CONF, verbose=False, stream=True, embed=embed_layers)]
        assert len(emb) == len(boxes), (len(emb), len(boxes))
        return len(boxes), sum(boxes)

    methods = {"one-pass": one_pass, "predict": predict, "predict-b8": predict8, "two-pass": two_pass}
    times: dict[str, list[float]] = {m: [] for m in methods}
    boxes: dict[str, float] = {}
    for name, fn in methods.items():  # warm-up: predictor set-up, first-call allocations
        fn()
    names = list(methods)
    for rep in range(repeat):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            if torch.get_num_threads() != threads:
                raise RuntimeError(f"torch runs {torch.get_num_threads()} threads, not {threads}, before {name}")
            t = time.perf_counter()
            n, nb = methods[name]()
            times[name].append(time.perf_counter() - t)
            boxes[name] = nb / n
    rate = {m: len(images) / statistics.median(ts) for m, ts in times.items()}
    return {
        "imgsz": imgsz, "n_images": len(images), "threads": threads, "embed_layers": embed_layers,
        "img_per_s": rate, "runs_s": times, "boxes_per_image": boxes,
        "ratio_vs_predict": rate["one-pass"] / rate["predict"],
        "ratio_vs_predict_b8": rate["one-pass"] / rate["predict-b8"],
        "ratio_vs_two_pass": rate["one-pass"] / rate["two-pass"],
    }


# -- memory --------------------------------------------------------------------------------------------------------

def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def memory_child(pool_dirs: list[Path], checkpoint: Path, imgsz: int, work: Path) -> dict:
    """In a fresh process: create a workspace over `pool_dirs`, then score it as `labelwise score` does."""
    from labelwise.detectors.ultralytics import prepare_environment

    prepare_environment(work / "ws" / ".ultralytics")
    from labelwise.fileio import sha256_file
    from labelwise.loop import Workspace

    ws = Workspace.create(work / "ws", images=pool_dirs, classes=[f"c{i}" for i in range(80)], imgsz=imgsz,
                          model="yolo11n.yaml",  # the round is set to score with the checkpoint below
                          score={"conf": CONF, "iou": IOU, "batch": BATCH})
    t = time.perf_counter()
    report = ws.ingest_sources(progress=False)
    add_s = time.perf_counter() - t
    ws.store.start_round(1, "score")
    ws.store.update_round(1, model_path=str(checkpoint), model_hash=sha256_file(checkpoint)[:16],
                          strategy=json.dumps({"name": "detection_and_confusion"}))
    import torch  # noqa: F401  (imported before the baseline so the baseline holds the libraries)
    import ultralytics  # noqa: F401

    rss_before = _status_kb("VmRSS")
    reset = True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        reset = False
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.25):
            samples.append(_status_kb("VmRSS"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t = time.perf_counter()
    n = ws.score(progress=False)
    score_s = time.perf_counter() - t
    stop.set()
    sampler.join()
    counts = _cached_rows_and_boxes(ws)
    q = len(samples) // 4 or 1
    return {
        "pool": report.added, "scored": n, "detections_rows": counts[0], "boxes": counts[1] or 0,
        "add_s": add_s, "score_s": score_s, "img_per_s": n / score_s if score_s else 0.0,
        "rss_before_mb": rss_before / 1024, "peak_rss_mb": _status_kb("VmHWM") / 1024, "hwm_reset": reset,
        "rss_end_mb": _status_kb("VmRSS") / 1024,
        "rss_quartiles_mb": [max(samples[i * q:(i + 1) * q] or [0]) / 1024 for i in range(4)],
    }


def _cached_rows_and_boxes(ws) -> tuple[int, int]:
    """Rows and boxes of the cached detections: the registered shards under vectors/ (labelwise.vectors)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    shards = ws.store.shards()
    values = sum(pc.sum(pc.list_value_length(pq.read_table(s["path"], columns=["boxes"]).column("boxes"))).as_py()
                 or 0 for s in shards)
    return sum(s["rows"] for s in shards), values // 4


def memory(tmp: Path, checkpoint: Path, sizes: list[int], imgsz: int) -> list[dict]:
    chunk = 1000
    total = max(sizes)
    pool = tmp / "memory-pool"
    dirs = []
    for start in range(0, total, chunk):  # one folder per 1,000 images, so a pool of N takes the first N/1000
        d = pool / f"part{start // chunk:03d}"
        generated_images(d, min(chunk, total - start), (128, 96), seed=1 + start // chunk)
        dirs.append(d)
    out = []
    for n in sizes:
        work = tmp / f"mem-{n}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        args = [sys.executable, __file__, "--memory-child", str(work), "--checkpoint", str(checkpoint),
                "--mem-imgsz", str(imgsz), "--pool-dirs", *[str(d) for d in dirs[: (n + chunk - 1) // chunk]]]
        res = subprocess.run(args, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"memory child for {n} images failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
        row = json.loads(res.stdout.strip().splitlines()[-1])
        row["n"] = n
        out.append(row)
        print(f"  pool {n:>6,}: scored {row['scored']:,} in {row['score_s']:.1f} s ({row['img_per_s']:.0f} img/s), "
              f"RSS before score {row['rss_before_mb']:.0f} MB, peak during score {row['peak_rss_mb']:.0f} MB, "
              f"end {row['rss_end_mb']:.0f} MB, per quarter {[round(x) for x in row['rss_quartiles_mb']]}",
              flush=True)
        shutil.rmtree(work, ignore_errors=True)
    return out


# -- main ----------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--imgsz", type=int, nargs="+", default=[320])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--variants", nargs="+", default=["as-built", "busy"], choices=["as-built", "busy"])
    ap.add_argument("--variants-640", nargs="+", default=["busy"], choices=["as-built", "busy"],
                    help="variants timed at image sizes above 320 (to save time)")
    ap.add_argument("--mem-sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--mem-imgsz", type=int, default=64)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--memory-child", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--pool-dirs", type=Path, nargs="*", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.memory_child:
        print(json.dumps(memory_child(args.pool_dirs, args.checkpoint, args.mem_imgsz, args.memory_child)))
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="lw-bench-scoring-"))
    result: dict = {"bench": "scoring", "conf": CONF, "iou": IOU, "batch": BATCH, "throughput": [], "memory": []}
    ok = True
    try:
        ul = ultralytics_env(tmp)
        import torch

        print(f"bench_scoring: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
              f"({torch.get_num_threads()} threads), ultralytics {ul.__version__}; conf {CONF}, iou {IOU}, "
              f"scorer batch {BATCH}", flush=True)
        checkpoints = build_checkpoints(ul, tmp)
        if not args.skip_throughput:
            images, where = benchmark_images(tmp, args.images)
            print(f"throughput on {where}, median of {args.repeat} runs each", flush=True)
            for imgsz in args.imgsz:
                for variant in (args.variants if imgsz <= 320 else args.variants_640):
                    r = throughput(ul, checkpoints[variant], images, imgsz, args.repeat, tmp / "ultralytics-config")
                    r["variant"] = variant
                    result["throughput"].append(r)
                    rate, nb = r["img_per_s"], r["boxes_per_image"]
                    good = r["ratio_vs_predict"] >= TARGET_PREDICT and r["ratio_vs_two_pass"] >= TARGET_TWO_PASS
                    ok &= good
                    print(f"  imgsz {imgsz} {variant:<8} " + "  ".join(
                        f"{m} {rate[m]:.1f} img/s ({nb[m]:.1f} boxes/img)" for m in rate), flush=True)
                    print(f"      one-pass / predict {r['ratio_vs_predict']:.2f}x (target {TARGET_PREDICT}x), "
                          f"/ predict batch 8 {r['ratio_vs_predict_b8']:.2f}x, / two-pass "
                          f"{r['ratio_vs_two_pass']:.2f}x (target {TARGET_TWO_PASS}x): "
                          f"{'PASS' if good else 'FAIL'}", flush=True)
        if not args.skip_memory:
            print(f"memory of Workspace.score() by pool size (imgsz {args.mem_imgsz}, generated 128x96 JPEGs, "
                  f"'busy' checkpoint, one subprocess per size)", flush=True)
            result["memory"] = memory(tmp, checkpoints["busy"], args.mem_sizes, args.mem_imgsz)
            mem = result["memory"]
            growth = mem[-1]["peak_rss_mb"] - mem[0]["peak_rss_mb"]
            result["memory_growth_mb"] = growth
            flat = growth <= max(50.0, 0.10 * mem[0]["peak_rss_mb"])
            ok &= flat
            print(f"  peak RSS growth {mem[0]['n']:,} -> {mem[-1]['n']:,} images: {growth:+.0f} MB "
                  f"({'flat: PASS' if flat else 'grows: FAIL'}; flat = within max(50 MB, 10%))", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["all_pass"] = ok
    print(f"bench_scoring: {'ALL PASS' if ok else 'SOME FAIL'}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
