"""Two `labelwise simulate` runs side by side on one machine: every process on every core, or `--threads 1` each.

Issue 9 measured `make demo` 8.6x slower while two other processes trained YOLO beside it. Each process set torch to
all the cores, so N processes ran N x cores compute threads that spun against each other. This benchmark times, in
one run and on the same synthetic dataset:

1. one simulation alone with the default threads (the usable cores): the reference;
2. two simulations at once, each with the default threads;
3. two simulations at once, each with `--threads 1`.

It reports the wall time of each case and the ratios. With fair sharing two runs at once should take about twice the
time of one, whatever the threads; anything above that is contention.

    python benchmarks/bench_threads.py --out benchmarks/out/threads
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _simulate_cmd(data_yaml: Path, out: Path, threads: int | None, epochs: int, imgsz: int) -> list[str]:
    cmd = [str(Path(sys.executable).parent / "labelwise"), "simulate", "--data", str(data_yaml), "--out", str(out),
           "--strategies", "random", "--seeds", "1", "--initial", "40", "--per-round", "40", "--rounds", "2",
           "--epochs", str(epochs), "--imgsz", str(imgsz), "--model", "yolo11n.yaml", "--quiet"]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    return cmd


def _run_together(cmds: list[list[str]]) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    started = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in cmds]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"simulate failed ({p.returncode}): {err[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "threads")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=128)
    args = parser.parse_args()

    from labelwise import synthetic
    from labelwise.cores import usable_cores

    data = synthetic.generate(args.out / "data", synthetic.ScenarioSpec(n_train=240, n_val=60, image_size=128))
    data_yaml = data if data.suffix == ".yaml" else data / "data.yaml"
    cores = usable_cores()

    def fresh(name: str) -> Path:
        path = args.out / name
        subprocess.run(["rm", "-rf", str(path)], check=True)
        return path

    results: dict = {"usable_cores": cores, "load_average_at_start": os.getloadavg()[0],
                     "epochs": args.epochs, "imgsz": args.imgsz}
    results["one_alone_default_s"] = round(_run_together(
        [_simulate_cmd(data_yaml, fresh("alone"), None, args.epochs, args.imgsz)]), 1)
    results["two_at_once_default_s"] = round(_run_together(
        [_simulate_cmd(data_yaml, fresh(f"default{i}"), None, args.epochs, args.imgsz) for i in range(2)]), 1)
    results["two_at_once_threads1_s"] = round(_run_together(
        [_simulate_cmd(data_yaml, fresh(f"one{i}"), 1, args.epochs, args.imgsz) for i in range(2)]), 1)
    alone = results["one_alone_default_s"]
    results["slowdown_two_default"] = round(results["two_at_once_default_s"] / alone, 2)
    results["slowdown_two_threads1"] = round(results["two_at_once_threads1_s"] / alone, 2)
    results["threads1_vs_default_two_at_once"] = round(
        results["two_at_once_default_s"] / results["two_at_once_threads1_s"], 2)
    (args.out / "bench_threads.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
