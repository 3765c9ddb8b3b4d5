"""A real Label Studio server for the tests, started on 127.0.0.1 from a copy of a cached initialised data dir.

Loaded as a pytest plugin from tests/conftest.py (`pytest_plugins = ["label_studio_server"]`). The server lives in its
own virtual environment, `.venv-label-studio`, which `make test` creates with `scripts/label-studio.sh init` (Label
Studio pins its own Django, numpy and opencv, so it never goes into `.venv`). Without that venv the server tests FAIL
and say so; set LABELWISE_SKIP_SERVER=1 to skip them on purpose.

The user and token are fixed TEST credentials of a throw-away server bound to the loopback interface (they must be
known before the database exists: Label Studio only honours them when it creates the database).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
LS_VENV = Path(os.environ.get("LS_VENV", REPO / ".venv-label-studio"))
if not LS_VENV.is_absolute():
    LS_VENV = REPO / LS_VENV
LS_BIN = LS_VENV / "bin" / "label-studio"
LS_INIT_DIR = Path(os.environ.get("LS_INIT_DIR", LS_VENV / "initialised-data"))
if not LS_INIT_DIR.is_absolute():
    LS_INIT_DIR = REPO / LS_INIT_DIR
SCRIPT = REPO / "scripts" / "label-studio.sh"
# The same defaults as scripts/label-studio.sh (which builds the data dir with them).
TEST_USER = os.environ.get("LABELWISE_TEST_LS_USER", "tester@labelwise.local")
TEST_PASSWORD = os.environ.get("LABELWISE_TEST_LS_PASSWORD", "labelwise-test-password")
TEST_TOKEN = os.environ.get("LABELWISE_TEST_LS_TOKEN", "labelwise0test0token0for0loopback0only")
START_TIMEOUT_S = float(os.environ.get("LABELWISE_LS_START_TIMEOUT", "240"))


@dataclass(frozen=True)
class LabelStudioServer:
    url: str
    token: str
    document_root: Path  # LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT of the server
    data_dir: Path
    log_path: Path
    startup_s: float
    pid: int

    def client(self) -> httpx.Client:
        """A plain HTTP client with the test token, for simulating annotators."""
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Token {self.token}"}, timeout=30.0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(data_dir: Path, document_root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"HOST", "PORT", "USERNAME", "PASSWORD", "DEBUG"}}
    env.pop("LABEL_STUDIO_API_KEY", None)
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        LABEL_STUDIO_USERNAME=TEST_USER,
        LABEL_STUDIO_PASSWORD=TEST_PASSWORD,
        LABEL_STUDIO_USER_TOKEN=TEST_TOKEN,
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(document_root),
        # The webhook test registers a receiver on 127.0.0.1, which SSRF protection refuses (403).
        LABEL_STUDIO_SSRF_PROTECTION_ENABLED="false",
        LABEL_STUDIO_LATEST_VERSION_CHECK="false",
        SENTRY_DSN="",
        FRONTEND_SENTRY_DSN="",
    )
    return env


def ensure_installed() -> None:
    """Fail (not skip) when the server venv is missing: CI must run these tests."""
    if not LS_BIN.exists():
        pytest.fail(
            f"Label Studio is not installed in {LS_VENV}. Run `make test` (it runs scripts/label-studio.sh init, "
            "about 3 minutes once), or set LABELWISE_SKIP_SERVER=1 to skip the server tests on purpose.",
            pytrace=False,
        )
    if not (LS_INIT_DIR / ".initialised").exists():
        # The venv is there but not the cached data dir (e.g. made by hand): build it once (~80 s).
        proc = subprocess.run(["bash", str(SCRIPT), "init"], cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.fail(f"scripts/label-studio.sh init failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}", pytrace=False)


def start_server(data_dir: Path, document_root: Path, log_path: Path) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(log_path, "wb")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [str(LS_BIN), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port)],
        cwd=data_dir,
        env=server_env(data_dir, document_root),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    while True:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            pytest.fail(f"Label Studio exited with code {proc.returncode} during start-up; log tail:\n{tail}", pytrace=False)
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return proc, url, time.monotonic() - t0
        except httpx.HTTPError:
            pass
        if time.monotonic() - t0 > START_TIMEOUT_S:
            stop_server(proc)
            tail = log_path.read_text(errors="replace")[-3000:]
            pytest.fail(f"Label Studio did not answer /health within {START_TIMEOUT_S:.0f} s; log tail:\n{tail}", pytrace=False)
        time.sleep(0.5)


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


@pytest.fixture(scope="session")
def label_studio_server(tmp_path_factory: pytest.TempPathFactory):
    """A running Label Studio on 127.0.0.1 (a free port), stopped with SIGTERM at the end of the session."""
    if os.environ.get("LABELWISE_SKIP_SERVER") == "1":
        pytest.skip("LABELWISE_SKIP_SERVER=1: Label Studio server tests skipped on purpose")
    ensure_installed()
    base = tmp_path_factory.mktemp("label-studio")
    data_dir = base / "data"
    shutil.copytree(LS_INIT_DIR, data_dir)
    document_root = base / "docroot"
    document_root.mkdir()
    log_path = base / "server.log"
    proc, url, startup_s = start_server(data_dir, document_root, log_path)
    print(f"\nLabel Studio answered /health after {startup_s:.1f} s at {url}")
    try:
        yield LabelStudioServer(url, TEST_TOKEN, document_root, data_dir, log_path, startup_s, proc.pid)
    finally:
        stop_server(proc)
