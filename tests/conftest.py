# Shared pytest set-up. Append; do not remove other people's lines.
pytest_plugins = ["label_studio_server"]  # the real Label Studio server fixture (tests/label_studio_server.py)


import os  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def quiet_load_average(monkeypatch):
    """The CLI adds a note when the machine's load average exceeds its cores, which it often does while the suite
    runs; tests that read the CLI's output would then depend on the machine. Tests of the note patch it back."""
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))


from pathlib import Path  # noqa: E402

_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def aquarium() -> Path:
    """The aquarium photographs, read in place ($LABELWISE_AQUARIUM, else ../shared/datasets/aquarium)."""
    root = Path(os.environ.get("LABELWISE_AQUARIUM") or _ROOT.parent / "shared" / "datasets" / "aquarium")
    if os.environ.get("LABELWISE_SKIP_REALDATA") == "1":
        pytest.skip("LABELWISE_SKIP_REALDATA=1")
    if not (root / "data.yaml").exists():
        pytest.fail(f"the aquarium dataset is not at {root}; set LABELWISE_AQUARIUM to its folder "
                    "(or LABELWISE_SKIP_REALDATA=1 to skip on purpose)")
    return root


@pytest.fixture(scope="session")
def checkpoint() -> Path:
    """The one pretrained checkpoint these machines can reach (`make test` fetches it)."""
    import sys

    sys.path.insert(0, str(_ROOT / "benchmarks"))
    from pretrained import TARGET  # noqa: E402

    path = Path(os.environ.get("LABELWISE_PRETRAINED") or TARGET)
    if not path.exists():
        pytest.fail(f"the pretrained checkpoint is not at {path}: `make test` fetches it "
                    "(.venv/bin/python benchmarks/pretrained.py)")
    return path
