"""Issue 11, label QA: how well ObjectLab (labelwise.quality, via cleanlab) finds injected annotation errors on the
synthetic scenario set, against the naive baseline (prediction and label disagree at IoU 0.5).

    .venv/bin/python benchmarks/bench_qa.py --workdir /tmp/lwqa            # ~10 CPU minutes on 2 cores

1. The synthetic set (`ScenarioSpec(n_train=N_TRAIN + N_CHECK, n_val=100, image_size=128)`): N_TRAIN images train a
   model, the other N_CHECK are the "batch that comes back" (the model never saw them: out-of-sample predictions, as
   ObjectLab asks).
2. The model: the pretrained YOLOv8s of benchmarks/pretrained.py fine-tuned briefly (`--epochs`, backbone frozen,
   imgsz 128, CPU), cached in the workdir.
3. Predictions on the checked images from labelwise's own scorer (what scoring caches: boxes, full class scores;
   conf 0.05, iou 0.6 as labelwise.yaml's defaults).
4. Errors injected into the oracle labels, each kind in `--rate` of the images (disjoint sets, images with a box):
   drop one box; swap one box's class for another; shift one box by 30% of its size along one axis (x by 0.3 w or
   y by 0.3 h, away from the nearer edge; IoU with the true box 0.7 / 1.3 = 0.54).
5. Each method flags images and ranks them: ObjectLab flags with cleanlab's `find_label_issues` and ranks by the label
   quality score (low first); the baseline flags an image with any disagreement (unmatched label box, unmatched
   prediction at conf >= 0.25, or matched pair of different classes, one-to-one at IoU 0.5) and ranks by how many.
   Precision and recall of the flagged set, recall per kind, and average precision of the ranking
   (`sklearn.metrics.average_precision_score`, ties grouped) against "this image's label was corrupted".

Writes benchmarks/results/issue11-qa.json and prints the table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

KINDS = ("drop", "swap", "shift")


def read_yolo(path: Path) -> list[tuple[int, float, float, float, float]]:
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            c, *v = line.split()
            rows.append((int(c), *(float(x) for x in v[:4])))
    return rows


def inject(labels: list[list[tuple]], rate: float, n_classes: int, seed: int) -> tuple[list[list[tuple]], list[str]]:
    """The labels with errors: each kind in `rate` of the images, on disjoint images that hold a box. Returns the new
    labels and each image's kind ("" when untouched)."""
    rng = random.Random(seed)
    candidates = [i for i, lab in enumerate(labels) if lab]
    rng.shuffle(candidates)
    per_kind = round(rate * len(labels))
    kinds = [""] * len(labels)
    out = [list(lab) for lab in labels]
    for k, kind in enumerate(KINDS):
        for i in candidates[k * per_kind:(k + 1) * per_kind]:
            kinds[i] = kind
            j = rng.randrange(len(out[i]))
            c, cx, cy, w, h = out[i][j]
            if kind == "drop":
                del out[i][j]
            elif kind == "swap":
                out[i][j] = (rng.choice([x for x in range(n_classes) if x != c]), cx, cy, w, h)
            else:  # shift by 30% of the box's size along one axis, towards the side with more room
                if rng.random() < 0.5:
                    cx += 0.3 * w * (1 if cx < 0.5 else -1)
                else:
                    cy += 0.3 * h * (1 if cy < 0.5 else -1)
                out[i][j] = (c, cx, cy, w, h)
    return out, kinds


def metrics(flagged: np.ndarray, ranking: np.ndarray, truth: np.ndarray, kinds: list[str]) -> dict:
    """Precision / recall of the flagged images, recall per kind, AP of `ranking` (higher = more suspect)."""
    from sklearn.metrics import average_precision_score

    tp = int(np.sum(flagged & truth))
    out = {"flagged": int(flagged.sum()), "true_flags": tp,
           "precision": tp / max(int(flagged.sum()), 1), "recall": tp / max(int(truth.sum()), 1),
           "average_precision": float(average_precision_score(truth, ranking)),
           "precision_at_n_errors": float(np.mean(truth[np.argsort(-ranking, kind="stable")[:int(truth.sum())]]))}
    for kind in KINDS:
        rows = np.array([k == kind for k in kinds])
        out[f"recall_{kind}"] = float(np.mean(flagged[rows])) if rows.any() else float("nan")
    out["false_flags_clean"] = int(np.sum(flagged & ~truth))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/lwqa"))
    parser.add_argument("--n-train", type=int, default=300)
    parser.add_argument("--n-check", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "issue11-qa.json")
    args = parser.parse_args()

    from pretrained import pretrained_checkpoint

    from labelwise.detectors.base import TrainRequest
    from labelwise.detectors.ultralytics import UltralyticsDetector
    from labelwise.quality import ImagePredictions, disagreements, label_quality, labels_from_yolo
    from labelwise.synthetic import CLASS_NAMES, ScenarioSpec, generate

    started = time.perf_counter()
    work = args.workdir.absolute()
    spec = ScenarioSpec(n_train=args.n_train + args.n_check, n_val=100, image_size=128, seed=args.seed)
    data_yaml = generate(work / "data", spec)
    root = data_yaml.parent
    images = sorted((root / "train" / "images").glob("*.png"))
    order = list(range(len(images)))
    random.Random(args.seed).shuffle(order)
    train = [images[i] for i in order[:args.n_train]]
    check = sorted(images[i] for i in order[args.n_train:args.n_train + args.n_check])

    detector = UltralyticsDetector(work / ".ultralytics", threads=args.threads)
    model_dir = work / f"model-{args.n_train}-{args.epochs}e"
    weights = model_dir / "weights" / "best.pt"
    train_s = 0.0
    if not weights.exists():
        (work / "train.txt").write_text("".join(f"{p}\n" for p in train))
        (work / "data.yaml").write_text(json.dumps({
            "path": str(root), "train": str(work / "train.txt"), "val": str(root / "val" / "images"),
            "names": dict(enumerate(CLASS_NAMES))}))
        t = time.perf_counter()
        result = detector.train(TrainRequest(data_yaml=work / "data.yaml", start=str(pretrained_checkpoint()),
                                             out_dir=model_dir, epochs=args.epochs, imgsz=args.imgsz, batch=16,
                                             device="cpu", seed=args.seed, options={"freeze": 10}))
        train_s = time.perf_counter() - t
        weights = result.weights
        (model_dir / "map50.json").write_text(json.dumps({"map50": result.map50, "train_s": train_s}))
    trained = json.loads((model_dir / "map50.json").read_text())

    t = time.perf_counter()
    found = dict(detector.score(weights, [(str(i), p) for i, p in enumerate(check)], imgsz=args.imgsz, conf=0.05,
                                iou=0.6, batch=16, device="cpu"))
    score_s = time.perf_counter() - t
    dets = [found[str(i)] for i in range(len(check))]

    oracle = [read_yolo(root / "train" / "labels" / f"{p.stem}.txt") for p in check]
    corrupted, kinds = inject(oracle, args.rate, len(CLASS_NAMES), args.seed)
    truth = np.array([k != "" for k in kinds])
    labels = [labels_from_yolo(lab, d.width, d.height) for lab, d in zip(corrupted, dets)]
    preds = [ImagePredictions(d.boxes, d.class_scores) for d in dets]

    t = time.perf_counter()
    quality = label_quality(labels, preds, len(CLASS_NAMES))
    qa_s = time.perf_counter() - t
    t = time.perf_counter()
    counts = disagreements(labels, preds)
    baseline_s = time.perf_counter() - t
    top = np.concatenate([d.class_scores.max(axis=1) for d in dets if d.n_boxes]) if any(
        d.n_boxes for d in dets) else np.zeros(0)

    results = {
        "command": "python benchmarks/bench_qa.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": {"map50_on_val": trained["map50"], "train_s": trained["train_s"], "epochs": args.epochs,
                  "n_train": args.n_train},
        "checked_images": len(check), "injected": {kind: kinds.count(kind) for kind in KINDS},
        "predictions": {"boxes": int(len(top)), "share_at_least_0.95": float(np.mean(top >= 0.95)) if len(top) else 0,
                        "share_at_least_0.5": float(np.mean(top >= 0.5)) if len(top) else 0},
        "objectlab": {**metrics(quality.flagged, 1.0 - quality.score, truth, kinds), "seconds": qa_s,
                      "issue_type_right": {kind: float(np.mean([quality.issue[i] == want for i in range(len(kinds))
                                                                if kinds[i] == kind]))
                                           for kind, want in (("drop", "missing_box"), ("swap", "wrong_class"),
                                                              ("shift", "badly_placed"))}},
        # qa.threshold instead of cleanlab's flags: suspects are the images scoring at most t
        "objectlab_threshold": {f"{t:g}": {k: v for k, v in metrics(quality.score <= t, 1.0 - quality.score, truth,
                                                                    kinds).items() if k != "average_precision"}
                                for t in (0.3, 0.5, 0.6, 0.7, 0.8)},
        "baseline_iou50": {**metrics(counts > 0, counts.astype(float), truth, kinds), "seconds": baseline_s},
        "seconds": {"train": trained["train_s"], "score": score_s, "total_this_run": time.perf_counter() - started},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print()
    print("| method | flagged | precision | recall | recall drop / swap / shift | average precision | "
          "precision at k = errors |")
    print("|---|---|---|---|---|---|---|")
    for name, key in (("ObjectLab (cleanlab)", "objectlab"), ("naive: disagreement at IoU 0.5", "baseline_iou50")):
        m = results[key]
        print(f"| {name} | {m['flagged']} | {m['precision']:.2f} | {m['recall']:.2f} | {m['recall_drop']:.2f} / "
              f"{m['recall_swap']:.2f} / {m['recall_shift']:.2f} | {m['average_precision']:.2f} | "
              f"{m['precision_at_n_errors']:.2f} |")
    for t, m in results["objectlab_threshold"].items():
        print(f"| ObjectLab, qa.threshold {t} | {m['flagged']} | {m['precision']:.2f} | {m['recall']:.2f} | "
              f"{m['recall_drop']:.2f} / {m['recall_swap']:.2f} / {m['recall_shift']:.2f} | | |")


if __name__ == "__main__":
    main()
