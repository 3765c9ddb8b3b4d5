"""Ultralytics YOLO behind the Detector protocol: offline training and a one-pass scorer.

Ultralytics is imported only here, and only after `prepare_environment` has pointed its settings, fonts and runs
inside the workspace and switched off its network probes and auto-installs (it reads those variables at import).
Its import also caps torch at one thread on a 2-core machine; we give it the usable cores (`labelwise.cores`) or
the `threads` asked for.

The scorer runs ONE forward pass per image and keeps, for every box that survives NMS, the full class-score vector
(Ultralytics' own `Results` keep only the top score, which is not enough for margin or entropy), a per-box feature
vector (RoI-pooled from the three maps that feed the Detect head) and the image embedding (global average pool of
the same maps, as `predict(embed=...)` computes it, but without a second pass).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from labelwise.cores import resolve_threads
from labelwise.detections import ImageDetections
from labelwise.detectors.base import DetectorError, ModelUnavailableError, ScoreFailure, TrainRequest, TrainResult

_PREPARED: Path | None = None

# Ultralytics' own default detection checkpoint (8.4: `ultralytics.cfg.TASK2MODEL["detect"]`), the newest nano model.
DEFAULT_MODEL = "yolo26n.pt"
DOWNLOAD_HOST = "github.com"  # Ultralytics downloads its checkpoints from github.com/ultralytics/assets releases
# The checkpoint names Ultralytics downloads by name (`ultralytics.utils.downloads.GITHUB_ASSETS_NAMES`, matched here
# without importing Ultralytics; tests/test_detector.py checks that every .pt name there matches).
_ASSET_NAME = re.compile(
    r"(yolov?\d+[a-z0-9]*(-[a-z0-9.-]+)?|yoloe-(v8|11|26)[a-z]+-seg(-pf)?|yolo_nas_[a-z]+|rtdetr-[a-z]+"
    r"|sam2?(\.1)?_[a-z]+|mobile_sam|fastsam-[a-z]+)\.pt", re.IGNORECASE)


def prepare_environment(config_dir: Path) -> None:
    """Keep Ultralytics offline and inside `config_dir`. Must run before the first `import ultralytics`."""
    global _PREPARED
    config_dir = Path(config_dir).absolute()
    config_dir.mkdir(parents=True, exist_ok=True)
    from labelwise.cores import prefer_passive_waiting

    prefer_passive_waiting()  # importing labelwise did it already, unless torch came first
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    os.environ.setdefault("YOLO_VERBOSE", "False")
    if _PREPARED is None:
        os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
        _PREPARED = config_dir
    target = Path(os.environ["YOLO_CONFIG_DIR"])
    target.mkdir(parents=True, exist_ok=True)
    # Every train/val looks for Arial.ttf in Ultralytics' USER_CONFIG_DIR, which is YOLO_CONFIG_DIR/Ultralytics, and
    # otherwise asks github.com for it (a HEAD with a 3 s timeout, then a download); any TTF under that name there
    # stops the attempt.
    import matplotlib

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for folder in (target, target / "Ultralytics"):
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("Arial.ttf", "Arial.Unicode.ttf"):
            if not (folder / name).exists() and font.exists():
                shutil.copyfile(font, folder / name)


# `import ultralytics` sets OMP_NUM_THREADS=1 when it is unset, so once it is imported that variable no longer says
# what the user asked for: keep the value from before (None: unset, or Ultralytics was imported before labelwise).
_USER_OMP = None if "ultralytics" in sys.modules else os.environ.get("OMP_NUM_THREADS")


def check_model_available(name: str, weights_dir: Path | None = None) -> None:
    """Return if Ultralytics can load `name` now; else raise ModelUnavailableError saying how to proceed.

    A model YAML (built from scratch) or an existing local file is always available. An Ultralytics checkpoint name
    (`yolo26n.pt`, or its stem `yolo26n`) is when it is already in the current folder or in Ultralytics' weights
    folder (`weights_dir`, default: the `weights_dir` of Ultralytics' settings), or when its download host answers
    within 3 seconds: Ultralytics downloads it on first use.
    """
    text = str(name).strip()
    path = Path(text).expanduser()
    if path.suffix.lower() in (".yaml", ".yml") or path.is_file():
        return
    if not path.suffix and _ASSET_NAME.fullmatch(path.name + ".pt"):
        path = path.with_suffix(".pt")
    bare = path.parent == Path(".")
    if not (bare and _ASSET_NAME.fullmatch(path.name)):
        raise ModelUnavailableError(
            f"model '{text}' not found: it is not a file here ({Path.cwd()}) and not an Ultralytics checkpoint name "
            f"such as {DEFAULT_MODEL}. Fix the path, or pass `--model {DEFAULT_MODEL}`, or `--model yolo11n.yaml` to "
            "train from scratch (not recommended).")
    folder = Path(weights_dir) if weights_dir is not None else _ultralytics_weights_dir()
    if path.is_file() or (folder / path.name).is_file():
        return
    if _download_host_reachable():
        return
    raise ModelUnavailableError(
        f"model checkpoint '{path.name}' is not on this machine (looked in {Path.cwd()} and {folder}) and cannot be "
        f"downloaded: this machine is offline ({DOWNLOAD_HOST}, where Ultralytics downloads it from, does not answer). "
        f"To proceed: download {path.name} where there is internet (https://github.com/ultralytics/assets/releases), "
        f"put the .pt file on this machine and pass `--model PATH/TO/{path.name}`; or pass `--model yolo11n.yaml` to "
        "train from scratch (not recommended: a model without pretrained weights needs far more labelled images).")


def _download_host_reachable(timeout: float = 3.0) -> bool:
    """Whether Ultralytics' download host answers an HTTPS HEAD within `timeout` seconds (proxy variables honoured,
    as Ultralytics' own download does); any HTTP status counts as an answer."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"https://{DOWNLOAD_HOST}/", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):  # URLError, timeouts and refused connections are OSErrors
        return False


def _ultralytics_weights_dir() -> Path:
    """Ultralytics' weights folder, read without importing Ultralytics (its import writes settings and changes
    OMP_NUM_THREADS): from its loaded settings, else its settings.json, else its default `weights` in the cwd."""
    utils = sys.modules.get("ultralytics.utils")
    if utils is not None and hasattr(utils, "SETTINGS"):
        return Path(utils.SETTINGS["weights_dir"])
    if os.environ.get("YOLO_CONFIG_DIR"):
        config = Path(os.environ["YOLO_CONFIG_DIR"]).expanduser()
    elif sys.platform == "darwin":
        config = Path.home() / "Library" / "Application Support"
    elif sys.platform == "win32":
        config = Path.home() / "AppData" / "Roaming"
    else:
        config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    try:
        return Path(json.loads((config / "Ultralytics" / "settings.json").read_text())["weights_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return Path("weights").absolute()


def _ultralytics(config_dir: Path, threads: int | None = None):
    """The `ultralytics` module, imported offline inside `config_dir`, torch and Ultralytics on `threads` threads
    (None: `labelwise.cores.resolve_threads`, i.e. OMP_NUM_THREADS as the user set it, else the usable cores)."""
    prepare_environment(config_dir)
    if "ultralytics" not in sys.modules:
        threads = resolve_threads(threads)  # before the import below rewrites OMP_NUM_THREADS
    else:
        environ = {} if _USER_OMP is None else {"OMP_NUM_THREADS": _USER_OMP}
        threads = resolve_threads(threads, environ=environ)
    import torch
    import ultralytics

    _set_threads(torch, threads)
    return ultralytics


def _set_threads(torch, threads: int) -> None:
    """torch and Ultralytics on `threads` threads. Ultralytics' select_device() resets torch to its NUM_THREADS
    (min(8, cpu_count - 1): ONE thread on a 2-core machine) before every train and predict, and its dataset caching
    sizes thread pools by the same name; every loaded Ultralytics module that copied the name gets ours."""
    for name, module in list(sys.modules.items()):
        if (name == "ultralytics" or name.startswith("ultralytics.")) and isinstance(
                getattr(module, "NUM_THREADS", None), int):
            module.NUM_THREADS = threads
    torch.set_num_threads(threads)


class UltralyticsDetector:
    """Detector protocol for Ultralytics YOLO models (v8, 11 and later), CPU or GPU."""

    def __init__(self, config_dir: Path, threads: int | None = None):
        """`threads`: CPU threads for torch and Ultralytics; None: `labelwise.cores.resolve_threads(None)`."""
        self.config_dir = Path(config_dir)
        self.threads = threads
        # fused eval copies, reused across passes of a round
        self._scoring_nets: dict[tuple[str, float, str, bool], Any] = {}

    def load(self, model: str):
        """A YOLO model from a local checkpoint, a model YAML, or a name Ultralytics can download when online."""
        ultralytics = _ultralytics(self.config_dir, self.threads)
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
        args = train_arguments(request)
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
        cpu = {"workers": 0} if runs_on_cpu(device) else {}  # data-loader processes only where they pay off
        metrics = model.val(data=str(data_yaml), imgsz=imgsz, batch=batch, device=device, plots=False,
                            verbose=False, project=str(out.parent), name=out.name, exist_ok=True, **cpu)
        return _metrics(metrics, model)

    # -- scoring -------------------------------------------------------------------------------------------------

    def score(self, weights: Path, images: Iterable[tuple[str, Path | np.ndarray]], *, imgsz: int, conf: float,
              iou: float, batch: int, device: str, flip: bool = False, max_det: int = 100,
              end2end: bool = False) -> Iterator[tuple[str, ImageDetections | ScoreFailure]]:
        """See `Detector.score`. An image is a path (read with OpenCV here) or an image already decoded as
        `decode_image` does (BGR, HxWx3 uint8; the Ray engine decodes in its own tasks).

        `end2end` picks the head of a model that has two (YOLO26, YOLOv10), as Ultralytics' predictor does (8.4.190:
        `AutoBackend(end2end=args.nms is False)`, whatever mode the checkpoint was saved in): False, the one-to-many
        head with NMS, as `predict()`; True, the NMS-free one-to-one head, as `predict(nms=False)`. Models with one
        head ignore it; a checkpoint fused down to its one-to-one head uses it whatever is asked, as predict does."""
        import cv2
        import torch
        from torchvision.ops import roi_align
        from ultralytics.data.augment import LetterBox
        from ultralytics.utils.ops import scale_boxes

        key = (str(Path(weights).absolute()), os.path.getmtime(weights), device, bool(end2end))
        if key not in self._scoring_nets:
            yolo = self.load(str(weights))
            self._scoring_nets = {key: _scoring_net(yolo.model, device, end2end)}  # keep one: weights are large
        net = self._scoring_nets[key]
        head = net.model[-1]
        nc = int(head.nc)
        e2e = bool(getattr(head, "end2end", False))
        if e2e:  # as Ultralytics' predictor: top-k over at least 300 candidates, then the conf filter and max_det
            head.max_det, head.agnostic_nms = max(int(max_det), 300), False
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
                y, preds = net(x)
                decoded, feats, kept = _kept_boxes(head, y, preds, e2e, conf=conf, iou=iou, max_det=max_det)
                pooled = torch.cat([f.float().mean(dim=(2, 3)) for f in feats], dim=1)
                best_any = decoded[:, 4:4 + nc, :].amax(dim=(1, 2))
                results = []
                for b, (key, img) in enumerate(zip(keys, originals)):
                    boxes_in, idx = kept[b]
                    scores = decoded[b, 4:4 + nc, :][:, idx].T.contiguous()
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

        # A chunk is `batch` consecutive inputs, an unreadable one leaving a gap (it does not pull the next image in):
        # which images share a forward pass, and so their letterbox, depends on the input order alone, the same
        # for every engine that hands the scorer the same chunks (labelwise.engines.ray).
        keys: list[str] = []
        originals: list[np.ndarray] = []
        taken = 0
        for key, source in images:
            taken += 1
            img = source if isinstance(source, np.ndarray) else cv2.imread(str(source), cv2.IMREAD_COLOR)
            if img is None:
                yield key, ScoreFailure(f"{source}: {UNDECODABLE}")
            else:
                if flip:
                    img = np.ascontiguousarray(img[:, ::-1])
                keys.append(key)
                originals.append(img)
            if taken == batch:
                if keys:
                    yield from flush(keys, originals)
                keys, originals, taken = [], [], 0
        if keys:
            yield from flush(keys, originals)


UNDECODABLE = "OpenCV could not decode the image; remove or re-export it"


def decode_image(data: bytes) -> np.ndarray | None:
    """An encoded image (the bytes of a JPEG, PNG... file) as the scorer reads a path: BGR, HxWx3 uint8, EXIF
    orientation applied (`cv2.imdecode` with the flags of `cv2.imread`: the same pixels); None when OpenCV cannot
    decode it."""
    import cv2

    if not data:
        return None
    return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)


def _scoring_net(model, device: str, end2end: bool):
    """A fused eval copy of `model` in channels_last on `device`, its head in the mode `end2end` asks for.

    The mode is chosen BEFORE fusing, as Ultralytics' AutoBackend does: `fuse()` keeps only the branch in use (an
    end-to-end head loses its one-to-many branch, any other loses its one-to-one branch).
    """
    import torch

    head = model.model[-1]
    if getattr(head, "one2one_cv2", None) is not None and getattr(head, "cv2", None) is not None:
        model.end2end = bool(end2end)
    net = model.fuse() if hasattr(model, "fuse") else model
    net = net.to(_torch_device(device)).eval()
    return net.to(memory_format=torch.channels_last)


def _kept_boxes(head, y, preds, e2e: bool, *, conf: float, iou: float, max_det: int):
    """What Ultralytics' predict keeps, with the anchor of every kept box.

    Returns (decoded, feats, kept): `decoded` (B, 4 + nc, anchors) holds the boxes and the per-class sigmoid scores
    of every anchor of the head in use; `feats` the maps that fed the head; `kept[b]` = (boxes (n, 4) xyxy in input
    pixels, anchor index (n,)) of image b.

    One-to-many head: `y` is `decoded` with xywh boxes; NMS keeps the boxes (it takes xywh and returns xyxy).
    End-to-end head: `y` is already the top-k (B, k, 6) xyxy output that predict filters by conf alone; `decoded`
    (xyxy, as an end-to-end head decodes) comes from the head's one-to-one branch, and the same top-k selection
    gives each row's anchor. The top-k ranks (anchor, class) pairs, so an anchor can come twice, once per class: it
    is kept once, at its first (best) pair, whose class is the argmax of its score vector; the other pairs' scores
    are in that vector.
    """
    import torch
    from ultralytics.utils.nms import non_max_suppression

    if isinstance(preds, dict) and ("one2one" in preds or "one2many" in preds):
        branch = preds["one2one" if e2e else "one2many"]
    else:
        branch = preds
    if not isinstance(branch, dict) or "feats" not in branch:
        raise DetectorError("this Ultralytics version's detection head returned no feature maps; the scorer needs "
                            "Ultralytics 8.4 or later (pip install -U ultralytics)")
    feats = branch["feats"]
    nc = int(head.nc)
    if not e2e:
        out, keep = non_max_suppression(y, conf, iou, nc=nc, max_det=max_det, return_idxs=True)
        return y, feats, [(det[:, :4], idx.long().view(-1)) for det, idx in zip(out, keep)]
    decoded = head._inference(branch)  # (B, 4 + nc, anchors), boxes xyxy because the head is end-to-end
    top, labels, anchors = _topk(head, decoded[:, 4:4 + nc, :].permute(0, 2, 1))
    kept = []
    for b in range(decoded.shape[0]):
        rows = torch.nonzero(top[b, :, 0] > conf).view(-1)[:max_det]  # nms.non_max_suppression, end2end branch
        idx = anchors[b, rows].long()
        first = _first_occurrences(idx)
        idx = idx[first]
        kept.append((decoded[b, :4, idx].T, idx))
    return decoded, feats, kept


def _topk(head, scores):
    """(scores, labels, anchors) of the head's top-k (anchor, class) pairs, as its `postprocess` selects them."""
    if hasattr(head, "get_topk_index"):
        return head.get_topk_index(scores, int(head.max_det))
    import torch  # the same selection for heads without the method

    k = min(int(head.max_det), scores.shape[1])
    ori = scores.amax(dim=-1).topk(k, dim=1)[1]
    gathered = scores.gather(1, ori[..., None].expand(-1, -1, scores.shape[-1]))
    top, index = gathered.flatten(1).topk(k, dim=1)
    nc = scores.shape[-1]
    return top[..., None], (index % nc)[..., None].float(), ori.gather(1, torch.div(index, nc, rounding_mode="floor"))


def _first_occurrences(idx):
    """Positions of the first occurrence of each value in the 1-D tensor `idx`, in order."""
    import torch

    if idx.numel() < 2:
        return torch.arange(idx.numel(), device=idx.device)
    values, inverse = torch.unique(idx, return_inverse=True)
    positions = torch.arange(idx.numel(), device=idx.device)
    first = torch.full((values.numel(),), idx.numel(), dtype=torch.long, device=idx.device)
    first.scatter_reduce_(0, inverse, positions, reduce="amin")
    return first.sort().values


def runs_on_cpu(device: str | None) -> bool:
    """Whether Ultralytics will run on the CPU for this `device` setting ("cpu", "0", "cuda:1", "0,1", "mps", "").
    An empty setting means "a GPU when there is one", the only case that asks torch."""
    text = str(device if device is not None else "").strip().lower()
    if text in ("", "none"):
        import torch

        return not torch.cuda.is_available()
    return text == "cpu"


def train_arguments(request: TrainRequest, *, cpu: bool | None = None) -> dict[str, Any]:
    """The keyword arguments for Ultralytics' `model.train` (pure: `cpu` given, or an explicit device setting).

    On the CPU: `amp=False, workers=0` (AMP is a GPU feature, and Ultralytics sets workers=0 on the CPU anyway, its
    data loading being cheap next to the forward pass). Anywhere else Ultralytics' defaults stay: `amp=True` and
    `workers=8` data-loader processes per GPU. Measured on an H200 (yolo11n, imgsz 320, batch 32, 3 epochs, warm):
    2000 images 68 s with amp=False/workers=0, 21 s with the defaults; 400 images 13-15 s against 8.6 s, the
    workers giving the gain (7.1 s alone; AMP alone 14.4 s). The first run with the defaults in a process paid about
    20 s once (26-31 s), cause not isolated (first fp16 kernels or first worker start).

    `amp=True` makes Ultralytics run its AMP check (`ultralytics.utils.checks.check_amp`, 8.4.190): it loads
    `yolo26n.pt` from its weights dir, downloading it when missing. Offline the download fails with a
    `ConnectionError` (0.3 s on an isolated GPU machine; up to requests' 30 s connect timeout where packets are
    dropped), which check_amp catches: it logs "checks skipped. Offline and unable to download YOLO26n for AMP
    checks. Setting 'amp=True'" and trains WITH AMP. Only an AssertionError (fp16 and fp32 outputs disagree) or a GPU
    on its known-bad list turns AMP off. To skip the check and its download attempt, pass `amp` in
    `request.options`. `request.options` override everything here.
    """
    if cpu is None:
        cpu = runs_on_cpu(request.device)
    out = Path(request.out_dir).absolute()
    args: dict[str, Any] = dict(
        data=str(request.data_yaml), epochs=request.epochs, imgsz=request.imgsz, batch=request.batch,
        device=request.device, seed=request.seed, project=str(out.parent), name=out.name, exist_ok=True,
        # val=False validates once, after the last epoch, instead of after every epoch: the same final metrics
        # at a fraction of the cost for the short runs of an active-learning round.
        plots=False, verbose=False, deterministic=False, val=False,
    )
    if cpu:
        args.update(amp=False, workers=0)
    args.update(request.options)
    return args


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
    """The torch device for scoring. Several GPUs ("0,1", training's data-parallel form) score on the first: one
    process scores one stream of images; spreading the pool over GPUs is the Ray engine's job."""
    device = str(device).strip().lower()
    if device in ("", "cpu"):
        return "cpu"
    device = device.split(",")[0].strip()
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
