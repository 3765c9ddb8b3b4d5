"""Run every benchmark of this folder (each `bench_*.py`, in name order), one after the other, each in its own process.

    .venv/bin/python benchmarks/run_all.py            # all of them
    .venv/bin/python benchmarks/run_all.py store      # only those whose name contains "store"

Each benchmark is also runnable alone (`.venv/bin/python benchmarks/bench_store.py`). Their output streams through
unchanged; a summary at the end lists each one's exit status and duration (exit 0: its targets were met). The exit
status of this runner is 0 only if every benchmark exited 0. Record the figures in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    benches = sorted(HERE.glob("bench_*.py"))
    if argv:
        benches = [b for b in benches if any(word in b.stem for word in argv)]
    if not benches:
        print(f"no benchmark matches {argv} in {HERE}")
        return 2
    print(f"run_all: {len(benches)} benchmark(s): {', '.join(b.name for b in benches)}\n"
          f"  {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.platform()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()} ({sys.executable})", flush=True)
    summary = []
    for bench in benches:
        print(f"\n=== {bench.name} ===", flush=True)
        started = time.perf_counter()
        rc = subprocess.call([sys.executable, str(bench)], cwd=HERE.parent)
        summary.append((bench.name, rc, time.perf_counter() - started))
    print("\n=== summary ===")
    for name, rc, seconds in summary:
        print(f"  {name:<24} {'ok' if rc == 0 else f'exit {rc} (a target missed or an error)':<42} {seconds:7.1f} s")
    return 0 if all(rc == 0 for _, rc, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
