"""The house rules that keep labelwise easy to change: a pure core, and imports without side effects."""

from __future__ import annotations

import json
import subprocess
import sys

CORE = ["uncertainty", "diversity", "committee", "consistency", "balance", "selection", "stopping", "savings",
        "boxes", "detections"]
IO_MODULES = ["sqlite3", "ultralytics", "torch", "httpx", "PIL", "cv2", "matplotlib", "labelwise.store",
              "labelwise.loop"]


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
