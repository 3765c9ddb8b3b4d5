"""Ultralytics YOLO behind the Detector protocol: offline training and a one-pass scorer.

Ultralytics is imported only here, and only after `prepare_environment` has pointed its settings, fonts and runs
inside the workspace and switched off its network probes and auto-installs (it reads those variables at import).
Its import also caps torch at one thread on a 2-core machine; we give both cores back.

The scorer runs ONE forward pass per image and keeps, for every box that survives NMS, the full class-score vector
(Ultralytics' own `Results` keep only the top score, which is not enough for margin or entropy), a per-box feature
vector (RoI-pooled from the three maps that feed the Detect head) and the image embedding (global average pool of
the same maps, as `predict(embed=...)` computes it, but without a second pass).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from labelwise.detections import ImageDetections
from labelwise.detectors.base import DetectorError, ScoreFailure, TrainRequest, TrainResult

_PREPARED: Path | None = None


def prepare_environment(config_dir: Path) -> None:
    """Keep Ultralytics offline and inside `config_dir`. Must run before the first `import ultralytics`."""
    global _PREPARED
    config_dir = Path(config_dir).absolute()
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    os.environ.setdefault("YOLO_VERBOSE", "False")
    if _PREPARED is None:
        os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
        _PREPARED = config_dir
    target = Path(os.environ["YOLO_CONFIG_DIR"])
    target.mkdir(parents=True, exist_ok=True)
    # Every train/val looks for Arial.ttf and otherwise downloads it; any TTF under that name stops the attempt.
    import matplotlib

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (target / name).exists() and font.exists():
            shutil.copyfile(font, target / name)


def _ultralytics(config_dir: Path):
    prepare_environment(config_dir)
    import torch
    import ultralytics
    from ultralytics.utils import torch_utils

    # Several processes sharing the cores (simulations side by side) each set OMP_NUM_THREADS to their share;
    # every process taking all cores makes their threads spin against each other.
    threads = int(os.environ.get("OMP_NUM_THREADS") or 0) or len(os.sched_getaffinity(0)) or 1
    torch_utils.NUM_THREADS = threads  # select_device() resets torch to this; Ultralytics' default is cpu_count - 1
    torch.set_num_threads(threads)
    return ultralytics


class UltralyticsDetector:
    """Detector protocol for Ultralytics YOLO models (v8, 11 and later), CPU or GPU."""

    def __init__(self, config_dir: Path):
        self.config_dir = Path(config_dir)
        self._scoring_nets: dict[tuple[str, float, str], Any] = {}  # fused eval copies, reused across passes of a round

    def load(self, model: str):
        """A YOLO model from a local checkpoint, a model YAML, or a name Ultralytics can download when online."""
        ultralytics = _ultralytics(self.config_dir)
        local = Path(model)
        if local.suffix == ".pt" and not local.exists() and os.sep in model:
            raise DetectorError(f"model checkpoint {model} not found: fix `model:` in labelwise.yaml")
        try:
            return ultralytics.YOLO(model)
        except Exception as exc:  # Ultralytics raises many kinds here, a failed download among them
            if local.suffix == ".pt" and not local.exists():
                raise DetectorError(
                    f"could not load model '{model}': it is not a local file and it could not be downloaded "
                    f"({exc.__class__.__name__}). Offline, give a local checkpoint path or a model YAML such as "
                    "'yolo11n.yaml' (trained from scratch) as `model:` in labelwise.yaml."
                ) from None
            raise DetectorError(f"could not load model '{model}': {exc}") from None

    # -- training ------------------------------------------------------------------------------------------------

    def train(self, request: TrainRequest) -> TrainResult:
        model = self.load(request.start)
        out = Path(request.out_dir).absolute()
        args: dict[str, Any] = dict(
            data=str(request.data_yaml), epochs=request.epochs, imgsz=request.imgsz, batch=request.batch,
            device=request.device, seed=request.seed, project=str(out.parent), name=out.name, exist_ok=True,
            # val=False validates once, after the last epoch, instead of after every epoch: the same final metrics
            # at a fraction of the cost for the short runs of an active-learning round.
            plots=False, verbose=False, amp=False, deterministic=False, workers=0, val=False,
        )
        args.update(request.options)
        started = time.perf_counter()
        try:
            metrics = model.train(**args)
        except FileNotFoundError as exc:
            raise DetectorError(f"training failed, a file is missing: {exc}") from None
        seconds = time.perf_counter() - started
        weights = out / "weights" / "best.pt"
        if not weights.exists():
            weights = out / "weights" / "last.pt"
        if not weights.exists():
            raise DetectorError(f"training produced no weights in {out / 'weights'}")
        return TrainResult(weights=weights, seconds=seconds, **_metrics(metrics, model))

    def validate(self, weights: Path, data_yaml: Path, imgsz: int, batch: int, device: str,
                 out_dir: Path) -> dict[str, Any]:
        model = self.load(str(weights))
        out = Path(out_dir).absolute()
        metrics = model.val(data=str(data_yaml), imgsz=imgsz, batch=batch, device=device, plots=False,
                            verbose=False, project=str(out.parent), name=out.name, exist_ok=True, workers=0)
        return _metrics(metrics, model)

    # -- scoring -------------------------------------------------------------------------------------------------

    def score(self, weights: Path, images: Iterable[tuple[str, Path]], *, imgsz: int, conf: float, iou: float,
              batch: int, device: str, flip: bool = False,
              max_det: int = 100) -> Iterator[tuple[str, ImageDetections | ScoreFailure]]:
        import cv2
        import torch
        from torchvision.ops import roi_align
        from ultralytics.data.augment import LetterBox
        from ultralytics.utils.nms import non_max_suppression
        from ultralytics.utils.ops import scale_boxes

        key = (str(Path(weights).absolute()), os.path.getmtime(weights), device)
        if key not in self._scoring_nets:
            yolo = self.load(str(weights))
            net = yolo.model.fuse() if hasattr(yolo.model, "fuse") else yolo.model
            net = net.to(_torch_device(device)).eval()
            self._scoring_nets = {key: net.to(memory_format=torch.channels_last)}  # keep one: weights are large
        net = self._scoring_nets[key]
        head = net.model[-1]
        nc = int(head.nc)
        stride = int(max(net.stride))
        square = LetterBox(new_shape=(imgsz, imgsz), auto=False, stride=stride)
        # Images of one size (most datasets) share a rectangular letterbox padded only to the stride, as
        # Ultralytics' own predict does one image at a time: a 4:3 photo then costs 25% fewer pixels than a square.
        rect = LetterBox(new_shape=(imgsz, imgsz), auto=True, stride=stride)
        strides = [float(s) for s in head.stride]
        dev = next(net.parameters()).device

        def flush(keys: list[str], originals: list[np.ndarray]) -> list[tuple[str, ImageDetections]]:
            tensors = []
            letterbox = rect if len({img.shape for img in originals}) == 1 else square
            for img in originals:
                boxed = letterbox(image=img)
                tensors.append(np.ascontiguousarray(boxed[:, :, ::-1].transpose(2, 0, 1)))  # BGR->RGB, HWC->CHW
            x = torch.from_numpy(np.stack(tensors)).to(dev).float().div_(255.0)
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                y, extra = net(x)
                if isinstance(extra, dict) and "one2many" in extra:  # end-to-end heads: use the NMS branch
                    extra = extra["one2many"]
                    y = head._inference(extra)
                feats = extra["feats"]
                out, keep = non_max_suppression(y, conf, iou, nc=nc, max_det=max_det, return_idxs=True)
                pooled = torch.cat([f.float().mean(dim=(2, 3)) for f in feats], dim=1)
                best_any = y[:, 4:4 + nc, :].amax(dim=(1, 2))
                results = []
                for b, (key, img) in enumerate(zip(keys, originals)):
                    det, idx = out[b], keep[b].long().view(-1)
                    scores = y[b, 4:4 + nc, :][:, idx].T.contiguous()
                    boxes_in = det[:, :4]
                    box_feats = _roi_features(roi_align, feats, b, boxes_in, strides)
                    boxes = scale_boxes(x.shape[2:], boxes_in.clone(), img.shape[:2]).cpu().numpy()
                    h, w = img.shape[:2]
                    if flip:
                        boxes = boxes[:, [2, 1, 0, 3]].copy()
                        boxes[:, [0, 2]] = w - boxes[:, [0, 2]]
                    results.append((key, ImageDetections(
                        boxes=boxes.astype(np.float32),
                        class_scores=scores.cpu().numpy().astype(np.float32),
                        box_features=box_feats.cpu().numpy().astype(np.float16),
                        embedding=pooled[b].cpu().numpy().astype(np.float32),
                        max_candidate_score=float(best_any[b]),
                        width=int(w), height=int(h),
                    )))
                return results

        keys: list[str] = []
        originals: list[np.ndarray] = []
        for key, path in images:
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is None:
                yield key, ScoreFailure(f"{path}: OpenCV could not decode the image; remove or re-export it")
                continue
            if flip:
                img = np.ascontiguousarray(img[:, ::-1])
            keys.append(key)
            originals.append(img)
            if len(keys) == batch:
                yield from flush(keys, originals)
                keys, originals = [], []
        if keys:
            yield from flush(keys, originals)


def _roi_features(roi_align, feats, b: int, boxes_in, strides: list[float]):
    """Per box, the mean of each head-input map over the box (RoI-Align to 1x1), levels concatenated."""
    import torch

    if boxes_in.shape[0] == 0:
        return torch.zeros((0, sum(int(f.shape[1]) for f in feats)))
    rois = torch.cat([torch.zeros((boxes_in.shape[0], 1), device=boxes_in.device), boxes_in.float()], dim=1)
    parts = [
        roi_align(f[b:b + 1].float().contiguous(), rois, output_size=(1, 1), spatial_scale=1.0 / s,
                  sampling_ratio=2, aligned=True).flatten(1)
        for f, s in zip(feats, strides)
    ]
    return torch.cat(parts, dim=1)


def _torch_device(device: str) -> str:
    device = str(device).strip().lower()
    if device in ("", "cpu"):
        return "cpu"
    return f"cuda:{device}" if device.isdigit() else device


def _metrics(metrics: Any, model: Any) -> dict[str, Any]:
    """mAP50, mAP50-95 and per-class AP50 from Ultralytics' DetMetrics (classes absent from val get 0)."""
    box = getattr(metrics, "box", None)
    if box is None:
        raise DetectorError("Ultralytics returned no detection metrics (was validation switched off?)")
    names = getattr(metrics, "names", None) or model.names
    per_class = {str(names[i]): 0.0 for i in range(len(names))}
    for i, cls in enumerate(getattr(box, "ap_class_index", [])):
        per_class[str(names[int(cls)])] = float(box.ap50[i])
    return {"map50": float(box.map50), "map50_95": float(box.map), "per_class_ap50": per_class}
