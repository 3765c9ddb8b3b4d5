"""Benchmark (issue 10): the Ray engine's overhead against the local engine, on the same cores and the same images.

Target: Ray scoring throughput within 15% of the local engine's.

What is timed, for each engine, on the first N aquarium training photos (real JPEGs, 1024x768-ish) at `--imgsz`:
  one scoring pass (`workflow.scoring.score_images_report`, as `labelwise score` runs it): reading, decoding, the
  fused one-pass scorer, writing the shards and registering them; loading the weights included for both engines.
  Each pass runs in a fresh workspace (nothing cached) of N1, then N2 photos; ingest holds 30 of them back as the
  validation set, so a pass scores N1 - 30 (N2 - 30) images:
    wall      seconds of the pass of N2 images (images/s = N2 / wall)
    marginal  (N2 - N1) / (wall(N2) - wall(N1)): the steady-state throughput, the fixed costs (Ray's actor start, the
              weights loaded, the first chunk) taken out, which is what decides a pool of a million images
The Ray engine runs on a local Ray started once by this script (`ray.init(num_cpus=CORES)`, its start timed apart:
`labelwise score --engine ray` without an address pays it every run), with one CPU actor, in two layouts:
  ray          decoding in Ray tasks of their own, beside the actor (the engine's default)
  ray-fused    decoding fused into the actor by Ray Data (`RayEngine(decode_in_actor=True)`)
Both engines use the same torch threads (`--threads`, default: every usable core) and the same chunks (score.batch).
The engines are interleaved and each measured `--repeat` times; the median is reported.

CPU seconds: the user + system time, before and after each pass, of this process for the local engine, and of this
process and every process under it for Ray (a local Ray's raylet, actors and workers are children of this process). On a machine that
other work shares, wall-clock times measure the share of the cores each engine won (Ray's several processes win a
larger share than one process), while images per CPU second measure the work each engine does per image: the
throughput the cores would give with nothing else running is cores x images per CPU second (when the engine keeps
every core busy). The load average before each pass is recorded.

Model: the pretrained YOLOv8s checkpoint `make test` fetches (benchmarks/pretrained.py), so the boxes and NMS cost are
those of a real model on real photos.

Run: `.venv/bin/python benchmarks/bench_ray.py [--images 200 400] [--imgsz 320] [--repeat 2] [--json FILE]`
(about 6 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def aquarium() -> Path:
    return Path(os.environ.get("LABELWISE_AQUARIUM") or ROOT.parent / "shared" / "datasets" / "aquarium")


def tree_cpu_seconds(tree: bool) -> dict[int, float]:
    """CPU seconds (user + system) used so far by this process and, with `tree`, every process under it (the Ray
    driver with its raylet, actors and task workers: a local Ray started by this process), each with the processes
    it has reaped (an actor that ended during the pass counts through the raylet)."""
    import psutil

    me = psutil.Process()
    out = {}
    for proc in [me, *(me.children(recursive=True) if tree else [])]:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        # children_*: processes this one has reaped, e.g. the actors the raylet ended when the pass finished
        out[proc.pid] = t.user + t.system + t.children_user + t.children_system
    return out


def make_workspace(folder: Path, images: list[Path], checkpoint: Path, imgsz: int, batch: int):
    from labelwise.loop import Workspace

    (folder / "imgs").mkdir(parents=True)
    for p in images:
        os.symlink(p, folder / "imgs" / p.name)
    ws = Workspace.create(folder / "ws", images=[folder / "imgs"], classes=["a", "b"], model=str(checkpoint),
                          imgsz=imgsz, score={"batch": batch})
    ws.ingest_sources(progress=False)
    return folder / "ws"


def one_pass(engine_name: str, folder: Path, images: list[Path], checkpoint: Path, imgsz: int, batch: int,
             threads: int) -> tuple[float, float, int, int]:
    """(seconds, CPU seconds, images scored, boxes found) of one pass in a fresh workspace of `images` (ingest holds
    some back for validation: those are not scored)."""
    from labelwise.engines.local import LocalEngine
    from labelwise.engines.ray import RayEngine
    from labelwise.loop import Workspace
    from labelwise.workflow import scoring

    root = make_workspace(folder, images, checkpoint, imgsz, batch)
    ws = Workspace(root, threads=threads)
    engine = {"local": LocalEngine, "ray": RayEngine,
              "ray-fused": lambda: RayEngine(decode_in_actor=True)}[engine_name]()
    tree = engine_name != "local"  # the local engine: this process alone (the idle Ray beside it is not its cost)
    cpu_before = tree_cpu_seconds(tree)
    started = time.perf_counter()
    report = scoring.score_images_report(ws.ctx, checkpoint, "bench", engine=engine, progress=False)
    seconds = time.perf_counter() - started
    cpu = sum(max(0.0, t - cpu_before.get(pid, 0.0)) for pid, t in tree_cpu_seconds(tree).items())
    assert report.scored == len(ws.store.images(split="pool")) and not report.quarantined, report
    boxes = sum(d.n_boxes for d in ws.store.detections_many([i.sha256 for i in ws.store.images()], "bench",
                                                            imgsz).values())
    ws.store.close()
    return seconds, cpu, report.scored, boxes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, nargs=2, default=[200, 400])
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--engines", nargs="+", default=["local", "ray", "ray-fused"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import ray

    from labelwise.cores import usable_cores
    from pretrained import TARGET

    checkpoint = Path(os.environ.get("LABELWISE_PRETRAINED") or TARGET)
    if not checkpoint.exists():
        sys.exit(f"no checkpoint at {checkpoint}: run .venv/bin/python benchmarks/pretrained.py")
    cores = usable_cores()
    threads = args.threads or cores
    photos = sorted((aquarium() / "train" / "images").iterdir())
    n1, n2 = args.images
    if len(photos) < n2:
        sys.exit(f"{len(photos)} photos in {aquarium()}/train/images, fewer than {n2}")
    started = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    ray_start = time.perf_counter() - started
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    results: dict[str, dict[int, list[float]]] = {e: {n1: [], n2: []} for e in args.engines}
    cpu_results: dict[str, dict[int, list[float]]] = {e: {n1: [], n2: []} for e in args.engines}
    loads: list[float] = []
    boxes: dict[str, int] = {}
    scored: dict[int, int] = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        for r in range(args.repeat):
            order = args.engines[r % len(args.engines):] + args.engines[:r % len(args.engines)]
            for n in (n1, n2):
                for name in order:
                    folder = tmp / f"{name}-{n}-{r}"
                    loads.append(os.getloadavg()[0])
                    seconds, cpu, count, nboxes = one_pass(name, folder, photos[:n], checkpoint, args.imgsz,
                                                           args.batch, threads)
                    results[name][n].append(seconds)
                    cpu_results[name][n].append(cpu)
                    boxes[f"{name}-{n}"] = nboxes
                    scored[n] = count
                    shutil.rmtree(folder, ignore_errors=True)
                    print(f"repeat {r}: {name:9s} {count} images {seconds:6.1f} s  {count / seconds:5.1f} img/s  "
                          f"{cpu:6.1f} CPU s  {count / cpu:5.2f} img per CPU s  ({nboxes} boxes, load "
                          f"{loads[-1]:.1f})", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    summary = {}
    for name, by_n in results.items():
        w1, w2 = statistics.median(by_n[n1]), statistics.median(by_n[n2])
        s1, s2 = scored[n1], scored[n2]
        c1, c2 = statistics.median(cpu_results[name][n1]), statistics.median(cpu_results[name][n2])
        summary[name] = {"wall_s": {s1: round(w1, 2), s2: round(w2, 2)}, "img_s": round(s2 / w2, 2),
                         "marginal_img_s": round((s2 - s1) / (w2 - w1), 2) if w2 > w1 else None,
                         "cpu_s": {s1: round(c1, 2), s2: round(c2, 2)},
                         "img_per_cpu_s": round(s2 / c2, 3),
                         "marginal_img_per_cpu_s": round((s2 - s1) / (c2 - c1), 3) if c2 > c1 else None}
    local = summary.get("local")
    for name, row in summary.items():
        if local and name != "local":
            row["img_s_vs_local"] = round(row["img_s"] / local["img_s"], 3)
            if row["marginal_img_s"] and local["marginal_img_s"]:
                row["marginal_vs_local"] = round(row["marginal_img_s"] / local["marginal_img_s"], 3)
            row["img_per_cpu_s_vs_local"] = round(row["img_per_cpu_s"] / local["img_per_cpu_s"], 3)
            if row["marginal_img_per_cpu_s"] and local["marginal_img_per_cpu_s"]:
                row["marginal_img_per_cpu_s_vs_local"] = round(
                    row["marginal_img_per_cpu_s"] / local["marginal_img_per_cpu_s"], 3)
    out = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {cores} usable cores",
           "python": platform.python_version(), "ray": ray.__version__, "imgsz": args.imgsz, "batch": args.batch,
           "threads": threads, "photos": [n1, n2], "scored": [scored[n1], scored[n2]], "repeat": args.repeat, "model": checkpoint.name,
           "ray_init_s": round(ray_start, 2), "load_average_before_passes": [round(x, 2) for x in loads],
           "boxes": boxes, "engines": summary}
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
