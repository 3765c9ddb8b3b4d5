"""GPU checks for a machine with CUDA: is training on a GPU crippled, and how fast does the scorer run there?

Run on a CUDA machine (the project's CI has none):

    python benchmarks/gpu_check.py --out OUT_DIR

1. Training (issue 9, "GPU training must not be crippled"). The same synthetic dataset is trained twice, side by side
   in one process: with labelwise's CUDA arguments (Ultralytics' defaults for AMP and data-loader workers) and with the
   arguments that labelwise 0.1 hard-coded everywhere (`amp=False, workers=0`). The ratio of seconds is the finding.
   The machine has no internet, so this also shows what Ultralytics' AMP check does offline.
2. Scoring (issue 10, "run the scorer on the GPU"): the one-pass scorer (boxes, full class scores, box features and
   embeddings) against Ultralytics' own `predict` (boxes only) on the same images, in images per second.

Writes gpu_check.json and prints it.

On a GPU machine with no internet (how this was run on 2026-11-27), carry wheels for Python 3.12 of what its image
lacks and put `src/` on PYTHONPATH: ultralytics, ultralytics-thop, ultralytics-platform, ImageHash, PyWavelets, kneed,
pydantic, pydantic_core, annotated-types, typing-inspection, tenacity (filelock, httpx, typer, rich, scipy,
scikit-learn and matplotlib were there). polars (54 MB) was replaced by a stand-in module whose `read_csv(...)
.to_dict(as_series=False)` reads Ultralytics' results.csv, the only use training makes of it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _train(det, data_yaml: Path, out: Path, options: dict, epochs: int, imgsz: int, device: str) -> dict:
    from labelwise.detectors.base import TrainRequest

    req = TrainRequest(data_yaml=data_yaml, start="yolo11n.yaml", out_dir=out, epochs=epochs, imgsz=imgsz, batch=32,
                       device=device, seed=0, options=options)
    started = time.perf_counter()
    result = det.train(req)
    return {"seconds": round(time.perf_counter() - started, 2), "map50": round(result.map50, 4), "options": options}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n-train", type=int, default=800)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--score-images", type=int, default=1000)
    parser.add_argument("--device", default="0", help="a CUDA index; 'cpu' only to try the script out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import torch

    from labelwise import synthetic
    from labelwise.detectors.ultralytics import UltralyticsDetector

    cuda = args.device != "cpu"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    report: dict = {"card": torch.cuda.get_device_name(0) if cuda else platform.processor(),
                    "torch": torch.__version__, "python": platform.python_version(), "cpus": len(os.sched_getaffinity(0)), "date": time.strftime("%Y-%m-%d")}
    data = synthetic.generate(args.out / "data", synthetic.ScenarioSpec(n_train=args.n_train, n_val=200,
                                                                        image_size=args.imgsz, seed=0))
    data_yaml = data if data.suffix == ".yaml" else data / "data.yaml"
    data = data_yaml.parent
    det = UltralyticsDetector(args.out / "ultralytics-config")

    # Warm-up: CUDA context, cuDNN autotuning and the dataset caches, so neither measured run pays for them.
    _train(det, data_yaml, args.out / "warmup", {"amp": False, "workers": 0}, 1, args.imgsz, args.device)
    old = _train(det, data_yaml, args.out / "old", {"amp": False, "workers": 0}, args.epochs, args.imgsz, args.device)
    new = _train(det, data_yaml, args.out / "new", {}, args.epochs, args.imgsz, args.device)
    report["training"] = {"epochs": args.epochs, "imgsz": args.imgsz, "n_train": args.n_train,
                          "labelwise_0_1_amp_off_workers_0": old, "labelwise_cuda_defaults": new,
                          "speedup": round(old["seconds"] / new["seconds"], 2)}
    print(json.dumps(report["training"], indent=1), flush=True)

    weights = _best(args.out / "new")
    images = sorted((data / "train" / "images").glob("*.png"))
    images = (images * (args.score_images // max(len(images), 1) + 1))[: args.score_images]
    pairs = [(f"{i}", p) for i, p in enumerate(images)]
    scoring = {}
    for imgsz in (320, 640):
        list(det.score(weights, pairs[:64], imgsz=imgsz, conf=0.01, iou=0.7, batch=32, device=args.device))  # warm-up
        sync()
        t = time.perf_counter()
        n = sum(1 for _ in det.score(weights, pairs, imgsz=imgsz, conf=0.01, iou=0.7, batch=32, device=args.device))
        sync()
        ours = n / (time.perf_counter() - t)
        model = det.load(str(weights))
        paths = [str(p) for p in images]
        model.predict(paths[:64], imgsz=imgsz, conf=0.01, device=args.device, verbose=False, batch=32)
        t = time.perf_counter()
        for i in range(0, len(paths), 256):
            for _ in model.predict(paths[i:i + 256], imgsz=imgsz, conf=0.01, device=args.device, verbose=False, batch=32,
                                   stream=True):
                pass
        sync()
        theirs = len(paths) / (time.perf_counter() - t)
        scoring[str(imgsz)] = {"labelwise_scorer_img_s": round(ours, 1), "ultralytics_predict_img_s": round(theirs, 1),
                               "ratio": round(ours / theirs, 2)}
        print(imgsz, scoring[str(imgsz)], flush=True)
    report["scoring"] = {"images": len(pairs), "model": "yolo11n trained above", "batch": 32, **scoring}
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


def _best(run: Path) -> Path | None:
    for name in ("best.pt", "last.pt"):
        if (run / "weights" / name).exists():
            return run / "weights" / name
    return None


if __name__ == "__main__":
    main()
