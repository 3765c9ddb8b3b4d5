"""UltralyticsDetector against Ultralytics itself.

The one-pass scorer must keep every box that Ultralytics' own `predict` keeps (same conf, iou, imgsz and max_det):
within 1 pixel, with the same class, and that class's score to 1e-4 in the box's full class-score vector. That holds
for plain heads (YOLOv8, YOLO11) and for the two heads of end-to-end models (YOLO26, YOLOv10) in both of their states:
the one-to-many head with NMS (`predict()`) and the NMS-free one-to-one head (`predict(nms=False)`).

On CUDA (H200) the same comparison held for 272 boxes with TF32 off; with PyTorch's default TF32 convolutions the
scorer (channels_last, batches) and predict (contiguous, one image) round differently and a box at the conf or IoU
threshold can fall on either side (one box in 17 did).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

IOU = 0.7
IMGSZ = 64


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ultralytics-config")


@pytest.fixture(scope="module")
def ul(config_dir):
    from labelwise.detectors.ultralytics import _ultralytics

    return _ultralytics(config_dir)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    from labelwise.synthetic import ScenarioSpec, generate

    return generate(tmp_path_factory.mktemp("scenes") / "data", ScenarioSpec(n_train=32, n_val=4, image_size=IMGSZ,
                                                                             seed=2))


@pytest.fixture(scope="module")
def images(scenes) -> list[Path]:
    return sorted((scenes.parent / "train" / "images").glob("*.png"))[:6]


def _raise_class_scores(model, shift: float) -> None:
    """Add `shift` to the class logits of every head branch: an untrained or barely trained model's scores, all near
    0.002, move to where sigmoid scores differ (and conf 0.1 keeps boxes)."""
    import torch

    head = model.model.model[-1]
    branches = [head.cv3] + ([head.one2one_cv3] if getattr(head, "one2one_cv3", None) is not None else [])
    with torch.no_grad():
        for branch in branches:
            for seq in branch:
                seq[-1].bias += shift


def assert_scorer_keeps_what_predict_keeps(ul, config_dir: Path, weights: Path, images: list[Path], *, conf: float,
                                           end2end: bool, one_to_one: bool | None = None,
                                           device: str = "cpu") -> int:
    """Score `images` with the scorer (`end2end`) and with `predict` (`nms=False` for end2end): every box predict keeps
    must be among the scorer's and the other way round. `one_to_one`: whether the one-to-one head ends up in use
    (default: `end2end`). Returns how many boxes were compared (the caller asserts there were some)."""
    from labelwise.detectors.ultralytics import UltralyticsDetector

    detector = UltralyticsDetector(config_dir)
    scored = dict(detector.score(weights, [(str(p), p) for p in images], imgsz=IMGSZ, conf=conf, iou=IOU, batch=4,
                                 device=device, max_det=300, **({"end2end": True} if end2end else {})))
    results = ul.YOLO(str(weights)).predict([str(p) for p in images], imgsz=IMGSZ, conf=conf, iou=IOU, max_det=300,
                                            device=device, verbose=False, nms=False if end2end else None)
    compared = 0
    for path, result in zip(images, results):
        ours = scored[str(path)]
        boxes = result.boxes.xyxy.cpu().numpy()
        classes = result.boxes.cls.cpu().numpy().astype(int)
        confs = result.boxes.conf.cpu().numpy()
        for box, cls, score in zip(boxes, classes, confs):
            assert ours.n_boxes, f"{path.name}: predict kept {len(boxes)} boxes, the scorer none"
            near = np.abs(ours.boxes - box).max(axis=1) <= 1.0
            same = near & (np.abs(ours.class_scores[:, cls] - score) <= 1e-4)
            assert same.any(), (f"{path.name}: predict's box {box.round(1)} class {cls} score {score:.5f} is not "
                                f"among the scorer's (nearest {ours.boxes[np.abs(ours.boxes - box).max(1).argmin()]})")
            compared += 1
        # ...and the class of every scorer box (its top score) is a box that predict keeps with that class and score.
        for box, row in zip(ours.boxes, ours.class_scores):
            cls = int(row.argmax())
            match = ((np.abs(boxes - box).max(axis=1) <= 1.0) & (classes == cls)
                     & (np.abs(confs - row[cls]) <= 1e-4))
            assert match.any(), f"{path.name}: the scorer's box {box.round(1)} class {cls} is not one predict keeps"
        if end2end if one_to_one is None else one_to_one:
            # The one-to-one head ranks (box, class) pairs, so predict may list one box again for a lower class; the
            # scorer keeps the box once, its other classes' scores in its vector.
            assert ours.n_boxes <= len(boxes)
        else:
            assert ours.n_boxes == len(boxes), f"{path.name}: the scorer kept {ours.n_boxes}, predict {len(boxes)}"
    return compared


# -- end-to-end heads (fast: untrained models, class scores raised) -------------------------------------------------

@pytest.mark.parametrize("model", ["yolo26n.yaml", "yolov10n.yaml"])
@pytest.mark.parametrize(("saved_end2end", "asked_end2end"), [(False, False), (False, True), (True, False),
                                                              (True, True)])
def test_end_to_end_heads_score_the_boxes_predict_keeps(ul, config_dir, images, tmp_path, model, saved_end2end,
                                                        asked_end2end):
    # The checkpoint's head is saved in either state; Ultralytics' predictor picks the head from `nms` alone
    # (nms=False: one-to-one), and so does the scorer from `end2end`.
    yolo = ul.YOLO(model)
    _raise_class_scores(yolo, 9.0)
    yolo.model.end2end = saved_end2end
    weights = tmp_path / "model.pt"
    yolo.save(str(weights))
    assert ul.YOLO(str(weights)).model.end2end is saved_end2end
    n = assert_scorer_keeps_what_predict_keeps(ul, config_dir, weights, images[:3], conf=0.25, end2end=asked_end2end)
    assert n > 0


def test_a_checkpoint_fused_to_its_one_to_one_head_scores_as_predict(ul, config_dir, images, tmp_path):
    # fuse() in end-to-end mode drops the one-to-many branch: predict() then warns and uses the one-to-one head.
    yolo = ul.YOLO("yolo26n.yaml")
    _raise_class_scores(yolo, 9.0)
    yolo.model.end2end = True
    yolo.model.fuse(verbose=False)
    assert yolo.model.model[-1].cv2 is None
    weights = tmp_path / "fused.pt"
    yolo.save(str(weights))
    for asked in (False, True):
        assert assert_scorer_keeps_what_predict_keeps(ul, config_dir, weights, images[:3], conf=0.25,
                                                      end2end=asked, one_to_one=True) > 0


# -- trained models (slow: one epoch each) --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(config_dir, scenes, tmp_path_factory):
    """model YAML -> best.pt after one epoch at imgsz 64 on 32 synthetic images (trained once per module)."""
    from labelwise.detectors.base import TrainRequest
    from labelwise.detectors.ultralytics import UltralyticsDetector

    detector = UltralyticsDetector(config_dir)
    runs = tmp_path_factory.mktemp("runs")
    cache: dict[str, Path] = {}

    def get(model: str) -> Path:
        if model not in cache:
            request = TrainRequest(data_yaml=scenes, start=model, out_dir=runs / Path(model).stem, epochs=1,
                                   imgsz=IMGSZ, batch=8, device="cpu", seed=0,
                                   options={"nbs": 8, "warmup_epochs": 0})
            cache[model] = detector.train(request).weights
        return cache[model]

    return get


@pytest.mark.slow
@pytest.mark.parametrize(("model", "end2end"), [("yolov8n.yaml", False), ("yolo11n.yaml", False),
                                                ("yolo26n.yaml", False), ("yolo26n.yaml", True)])
def test_after_training_the_scorer_keeps_every_box_predict_keeps(ul, config_dir, images, trained, tmp_path, model,
                                                                 end2end):
    weights = trained(model)
    # As trained: after one epoch every score is near 0.002, so conf 0.001 keeps a few boxes.
    assert assert_scorer_keeps_what_predict_keeps(ul, config_dir, weights, images, conf=0.001, end2end=end2end) > 0
    # The same boxes with class logits raised by 6: scores then spread over 0.17-0.46, where a wrong row shows.
    yolo = ul.YOLO(str(weights))
    _raise_class_scores(yolo, 6.0)
    raised = tmp_path / "raised.pt"
    yolo.save(str(raised))
    assert assert_scorer_keeps_what_predict_keeps(ul, config_dir, raised, images, conf=0.1, end2end=end2end) > 0


# -- training arguments per device -----------------------------------------------------------------------------------

def _request(tmp_path: Path, device: str, **options):
    from labelwise.detectors.base import TrainRequest

    return TrainRequest(data_yaml=tmp_path / "data.yaml", start="yolo11n.yaml", out_dir=tmp_path / "run", epochs=3,
                        imgsz=64, batch=8, device=device, options=options)


@pytest.mark.parametrize("device", ["cpu", "CPU", " cpu "])
def test_cpu_training_runs_without_amp_and_data_loader_processes(tmp_path, device):
    from labelwise.detectors.ultralytics import train_arguments

    args = train_arguments(_request(tmp_path, device))
    assert args["amp"] is False and args["workers"] == 0
    assert args["device"] == device and args["epochs"] == 3 and args["name"] == "run"


@pytest.mark.parametrize("device", ["0", "cuda:0", "0,1", "mps"])
def test_gpu_training_keeps_ultralytics_defaults_for_amp_and_workers(ul, tmp_path, device):
    from ultralytics.cfg import DEFAULT_CFG_DICT

    from labelwise.detectors.ultralytics import train_arguments

    args = train_arguments(_request(tmp_path, device))
    assert "amp" not in args and "workers" not in args
    assert DEFAULT_CFG_DICT["amp"] is True and DEFAULT_CFG_DICT["workers"] > 0  # what Ultralytics then uses


def test_an_automatic_device_asks_torch_and_options_override_everything(tmp_path, monkeypatch):
    import torch

    from labelwise.detectors.ultralytics import runs_on_cpu, train_arguments

    for available in (True, False):
        monkeypatch.setattr(torch.cuda, "is_available", lambda available=available: available)
        assert runs_on_cpu("") is not available
        assert ("amp" in train_arguments(_request(tmp_path, ""))) is not available
    assert train_arguments(_request(tmp_path, "0"), cpu=True)["workers"] == 0
    assert train_arguments(_request(tmp_path, "0", amp=False, workers=2))["workers"] == 2
    assert train_arguments(_request(tmp_path, "cpu", workers=1))["workers"] == 1


# -- threads ---------------------------------------------------------------------------------------------------------

@pytest.fixture
def restore_threads():
    import torch

    before = torch.get_num_threads()
    yield
    from labelwise.detectors.ultralytics import _set_threads

    _set_threads(torch, before)


def _thread_settings():
    import torch
    import ultralytics.utils
    import ultralytics.utils.torch_utils

    return torch.get_num_threads(), ultralytics.utils.NUM_THREADS, ultralytics.utils.torch_utils.NUM_THREADS


def test_the_detector_sets_torch_and_ultralytics_threads(ul, config_dir, restore_threads, monkeypatch):
    from ultralytics.utils.torch_utils import select_device

    from labelwise.detectors import ultralytics as adapter

    for threads in (1, 2):
        adapter.UltralyticsDetector(config_dir, threads=threads).load("yolo11n.yaml")
        assert _thread_settings() == (threads, threads, threads)
        select_device("cpu", verbose=False)  # what every train and predict calls first: it resets torch to NUM_THREADS
        assert _thread_settings()[0] == threads
    # No setting: OMP_NUM_THREADS as the user set it before Ultralytics rewrote it, else the usable cores.
    monkeypatch.setattr("labelwise.cores.usable_cores", lambda *a, **k: 3)
    monkeypatch.setattr(adapter, "_USER_OMP", None)
    adapter.UltralyticsDetector(config_dir).load("yolo11n.yaml")
    assert _thread_settings() == (3, 3, 3)
    monkeypatch.setattr(adapter, "_USER_OMP", "2")
    adapter.UltralyticsDetector(config_dir).load("yolo11n.yaml")
    assert _thread_settings() == (2, 2, 2)


def test_a_fresh_process_gets_the_usable_cores_not_ultralytics_one_thread(tmp_path):
    # `import ultralytics` sets OMP_NUM_THREADS=1 when it is unset; reading it afterwards gave torch one thread.
    import json
    import subprocess
    import sys

    code = ("import json, sys, torch\nfrom pathlib import Path\nfrom labelwise.cores import usable_cores\n"
            "from labelwise.detectors.ultralytics import _ultralytics\n"
            "_ultralytics(Path(sys.argv[1]))\nimport ultralytics.utils as u\n"
            "print(json.dumps([torch.get_num_threads(), u.NUM_THREADS, usable_cores()]))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "cfg")], capture_output=True, text=True,
                         check=True, env=env)
    torch_threads, ultralytics_threads, usable = json.loads(out.stdout.strip().splitlines()[-1])
    assert torch_threads == ultralytics_threads == usable
    env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "cfg")], capture_output=True, text=True,
                         check=True, env=env)
    assert json.loads(out.stdout.strip().splitlines()[-1])[:2] == [1, 1]


# -- the default model and whether it can be had ---------------------------------------------------------------------

def test_the_default_model_is_ultralytics_own_newest_nano_detector(ul):
    from ultralytics.cfg import TASK2MODEL
    from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES

    from labelwise.detectors.ultralytics import _ASSET_NAME, DEFAULT_MODEL

    assert DEFAULT_MODEL == TASK2MODEL["detect"] == "yolo26n.pt"
    assert DEFAULT_MODEL in GITHUB_ASSETS_NAMES
    import re

    nano_detectors = [int(m[1]) for name in GITHUB_ASSETS_NAMES if (m := re.fullmatch(r"yolov?(\d+)n\.pt", name))]
    assert max(nano_detectors) == 26  # no newer nano detection model than YOLO26 in this Ultralytics
    # labelwise recognises every checkpoint name Ultralytics downloads, without importing it
    for name in GITHUB_ASSETS_NAMES:
        if name.endswith(".pt"):
            assert _ASSET_NAME.fullmatch(name), name
    for name in ("best.pt", "last.pt", "model.pt", "checkpoint.pt"):
        assert not _ASSET_NAME.fullmatch(name), name


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty working folder and weights folder, and a download host that does not answer."""
    from labelwise.detectors import ultralytics as adapter

    asked = []
    monkeypatch.setattr(adapter, "_download_host_reachable", lambda *a, **k: asked.append(1) or False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    weights = tmp_path / "weights"
    weights.mkdir()
    return weights, asked


def test_offline_a_checkpoint_name_not_on_this_machine_is_a_clear_error(offline):
    from labelwise.detectors.base import DetectorError, ModelUnavailableError
    from labelwise.detectors.ultralytics import DEFAULT_MODEL, check_model_available

    weights, asked = offline
    for name in (DEFAULT_MODEL, "yolo26n", "yolo11s.pt"):
        with pytest.raises(ModelUnavailableError) as caught:
            check_model_available(name, weights_dir=weights)
        message = str(caught.value)
        stem = Path(name).stem
        assert f"'{stem}.pt'" in message and "offline" in message and "cannot be downloaded" in message
        assert f"--model PATH/TO/{stem}.pt" in message and "--model yolo11n.yaml" in message
        assert "not recommended" in message and str(weights) in message
    assert len(asked) == 3
    assert issubclass(ModelUnavailableError, DetectorError)  # the CLI's handler for detector errors catches it


def test_offline_a_yaml_a_local_file_or_a_checkpoint_already_here_needs_no_network(offline, tmp_path):
    from labelwise.detectors.ultralytics import check_model_available

    weights, asked = offline
    check_model_available("yolo11n.yaml", weights_dir=weights)
    check_model_available("yolo26n.yml", weights_dir=weights)
    own = tmp_path / "models" / "best.pt"
    own.parent.mkdir()
    own.write_bytes(b"x")
    check_model_available(str(own), weights_dir=weights)
    (weights / "yolo26n.pt").write_bytes(b"x")  # in Ultralytics' weights folder
    check_model_available("yolo26n.pt", weights_dir=weights)
    check_model_available("yolo26n", weights_dir=weights)
    Path("yolo11n.pt").write_bytes(b"x")  # in the working folder, where Ultralytics also looks
    check_model_available("yolo11n.pt", weights_dir=weights)
    assert asked == []


def test_a_missing_file_that_is_no_checkpoint_name_is_an_error_online_too(offline, monkeypatch):
    from labelwise.detectors import ultralytics as adapter
    from labelwise.detectors.base import ModelUnavailableError

    weights, _ = offline
    monkeypatch.setattr(adapter, "_download_host_reachable", lambda *a, **k: True)
    adapter.check_model_available("yolo26n.pt", weights_dir=weights)  # online: Ultralytics downloads it
    for name in ("models/best.pt", "best.pt", "runs/yolo26n.pt"):
        with pytest.raises(ModelUnavailableError, match="not found"):
            adapter.check_model_available(name, weights_dir=weights)


def test_the_weights_folder_defaults_to_ultralytics_settings(ul):
    from ultralytics.utils import SETTINGS

    from labelwise.detectors.ultralytics import _ultralytics_weights_dir

    assert _ultralytics_weights_dir() == Path(SETTINGS["weights_dir"])


def test_ultralytics_finds_its_font_without_asking_the_network(ul, monkeypatch):
    import requests
    from ultralytics.utils import USER_CONFIG_DIR
    from ultralytics.utils.checks import check_font

    def no_network(*args, **kwargs):
        raise AssertionError(f"network request {args[:1]}")

    monkeypatch.setattr(requests, "head", no_network)
    monkeypatch.setattr(requests, "get", no_network)
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        assert Path(check_font(name)) == USER_CONFIG_DIR / name
