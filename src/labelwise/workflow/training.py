"""Training a round: the round's dataset built from the store, the start weights, the detector's training, and the
record of the result. Also the bootstrap datasets the committee's members train on."""

from __future__ import annotations

import json
import os
from pathlib import Path

from labelwise.detectors.base import TrainRequest
from labelwise.fileio import atomic_write_text, sha256_file
from labelwise.pool import format_yolo_label
from labelwise.workflow.context import LoopError, WorkspaceContext, crash_point, open_round


def write_dataset(ctx: WorkspaceContext, round_no: int) -> Path:
    """The round's training data as an Ultralytics dataset built from the store (symlinks + YOLO txt). Held images
    (a newer annotation of theirs was rejected, so their label is out of date) are left out, and taken out of a
    dataset an earlier attempt of the round wrote."""
    root = ctx.round_dir(round_no) / "data"
    held = [image for image, *_ in ctx.store.held()]
    for split, rows in (("train", ctx.store.labels("pool")), ("val", ctx.store.labels("val"))):
        img_dir, lbl_dir = root / "images" / split, root / "labels" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        lbl_dir.mkdir(parents=True, exist_ok=True)
        for image in held:
            (img_dir / f"{image.sha256[:16]}{image.path.suffix.lower()}").unlink(missing_ok=True)
            (lbl_dir / f"{image.sha256[:16]}.txt").unlink(missing_ok=True)
        for image, boxes in rows:
            name = f"{image.sha256[:16]}{image.path.suffix.lower()}"
            link = img_dir / name
            if not link.exists():
                if link.is_symlink():
                    link.unlink()
                os.symlink(image.path, link)
            atomic_write_text(lbl_dir / f"{image.sha256[:16]}.txt", format_yolo_label(boxes))
    if not any((root / "images" / "val").iterdir()):
        raise LoopError("no validation images: give `val:` in labelwise.yaml (a folder with YOLO labels) or "
                        "label more images so that a held-out part exists (val_fraction)")
    return write_data_yaml(ctx, root, "images/val")


def start_weights(ctx: WorkspaceContext, round_no: int) -> str:
    """Warm start: the latest earlier round's weights that still exist, else `model:` from labelwise.yaml."""
    for r in reversed(ctx.store.rounds()):
        if r.round < round_no and r.model_path and Path(r.model_path).exists():
            return r.model_path
    return ctx.config.model


def train(ctx: WorkspaceContext) -> None:
    round_no, step = open_round(ctx)
    if step != "train":
        raise LoopError(f"round {round_no} is at step '{step}', not 'train'")
    n_labeled = ctx.store.counts()["pool_labeled"]
    data_yaml = write_dataset(ctx, round_no)
    result = ctx.detector.train(train_request(ctx, data_yaml, start_weights(ctx, round_no),
                                              ctx.round_dir(round_no) / "train"))
    crash_point("after_train")
    ctx.store.update_round(
        round_no, step="score", model_path=str(result.weights), model_hash=sha256_file(result.weights)[:16],
        n_labeled=n_labeled, map50=result.map50, map50_95=result.map50_95,
        per_class_ap50=result.per_class_ap50, train_seconds=result.seconds,
    )


def train_request(ctx: WorkspaceContext, data_yaml: Path, start: str, out_dir: Path,
                  seed: int | None = None) -> TrainRequest:
    """A training with the workspace's settings (labelwise.yaml's train:, imgsz, device; `seed` default its seed)."""
    cfg = ctx.config
    options = {"nbs": cfg.train.nbs, "warmup_epochs": cfg.train.warmup_epochs, "patience": cfg.train.patience,
               **cfg.train.extra}
    return TrainRequest(data_yaml=data_yaml, start=str(start), out_dir=out_dir, epochs=cfg.train.epochs,
                        imgsz=cfg.imgsz, batch=cfg.train.batch, device=cfg.device,
                        seed=cfg.seed if seed is None else seed, options=options)


def write_bootstrap(ctx: WorkspaceContext, round_no: int, member: int, rows: list) -> Path:
    """Committee member `member`'s training set: `rows` (a bootstrap resample, with repeats) beside the round's val."""
    import shutil

    root = ctx.round_dir(round_no) / f"committee{member}-data"
    if root.exists():  # left by a killed run: start clean, no stale links, labels or Ultralytics label cache
        shutil.rmtree(root)
    img_dir, lbl_dir = root / "images" / "train", root / "labels" / "train"
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    for k, (image, boxes) in enumerate(rows):  # a bootstrap repeats images: each copy needs its own name
        name = f"{k:05d}_{image.sha256[:12]}"
        link = img_dir / f"{name}{image.path.suffix.lower()}"
        os.symlink(image.path, link)
        atomic_write_text(lbl_dir / f"{name}.txt", format_yolo_label(boxes))
    val = ctx.round_dir(round_no) / "data"
    return write_data_yaml(ctx, root, val / "images" / "val")


def write_data_yaml(ctx: WorkspaceContext, root: Path, val: str | Path) -> Path:
    """An Ultralytics dataset YAML for `root` (train = root/images/train) with the workspace's class ids."""
    names = "\n".join(f"  {i}: {json.dumps(n)}" for i, n in enumerate(ctx.config.classes))
    yaml_path = root / "data.yaml"
    atomic_write_text(yaml_path, f"path: {root}\ntrain: images/train\nval: {val}\nnames:\n{names}\n")
    return yaml_path
