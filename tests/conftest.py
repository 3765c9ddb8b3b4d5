# Shared pytest set-up. Append; do not remove other people's lines.
pytest_plugins = ["label_studio_server"]  # the real Label Studio server fixture (tests/label_studio_server.py)


import os  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def quiet_load_average(monkeypatch):
    """The CLI adds a note when the machine's load average exceeds its cores, which it often does while the suite
    runs; tests that read the CLI's output would then depend on the machine. Tests of the note patch it back."""
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
