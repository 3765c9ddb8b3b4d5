"""How many CPU cores this process may really use, and how many threads to give torch.

`os.cpu_count()` counts the machine's cores, not the process's: a container limited to 2 CPUs on a 64-core host
sees 64, and 64 threads then fight over 2 cores. The usable count is the CPU affinity mask (`os.sched_getaffinity`)
capped by the cgroup CPU quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`), quota / period rounded
up. Standard library only; no import side effects.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
_V1_CPU_DIRS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


def usable_cores(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """Cores this process may run on: the affinity mask, capped by the cgroup CPU quota; at least 1."""
    cores = _affinity_cores()
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _affinity_cores() -> int:
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is not None:
        return len(getaffinity(0))
    counter = getattr(os, "process_cpu_count", None)  # Python 3.13+: the affinity-aware count where there is one
    if counter is not None:
        return counter() or 1
    # macOS and Windows before Python 3.13 have no affinity call; there the machine's count is all there is.
    return os.cpu_count() or 1


def cgroup_cpu_quota(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The tightest CPU quota (in cores, quota / period) over this process's cgroup and its ancestors, v2 or v1;
    None where no quota is set or there are no cgroup files (not Linux)."""
    limits = []
    for folder in _cgroup_dirs(Path(cgroup_root), Path(proc_cgroup)):
        limit = _v2_limit(folder / "cpu.max")
        if limit is None:
            limit = _v1_limit(folder / "cpu.cfs_quota_us", folder / "cpu.cfs_period_us")
        if limit is not None:
            limits.append(limit)
    return min(limits) if limits else None


def _cgroup_dirs(root: Path, proc_cgroup: Path) -> list[Path]:
    """The root (a container sees its own cgroup there), the v1 cpu hierarchies under it, and the folders from this
    process's own cgroup (per /proc/self/cgroup) up to the root, where they exist."""
    bases = [root] + [root / name for name in _V1_CPU_DIRS]
    found = list(bases)
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers and "cpu" not in controllers.split(","):
            continue
        rel = path.strip().strip("/")
        if not rel or ".." in Path(rel).parts:
            continue
        for base in ([root] if not controllers else [root / controllers, root / "cpu"]):
            folder = base / rel
            while folder != base and base in folder.parents:
                found.append(folder)
                folder = folder.parent
    unique = list(dict.fromkeys(found))
    return [f for f in unique if f.is_dir()]


def _v2_limit(path: Path) -> float | None:
    """cgroup v2 `cpu.max`: "QUOTA PERIOD", or "max PERIOD" for no limit."""
    try:
        fields = path.read_text().split()
    except OSError:
        return None
    if not fields or fields[0] == "max":
        return None
    try:
        quota = int(fields[0])
        period = int(fields[1]) if len(fields) > 1 else 100_000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_limit(quota_path: Path, period_path: Path) -> float | None:
    """cgroup v1: cpu.cfs_quota_us (-1 for no limit) over cpu.cfs_period_us."""
    try:
        quota = int(quota_path.read_text().strip())
        period = int(period_path.read_text().strip())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def resolve_threads(setting: int | None, environ: Mapping[str, str] | None = None) -> int:
    """Threads for torch: an explicit `setting` wins; else OMP_NUM_THREADS when it holds a positive integer (several
    processes sharing the cores each set their share there); else `usable_cores()`."""
    if setting is not None:
        if isinstance(setting, bool) or int(setting) != setting or setting < 1:
            raise ValueError(f"threads must be a whole number of at least 1, not {setting!r}")
        return int(setting)
    value = (os.environ if environ is None else environ).get("OMP_NUM_THREADS")
    if value is not None:
        try:
            threads = int(value.strip())
        except ValueError:
            threads = 0
        if threads >= 1:
            return threads
    return usable_cores()


def load_hint(cores: int, load: float | None = None) -> str | None:
    """A one-line hint when the 1-minute load average already exceeds the usable cores (other processes share the
    CPU, so every thread we add waits); None otherwise or where the system has no load average. `load` defaults to
    `os.getloadavg()[0]`."""
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            return None
    if load <= cores:
        return None
    return (f"load average {load:.1f} on {cores} usable core{'s' if cores != 1 else ''}: other processes share the "
            "CPU; `--threads 1` keeps each fair")


def prefer_passive_waiting(environ: dict[str, str] | None = None) -> None:
    """Let OpenMP threads sleep, not spin, while they wait for work: `OMP_WAIT_POLICY=PASSIVE` unless it is set.

    torch's OpenMP threads spin for a while at the end of every parallel region by default. Alone on a machine that
    costs nothing; beside any other busy process they burn the cores the others need. Measured with
    `benchmarks/bench_threads.py` (2 cores, 2026-11-27): with another job on the machine, one simulation took 224 s
    spinning and 25 s passive, and two side by side 341 s against 45 s. The runtime reads the variable when it
    loads, so this must run before torch is imported: `import labelwise` does it.
    """
    (os.environ if environ is None else environ).setdefault("OMP_WAIT_POLICY", "PASSIVE")
