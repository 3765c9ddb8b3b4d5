"""labelwise.cores: usable cores from the affinity mask and the cgroup quota (never the machine's count), the torch
thread setting, and the load-average hint. cgroup files are faked under tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from labelwise import cores


@pytest.fixture
def machine(monkeypatch):
    """Eight cores in the affinity mask on a 64-core machine whose count must never be used."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)

    def forbidden():
        raise AssertionError("os.cpu_count() counts the machine, not the process")

    monkeypatch.setattr(os, "cpu_count", forbidden)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_without_cgroup_files_the_affinity_mask_counts(machine, tmp_path):
    assert cores.usable_cores(tmp_path / "none", tmp_path / "no-proc") == 8
    assert cores.cgroup_cpu_quota(tmp_path / "none", tmp_path / "no-proc") is None


@pytest.mark.parametrize(("cpu_max", "expected"), [("200000 100000\n", 2), ("150000 100000", 2), ("50000 100000", 1),
                                                   ("max 100000\n", 8), ("1600000 100000", 8), ("garbage", 8)])
def test_a_cgroup_v2_quota_caps_the_count_rounded_up(machine, tmp_path, cpu_max, expected):
    _write(tmp_path / "cpu.max", cpu_max)
    assert cores.usable_cores(tmp_path, tmp_path / "no-proc") == expected


@pytest.mark.parametrize(("quota", "period", "expected"), [("300000", "100000", 3), ("-1", "100000", 8),
                                                           ("25000", "100000", 1), ("250000", "100000", 3)])
def test_a_cgroup_v1_quota_caps_the_count(machine, tmp_path, quota, period, expected):
    _write(tmp_path / "cpu,cpuacct" / "cpu.cfs_quota_us", quota + "\n")
    _write(tmp_path / "cpu,cpuacct" / "cpu.cfs_period_us", period + "\n")
    assert cores.usable_cores(tmp_path, tmp_path / "no-proc") == expected


def test_the_tightest_quota_on_the_way_from_the_process_cgroup_to_the_root_counts(machine, tmp_path):
    proc = tmp_path / "proc-self-cgroup"
    _write(proc, "0::/system.slice/job.scope\n")
    root = tmp_path / "cg"
    _write(root / "cpu.max", "max 100000")
    _write(root / "system.slice" / "cpu.max", "300000 100000")
    _write(root / "system.slice" / "job.scope" / "cpu.max", "max 100000")
    assert cores.usable_cores(root, proc) == 3
    _write(proc, "12:cpu,cpuacct:/docker/abc\n5:memory:/docker/abc\n")  # v1 in a container: its cgroup is the mount
    _write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "200000")
    _write(root / "cpu,cpuacct" / "cpu.cfs_period_us", "100000")
    (root / "cpu.max").write_text("max 100000")
    assert cores.usable_cores(root, proc) == 2


def test_the_affinity_mask_caps_a_generous_quota(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    _write(tmp_path / "cpu.max", "400000 100000")
    assert cores.usable_cores(tmp_path, tmp_path / "no-proc") == 1


def test_threads_an_explicit_setting_wins_then_omp_then_the_usable_cores(machine, monkeypatch):
    monkeypatch.setattr(cores, "usable_cores", lambda *a, **k: 5)
    assert cores.resolve_threads(None) == 5
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cores.resolve_threads(None) == 3
    assert cores.resolve_threads(2) == 2
    for bad in ("", "zero", "0", "-2", "2,1"):
        monkeypatch.setenv("OMP_NUM_THREADS", bad)
        assert cores.resolve_threads(None) == 5, bad
    assert cores.resolve_threads(None, environ={"OMP_NUM_THREADS": "7"}) == 7
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads"):
            cores.resolve_threads(bad)


def test_a_load_average_above_the_usable_cores_gives_a_one_line_hint(monkeypatch):
    hint = cores.load_hint(2, load=4.8)
    assert hint == ("load average 4.8 on 2 usable cores: other processes share the CPU; `--threads 1` keeps each "
                    "fair")
    assert "\n" not in hint
    assert cores.load_hint(2, load=1.9) is None
    assert cores.load_hint(2, load=2.0) is None
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 1.0, 1.0))
    assert cores.load_hint(4).startswith("load average 9.0 on 4 usable cores")

    def unavailable():
        raise OSError("no load average here")

    monkeypatch.setattr(os, "getloadavg", unavailable)
    assert cores.load_hint(4) is None


def test_on_this_machine_the_count_is_sane():
    n = cores.usable_cores()
    assert 1 <= n <= len(os.sched_getaffinity(0))


def test_importing_labelwise_makes_openmp_threads_wait_passively_unless_the_user_chose():
    import subprocess
    import sys

    code = "import os, labelwise; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "ACTIVE"
