"""The house rules that keep labelwise easy to change: a pure core, and imports without side effects.

The floors, bottom to top: the pure core; the adapters (store, pool, config, detectors, annotation backends); the
workflow (`labelwise.workflow`, one module per step); the Python API (`labelwise.loop`, a thin facade) and the CLI.
No import runs back up the floors.
"""

from __future__ import annotations

import json
import subprocess
import sys

CORE = ["uncertainty", "diversity", "committee", "consistency", "balance", "selection", "stopping", "savings",
        "boxes", "detections", "quality"]
IO_MODULES = ["sqlite3", "ultralytics", "torch", "httpx", "PIL", "cv2", "matplotlib", "labelwise.store",
              "labelwise.workflow", "labelwise.loop"]
ADAPTERS = ["store", "vectors", "pool", "config", "fileio", "archive", "progress", "detectors.base",
            "detectors.ultralytics", "annotation", "annotation.base", "annotation.folder"]
WORKFLOW = ["context", "ingest", "training", "scoring", "selecting", "annotating", "status", "rounds", "monitoring",
            "qa", "dividend"]
ABOVE_WORKFLOW = ["labelwise.loop", "labelwise.cli", "labelwise.simulate", "labelwise.demo", "labelwise.report"]


def _imported_after(imports: list[str], watched: list[str]) -> list[str]:
    """Which of `watched` are in sys.modules after importing `imports` in a fresh interpreter."""
    code = "import sys, json\n" + "".join(f"import {m}\n" for m in imports) + (
        f"print(json.dumps([m for m in {watched!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_core_modules_import_no_io_or_detector_library():
    code = (
        "import sys, json\n"
        + "".join(f"import labelwise.{m}\n" for m in CORE)
        + f"print(json.dumps([m for m in {IO_MODULES!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_importing_the_cli_does_not_import_ultralytics_or_change_torch_threads():
    code = "import sys, labelwise.cli, labelwise.loop; print('ultralytics' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_adapters_import_neither_the_workflow_nor_what_sits_on_it():
    assert _imported_after([f"labelwise.{m}" for m in ADAPTERS], ["labelwise.workflow"] + ABOVE_WORKFLOW) == []


def test_each_workflow_module_stands_below_the_api_and_the_cli():
    # One interpreter per module: together they could hide a module that pulls loop in through another.
    for m in WORKFLOW:
        assert _imported_after([f"labelwise.workflow.{m}"], ABOVE_WORKFLOW) == [], m


def test_the_workflow_package_imports_no_step_eagerly():
    assert _imported_after(["labelwise.workflow"], [f"labelwise.workflow.{m}" for m in WORKFLOW]) == []
