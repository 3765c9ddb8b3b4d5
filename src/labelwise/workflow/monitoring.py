"""Production images after the model ships (`labelwise monitor`): score them with the deployed model, flag those
worth labeling into the pool, and show how what the model sees drifts day by day against its own validation set.

Every image seen is recorded once, by content hash (the store's `monitored` table), with its provenance: the file
it came from, when it was seen, the model that scored it, what that model said and what became of it. Scoring goes
through the configured scoring engine and its cache, a chunk of images at a time, each image recorded in its own
transaction: a run stopped at any moment goes on where it was, and an image seen twice (under any name) is never
scored twice.

An image is flagged when it meets one of the rules (`REASONS`), each measured against the model's own validation
split, scored once per model and cached (`Baseline`):

    uncertainty  its uncertainty, under the measure and aggregation of the workspace's strategy, is above the
                 `monitor.quantile` quantile of the validation images' uncertainties
    novelty      the cosine distance of its embedding to the nearest labeled pool image (`NearestLabeled`) is above
                 the same quantile of the validation images' distances
    rare_class   it holds a detection (confidence >= `monitor.conf`, default `score.conf`) of a class that makes
                 less than `monitor.rare_share` of the labeled boxes

A flagged image joins the pool as an unlabeled image (its file copied into WORKSPACE/monitor/images, so the pool
does not depend on the production folder keeping it), unless it is a near duplicate (perceptual hashes within
`monitor.dedup_hamming`) of an image of the workspace, or the day's `monitor.daily_cap` is reached: a camera stuck
on one scene cannot flood the pool. The next `labelwise run` selects among them like any other pool image.

`drift_series` reads the days back (per class mean confidence and detections per image, share of images per rule)
and `drift_plot` draws them as WORKSPACE/monitor/drift.png, which `labelwise status` and the report show.
`watch` keeps a folder under watch with watchdog's Observer and handles new files as they are written.
"""

from __future__ import annotations

import json
import math
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatch
from datetime import datetime
from glob import glob, has_magic
from pathlib import Path
from typing import Any

import numpy as np

from labelwise.detections import ImageDetections, ScoredPool, csr_offsets
from labelwise.engines import ScoreImage, ScoreRequest, ScoringEngine
from labelwise.fileio import atomic_write_text, sha256_file
from labelwise.pool import IMAGE_SUFFIXES, ImageFile, Rejected, find_files, inspect_image, is_candidate
from labelwise.workflow.context import LoopError, WorkspaceContext

#: The flagging rules, in the order they are checked and reported.
REASONS: tuple[str, ...] = ("uncertainty", "novelty", "rare_class")
#: What becomes of a monitored image (the store's `monitored.outcome`).
OUTCOMES: tuple[str, ...] = ("passed", "flagged", "capped", "duplicate", "known")
MONITOR_DIR = "monitor"
PLOT_NAME = "drift.png"
#: Images read, scored and recorded together; a stopped run loses at most the inference of one chunk.
CHUNK = 64
_BASELINE = ("monitor", "baseline")  # kv: the baseline of the last model calibrated (drift draws against it)
BASELINE_VERSION = 1  # bumped when how a baseline is computed changes


# -- the deployed model ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DeployedModel:
    weights: Path
    model_hash: str
    source: str  # "round N" or the --model file


def deployed_model(ctx: WorkspaceContext, model: Path | None = None) -> DeployedModel:
    """The model production runs: `model` when given, else the last round's trained weights. LoopError, naming
    the command to run first, when the workspace has none."""
    if model is not None:
        model = Path(model)
        if not model.is_file():
            raise FileNotFoundError(f"--model {model}: no such file (give the deployed checkpoint, a .pt file)")
        return DeployedModel(model.absolute(), sha256_file(model)[:16], str(model))
    trained = [r for r in ctx.store.rounds() if r.model_path and r.model_hash]
    if not trained:
        raise LoopError(f"{ctx.root} has no trained model to monitor with yet: run `labelwise run -w {ctx.root}` "
                        f"(or `labelwise train -w {ctx.root}` once images are labeled) first, or give the deployed "
                        "checkpoint with --model PT")
    last = trained[-1]
    if not Path(last.model_path).is_file():
        raise LoopError(f"round {last.round}'s weights {last.model_path} are gone; train again (`labelwise train "
                        f"-w {ctx.root}`) or give the deployed checkpoint with --model PT")
    return DeployedModel(Path(last.model_path), last.model_hash, f"round {last.round}")


# -- the baseline: what the model shows on its own validation set ---------------------------------------------------

def measure(ctx: WorkspaceContext) -> dict[str, Any]:
    """The uncertainty settings of the workspace's strategy (for the next round), as `image_uncertainty` takes them;
    a strategy that names no measure uses StrategyConfig's defaults, one named after a measure that measure."""
    from labelwise.selection import StrategyConfig
    from labelwise.uncertainty import MEASURES

    current = ctx.store.current_round()
    spec = ctx.config.strategy_for_round((current.round if current else 0) + 1)
    defaults = StrategyConfig()
    name = spec.get("name")
    return {"measure": name if name in MEASURES else spec.get("uncertainty", defaults.uncertainty),
            "aggregation": spec.get("aggregation", defaults.aggregation),
            "top_n": int(spec.get("top_n", defaults.top_n)),
            "empty_policy": spec.get("empty_policy", defaults.empty_policy),
            "empty_value": float(spec.get("empty_value", defaults.empty_value)),
            "box_threshold": float(spec.get("box_threshold", defaults.box_threshold))}


def detection_conf(ctx: WorkspaceContext) -> float:
    """From which confidence a box counts as a detection (rare classes, drift): `monitor.conf`, else `score.conf`."""
    conf = ctx.config.monitor.conf
    return ctx.config.score.conf if conf is None else conf


@dataclass
class Baseline:
    """The model on its validation images: the flagging thresholds and the drift plot's reference levels."""

    key: str  # what it was computed from (model, size, settings, the labeled and val images)
    model_hash: str
    quantile: float
    uncertainty: float  # flag above this uncertainty
    novelty: float | None  # flag above this distance to the nearest labeled image (None: nothing labeled is embedded)
    val_images: int
    labeled_images: int
    conf: float
    class_conf: dict[int, float | None]  # mean confidence of each class's detections
    class_rate: dict[int, float]  # detections per image of each class
    rare: list[int]  # classes under monitor.rare_share of the labeled boxes

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Baseline":
        data = dict(data)
        data["class_conf"] = {int(k): v for k, v in data["class_conf"].items()}
        data["class_rate"] = {int(k): v for k, v in data["class_rate"].items()}
        return cls(**data)


class NearestLabeled:
    """Cosine distance to the nearest labeled image: the image embeddings scaled to unit length, as is, and the
    largest inner product with a labeled one (the nearest-neighbour out-of-distribution score of Sun, Ming, Zhu & Li
    2022, "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML, with k = 1).

    Not centred, unlike selection's near-duplicate filter: centring takes away the component all pooled features
    share, and with it the global appearance (light, colour, noise) that sets a night scene apart. Measured on the
    synthetic stream (a pretrained YOLOv8s fine-tuned on daylight, 150 validation images, images above the
    validation 90% quantile): daylight 8%, night 35% as is; 12% and 30% centred; and a young yolo11n, whose dark
    images fire few channels, 0% and 92% as is but 32% and 0% centred. faiss searches when it is installed, else
    NumPy in chunks."""

    CHUNK_ROWS = 1024

    def __init__(self, labeled: np.ndarray):
        from labelwise.diversity import l2_normalise

        self.refs = np.ascontiguousarray(l2_normalise(np.asarray(labeled, dtype=np.float32)))
        try:
            import faiss
        except ImportError:
            self.index = None
        else:
            self.index = faiss.IndexFlatIP(self.refs.shape[1])
            self.index.add(self.refs)

    def distance(self, embeddings: np.ndarray) -> np.ndarray:
        """(N,) 1 - the cosine similarity to the nearest labeled image, in [0, 2]."""
        from labelwise.diversity import l2_normalise

        x = np.asarray(embeddings, dtype=np.float32)
        if not len(x):
            return np.zeros(0)
        x = np.ascontiguousarray(l2_normalise(x))
        if self.index is not None:
            best, _ = self.index.search(x, 1)
            similarity = best[:, 0]
        else:
            similarity = np.concatenate([(x[i:i + self.CHUNK_ROWS] @ self.refs.T).max(axis=1)
                                         for i in range(0, len(x), self.CHUNK_ROWS)])
        return np.clip(1.0 - similarity.astype(np.float64), 0.0, 2.0)


def _score(ctx: WorkspaceContext, engine: ScoringEngine, model: DeployedModel, images: list[tuple[str, str]],
           progress: bool) -> Any:
    cfg = ctx.config
    request = ScoreRequest(weights=model.weights, model_hash=model.model_hash, imgsz=cfg.imgsz,
                           images=tuple(ScoreImage(sha, path) for sha, path in images), conf=cfg.score.conf,
                           iou=cfg.score.iou, max_det=cfg.score.max_det, batch=cfg.score.batch, device=cfg.device)
    return engine.score(ctx, request, progress=progress)


def calibrate(ctx: WorkspaceContext, model: DeployedModel, engine: ScoringEngine,
              progress: bool = True) -> tuple[Baseline, NearestLabeled | None]:
    """The model's baseline (cached in the store while the model, the settings and the labeled and validation
    images stay the same) and the nearest-labeled index. Scores the validation and labeled images the model has not
    scored yet (a round's model has scored the labeled pool already)."""
    cfg = ctx.config
    val = ctx.store.images(split="val")
    if not val:
        raise LoopError(f"{ctx.root} has no validation images to measure the model against, so `monitor` cannot "
                        "tell unusual from usual; give a validation folder (`labelwise init --val`) or label the "
                        "reserved validation images first")
    labeled = [image for image, _boxes in ctx.store.labels("pool")]
    spec = measure(ctx)
    conf = detection_conf(ctx)
    settings = {"version": BASELINE_VERSION, "model": model.model_hash, "imgsz": cfg.imgsz, "quantile": cfg.monitor.quantile,
                "rare_share": cfg.monitor.rare_share, "conf": conf, "measure": spec,
                "score": [cfg.score.conf, cfg.score.iou, cfg.score.max_det],
                "val": sorted(i.sha256 for i in val), "labeled": sorted(i.sha256 for i in labeled)}
    key = sha256_text(json.dumps(settings, sort_keys=True))
    _score(ctx, engine, model, [(i.sha256, str(i.path)) for i in [*val, *labeled]], progress)
    labeled_pool = ctx.store.scored_pool(np.array([i.id for i in labeled], dtype=np.int64), model.model_hash,
                                         cfg.imgsz, n_classes=len(cfg.classes))
    nearest = NearestLabeled(labeled_pool.embeddings) if len(labeled_pool) else None
    cached = ctx.store.kv_get("monitor", f"baseline/{model.model_hash}")
    if cached is not None and cached.get("key") == key:
        baseline = Baseline.from_json(cached)
        ctx.store.kv_set(*_BASELINE, baseline.to_json())
        return baseline, nearest
    val_pool = ctx.store.scored_pool(np.array([i.id for i in val], dtype=np.int64), model.model_hash, cfg.imgsz,
                                     n_classes=len(cfg.classes))
    if not len(val_pool):
        raise LoopError(f"none of the {len(val)} validation images could be scored (see `labelwise status` for the "
                        "quarantined files)")
    _check_classes(ctx, val_pool.n_classes, model)
    from labelwise.uncertainty import image_uncertainty

    uncertainty = image_uncertainty(val_pool, **spec)
    novelty = nearest.distance(val_pool.embeddings) if nearest is not None else None
    n_classes = len(cfg.classes)
    counts = ctx.store.class_box_counts(n_classes)
    share = counts / counts.sum() if counts.sum() else np.ones(n_classes)
    top = val_pool.class_scores.max(axis=1) if len(val_pool.class_scores) else np.zeros(0)
    cls = val_pool.class_scores.argmax(axis=1) if len(val_pool.class_scores) else np.zeros(0, np.int64)
    counted = top >= conf
    class_conf: dict[int, float | None] = {}
    class_rate: dict[int, float] = {}
    for c in range(n_classes):
        mine = counted & (cls == c)
        class_conf[c] = float(top[mine].mean()) if mine.any() else None
        class_rate[c] = float(mine.sum() / len(val_pool))
    baseline = Baseline(
        key=key, model_hash=model.model_hash, quantile=cfg.monitor.quantile,
        uncertainty=float(np.quantile(uncertainty, cfg.monitor.quantile)),
        novelty=float(np.quantile(novelty, cfg.monitor.quantile)) if novelty is not None else None,
        val_images=len(val_pool), labeled_images=len(labeled_pool), conf=conf, class_conf=class_conf,
        class_rate=class_rate, rare=[c for c in range(n_classes) if share[c] < cfg.monitor.rare_share])
    with ctx.store.transaction():
        ctx.store.kv_set("monitor", f"baseline/{model.model_hash}", baseline.to_json())
        ctx.store.kv_set(*_BASELINE, baseline.to_json())
    return baseline, nearest


def sha256_text(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_classes(ctx: WorkspaceContext, n_classes: int, model: DeployedModel) -> None:
    if n_classes != len(ctx.config.classes):
        raise LoopError(f"the model {model.source} predicts {n_classes} classes, the workspace has "
                        f"{len(ctx.config.classes)} ({', '.join(ctx.config.classes)}); give a checkpoint trained on "
                        "this workspace's classes")


def pack(detections: list[ImageDetections], n_classes: int) -> ScoredPool:
    """Detections of a few images as a ScoredPool (rows in the given order; boxes normalised by the image size)."""
    counts = np.array([d.n_boxes for d in detections], dtype=np.int64)
    scores = [np.asarray(d.class_scores, dtype=np.float32).reshape(-1, n_classes) for d in detections]
    boxes = [np.asarray(d.boxes, dtype=np.float32).reshape(-1, 4) / np.float32([d.width, d.height] * 2)
             for d in detections]
    dim = max((np.asarray(d.embedding).shape[0] for d in detections), default=0)
    return ScoredPool(
        image_ids=np.arange(len(detections), dtype=np.int64),
        embeddings=np.stack([np.asarray(d.embedding, dtype=np.float32) for d in detections])
        if detections else np.zeros((0, dim), np.float32),
        box_offsets=csr_offsets(counts),
        class_scores=np.concatenate(scores) if scores else np.zeros((0, n_classes), np.float32),
        boxes=np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32),
        max_candidate_score=np.array([d.max_candidate_score for d in detections], dtype=np.float32))


# -- one pass over files -----------------------------------------------------------------------------------------------

@dataclass
class MonitorReport:
    """What a monitor run did. `seen`: images recorded now (new content); `already_seen`: files (or the same bytes
    under another name) recorded before, passed over; `scored`: images the detector ran on (the rest of `seen` was
    in the score cache); per outcome: `flagged` (now in the pool), `capped`, `duplicates`, `known` (already in the
    workspace), `passed`; `reasons`: images that met each rule (flagged or not)."""

    model: str = ""
    seen: int = 0
    already_seen: int = 0
    scored: int = 0
    flagged: int = 0
    capped: int = 0
    duplicates: int = 0
    known: int = 0
    passed: int = 0
    reasons: dict[str, int] = field(default_factory=lambda: {r: 0 for r in REASONS})
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    days: list[str] = field(default_factory=list)
    interrupted: bool = False

    def add(self, other: "MonitorReport") -> None:
        for name in ("seen", "already_seen", "scored", "flagged", "capped", "duplicates", "known", "passed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for reason, n in other.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + n
        self.unreadable += other.unreadable
        self.days += [d for d in other.days if d not in self.days]
        self.model = other.model or self.model

    @property
    def suppressed(self) -> int:
        return self.capped + self.duplicates

    def line(self) -> str:
        met = ", ".join(f"{r.replace('_', ' ')} {n}" for r, n in self.reasons.items() if n)
        text = (f"{self.seen} new image(s) scored with model {self.model} ({self.scored} needed inference), "
                f"{self.flagged} flagged into the pool")
        if met:
            text += f" (rules met: {met})"
        if self.suppressed:
            text += (f"; {self.suppressed} suppressed ({self.capped} over the daily cap, {self.duplicates} near "
                     "duplicate(s))")
        if self.known:
            text += f"; {self.known} already in the workspace"
        if self.already_seen:
            text += f"; {self.already_seen} seen before"
        if self.unreadable:
            text += f"; {len(self.unreadable)} unreadable"
        return text


class Monitor:
    """A monitoring session: the deployed model, its baseline, the nearest-labeled index and the workspace's
    perceptual hashes, loaded once; `process` handles files. `clock` gives the time an image is seen (local time
    by default; its date is the day the cap and the drift count by)."""

    def __init__(self, ctx: WorkspaceContext, model: Path | None = None, *,
                 clock: Callable[[], datetime] | None = None, engine: ScoringEngine | None = None,
                 progress: bool = True):
        from labelwise.workflow.scoring import engine_for

        self.ctx = ctx
        self.model = deployed_model(ctx, model)
        self.engine = engine if engine is not None else engine_for(ctx)
        self.clock = clock or (lambda: datetime.now().astimezone())
        self.progress = progress
        self.baseline, self.nearest = calibrate(ctx, self.model, self.engine, progress=progress)
        self.measure = measure(ctx)
        self.conf = detection_conf(ctx)
        self.rare = set(self.baseline.rare)
        images = ctx.store.images()
        with_hashes = ctx.store.ids_with_hashes(np.array([i.id for i in images], dtype=np.int64))
        self.hashes = ctx.store.image_hashes(with_hashes) if len(with_hashes) else np.zeros((0, 2), np.uint64)
        by_id = {i.id: str(i.path) for i in images}
        self.hash_names = [by_id[int(i)] for i in with_hashes]
        self.total = MonitorReport(model=self.model.model_hash)

    def process(self, paths: Iterable[Path], total: int | None = None) -> MonitorReport:
        """Score, judge and record `paths` (new content only), CHUNK images at a time. Returns what this call did
        (also added to `self.total`)."""
        report = MonitorReport(model=self.model.model_hash)
        paths = list(paths)
        bar = None
        if self.progress and len(paths) > CHUNK:
            from labelwise.progress import progress_bar

            bar = progress_bar()
            bar.start()
            task = bar.add_task("Monitoring", total=total or len(paths), rate="")
        started = time.perf_counter()
        try:
            for start in range(0, len(paths), CHUNK):
                chunk = paths[start:start + CHUNK]
                self._chunk(chunk, report)
                if bar is not None:
                    done = start + len(chunk)
                    bar.update(task, completed=done, rate=f"{done / max(time.perf_counter() - started, 1e-9):.1f} img/s")
        finally:
            if bar is not None:
                bar.stop()
            self.total.add(report)
        return report

    def _chunk(self, paths: list[Path], report: MonitorReport) -> None:
        store = self.ctx.store
        fresh: list[tuple[ImageFile, os.stat_result]] = []
        shas: set[str] = set()
        for path in paths:
            path = Path(path).absolute()
            try:
                stat = path.stat()
            except OSError as exc:
                report.unreadable.append((str(path), f"{path}: cannot be read ({exc.strerror or exc})"))
                continue
            if store.monitored_path(str(path), stat.st_size, stat.st_mtime_ns):
                report.already_seen += 1
                continue
            found = inspect_image(path)
            if isinstance(found, Rejected):
                report.unreadable.append((str(path), found.reason))
                continue
            if found.sha256 in shas or store.is_monitored(found.sha256):
                store.note_monitored_path(str(path), found.sha256, stat.st_size, stat.st_mtime_ns)
                report.already_seen += 1
                continue
            shas.add(found.sha256)
            fresh.append((found, stat))
        if not fresh:
            return
        scored = _score(self.ctx, self.engine, self.model, [(f.sha256, str(f.path)) for f, _ in fresh], False)
        report.scored += scored.scored
        failed = dict(scored.quarantined)
        detections = store.detections_many([f.sha256 for f, _ in fresh], self.model.model_hash,
                                           self.ctx.config.imgsz)
        ready = []
        for found, stat in fresh:
            if found.sha256 in detections:
                ready.append((found, stat, detections[found.sha256]))
            else:
                report.unreadable.append((str(found.path), failed.get(str(found.path), f"{found.path}: not scored")))
        if not ready:
            return
        n_classes = len(self.ctx.config.classes)
        _check_classes(self.ctx, max((d.class_scores.shape[1] for *_, d in ready if d.n_boxes), default=n_classes),
                       self.model)
        pool = pack([d for *_, d in ready], n_classes)
        from labelwise.uncertainty import image_uncertainty

        uncertainty = image_uncertainty(pool, **self.measure)
        novelty = self.nearest.distance(pool.embeddings) if self.nearest is not None else None
        for row, (found, stat, det) in enumerate(ready):
            self._record(found, stat, det, float(uncertainty[row]),
                         None if novelty is None else float(novelty[row]), report)

    def _record(self, found: ImageFile, stat: os.stat_result, det: ImageDetections, uncertainty: float,
                novelty: float | None, report: MonitorReport) -> None:
        ctx, base, settings = self.ctx, self.baseline, self.ctx.config.monitor
        scores = np.asarray(det.class_scores, dtype=np.float64)
        top = scores.max(axis=1) if det.n_boxes else np.zeros(0)
        cls = scores.argmax(axis=1) if det.n_boxes else np.zeros(0, np.int64)
        counted = top >= self.conf
        stats = {int(c): [int((counted & (cls == c)).sum()), round(float(top[counted & (cls == c)].sum()), 6)]
                 for c in np.unique(cls[counted])}
        reasons = []
        if uncertainty > base.uncertainty:
            reasons.append("uncertainty")
        if novelty is not None and base.novelty is not None and novelty > base.novelty:
            reasons.append("novelty")
        if self.rare & set(stats):
            reasons.append("rare_class")
        now = self.clock()
        day = now.date().isoformat()
        row: dict[str, Any] = {
            "sha256": found.sha256, "source": str(found.path), "seen_at": now.isoformat(timespec="seconds"),
            "day": day, "model_hash": self.model.model_hash, "imgsz": ctx.config.imgsz,
            "uncertainty": uncertainty, "novelty": novelty, "detections": int(counted.sum()), "class_stats": stats,
            "reasons": reasons, "duplicate_of": None}
        add = None
        known = ctx.store.image_by_sha(found.sha256)
        pair = np.array([[found.phash, found.dhash]], dtype=np.uint64)
        if known is not None:
            row["outcome"], row["image_id"] = "known", known.id
        elif not reasons:
            row["outcome"] = "passed"
        elif settings.dedup_hamming is not None and (dup := self._duplicate(pair, settings.dedup_hamming)):
            row["outcome"], row["duplicate_of"] = "duplicate", dup
        elif settings.daily_cap is not None and ctx.store.monitored_on(day, "flagged") >= settings.daily_cap:
            row["outcome"] = "capped"
        else:
            row["outcome"] = "flagged"
            copy = _keep_copy(ctx, found)
            add = (str(copy), found.width, found.height, found.phash, found.dhash)
        ctx.store.record_monitored(row, size=stat.st_size, mtime_ns=stat.st_mtime_ns, add=add)
        if add is not None:
            self.hashes = np.concatenate([self.hashes, pair])
            self.hash_names.append(add[0])
        report.seen += 1
        for reason in reasons:
            report.reasons[reason] += 1
        attribute = {"duplicate": "duplicates"}.get(row["outcome"], row["outcome"])
        setattr(report, attribute, getattr(report, attribute) + 1)
        if day not in report.days:
            report.days.append(day)

    def _duplicate(self, pair: np.ndarray, max_distance: int) -> str | None:
        from labelwise.neardup import nearest_hash_duplicate

        if not len(self.hashes):
            return None
        index, _distance = nearest_hash_duplicate(pair, self.hashes, max_distance)
        return self.hash_names[int(index[0])] if index[0] >= 0 else None


def _keep_copy(ctx: WorkspaceContext, found: ImageFile) -> Path:
    """The flagged file copied into WORKSPACE/monitor/images under its hash (atomically; a copy already there is
    kept), so the pool keeps it whatever the production folder does with it."""
    folder = ctx.root / MONITOR_DIR / "images"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{found.sha256[:16]}{found.path.suffix.lower()}"
    if not target.exists():
        partial = target.with_name(f".{target.name}.{os.getpid()}.part")
        shutil.copyfile(found.path, partial)
        os.replace(partial, target)
    return target


def expand(sources: Iterable[str | Path]) -> list[Path]:
    """Image files of `sources`: files, folders (walked) and glob patterns (`**` recursive), in a stable order,
    each once. FileNotFoundError for a source that names nothing."""
    files: list[Path] = []
    for source in sources:
        text = str(source)
        if has_magic(text) and not Path(text).exists():
            matches = sorted(Path(m).absolute() for m in glob(text, recursive=True))
            found = [p for m in matches for p in (find_files([m]) if m.is_dir() else [m])]
            if not found:
                raise FileNotFoundError(f"--images {text}: the pattern matches no file")
        elif Path(text).exists():
            found = list(find_files([Path(text)]))
        else:
            raise FileNotFoundError(f"--images {text}: no such file or folder")
        explicit = {Path(text).absolute()} if Path(text).is_file() else set()
        files.extend(p for p in found if is_candidate(p, p in explicit))
    return list(dict.fromkeys(files))


def monitor(ctx: WorkspaceContext, sources: Iterable[str | Path], *, model: Path | None = None,
            clock: Callable[[], datetime] | None = None, progress: bool = True,
            engine: ScoringEngine | None = None) -> MonitorReport:
    """Score the images of `sources` with the deployed model and flag those worth labeling into the pool (see the
    module doc). Ctrl-C stops between images: the report says so (`interrupted`), and a rerun goes on."""
    files = expand(sources)
    session = Monitor(ctx, model, clock=clock, engine=engine, progress=progress)
    try:
        session.process(files)
    except KeyboardInterrupt:
        session.total.interrupted = True
    return session.total


# -- watching a folder -------------------------------------------------------------------------------------------------

def watch(ctx: WorkspaceContext, sources: Iterable[str | Path], *, model: Path | None = None,
          stop: threading.Event | None = None, clock: Callable[[], datetime] | None = None,
          lock: Callable[[], AbstractContextManager[Any]] | None = None,
          on_batch: Callable[[MonitorReport], None] | None = None, settle_s: float = 0.5,
          ready: threading.Event | None = None, progress: bool = True,
          engine: ScoringEngine | None = None) -> MonitorReport:
    """Monitor the folders (or glob patterns) of `sources` and keep watching them: every image file written there
    later is handled once it has been quiet for `settle_s` seconds (so a file still being written is not read half
    way). Watching is watchdog's Observer (inotify, FSEvents, ReadDirectoryChangesW): nothing here lists the folders
    again. Runs until `stop` is set or Ctrl-C (then `interrupted`); returns everything it did.

    `lock`: a context manager factory held around each batch (the CLI's workspace lock, so `labelwise run` can work
    between batches); a batch that finds the workspace busy is tried again a moment later. `ready` is set once the
    folders are watched and the files already there are handled. `on_batch` hears each batch's report."""
    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers import Observer

    from labelwise.lock import WorkspaceBusy

    targets = _watch_targets(sources)
    stop = stop or threading.Event()
    guard = lock or nullcontext
    events: queue.Queue[str] = queue.Queue()

    def wanted(path: str) -> bool:
        p = Path(path)
        if p.name.startswith(".") or p.suffix.lower() not in IMAGE_SUFFIXES:
            return False
        return any(_under(p, folder) and (pattern is None or fnmatch(str(p), pattern)) for folder, pattern in targets)

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            if event.is_directory or event.event_type not in ("created", "modified", "moved", "closed"):
                return
            path = getattr(event, "dest_path", "") or event.src_path
            path = os.fsdecode(path)
            if wanted(path):
                events.put(path)

    observer = Observer()
    handler = Handler()
    for folder, _pattern in targets:
        observer.schedule(handler, str(folder), recursive=True)
    observer.start()
    session: Monitor | None = None
    try:
        with guard():
            session = Monitor(ctx, model, clock=clock, engine=engine, progress=progress)
            existing = [p for folder, pattern in targets for p in find_files([folder])
                        if wanted(str(p))]
            report = session.process(existing)
        if on_batch is not None and (report.seen or report.unreadable):
            on_batch(report)
        if ready is not None:
            ready.set()
        pending: dict[str, float] = {}
        while not stop.is_set():
            try:
                path = events.get(timeout=min(settle_s, 0.5) if pending else 0.5)
                pending[path] = time.monotonic()
                while True:
                    path = events.get_nowait()
                    pending[path] = time.monotonic()
            except queue.Empty:
                pass
            now = time.monotonic()
            due = sorted(p for p, t in pending.items() if now - t >= settle_s)
            if not due:
                continue
            try:
                with guard():
                    report = session.process([Path(p) for p in due if Path(p).exists()])
            except WorkspaceBusy:
                for p in due:  # another command holds the workspace: the batch waits for it
                    pending[p] = now + 2.0
                continue
            for p in due:
                pending.pop(p, None)
            if on_batch is not None and (report.seen or report.unreadable or report.already_seen):
                on_batch(report)
    except KeyboardInterrupt:
        if session is None:
            raise
        session.total.interrupted = True
    finally:
        observer.stop()
        observer.join()
        if ready is not None:
            ready.set()
    return session.total


def _watch_targets(sources: Iterable[str | Path]) -> list[tuple[Path, str | None]]:
    """(folder, glob pattern or None) for each source: a folder is watched whole; a glob's folder is the part before
    its first wildcard."""
    targets = []
    for source in sources:
        text = str(source)
        if Path(text).is_dir():
            targets.append((Path(text).absolute(), None))
        elif has_magic(text):
            parts = Path(text).parts
            fixed = next(i for i, part in enumerate(parts) if has_magic(part))
            folder = Path(*parts[:fixed]) if fixed else Path(".")
            if not folder.is_dir():
                raise FileNotFoundError(f"--images {text}: folder {folder} does not exist")
            targets.append((folder.absolute(), str(Path(text).absolute())))
        else:
            raise ValueError(f"--watch needs folders or glob patterns to watch; {text} is "
                             + ("a file" if Path(text).exists() else "not there"))
    return targets


def _under(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


# -- drift ---------------------------------------------------------------------------------------------------------------

@dataclass
class DriftSeries:
    """The days `labelwise monitor` saw, as the drift plot draws them (each list has one value per day; NaN where a
    class had no detection). Class series are keyed by class name; `flag_share` by rule and 'any'."""

    days: list[str]
    images: list[int]
    mean_conf: dict[str, list[float]]
    detections_per_image: dict[str, list[float]]
    flag_share: dict[str, list[float]]
    outcomes: dict[str, list[int]]
    model_changes: list[int]
    baseline_conf: dict[str, float | None]
    baseline_rate: dict[str, float]
    expected_share: float | None
    baseline_model: str | None

    def to_json(self) -> dict[str, Any]:
        def clean(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list):
                return [clean(v) for v in value]
            return value

        return clean(asdict(self))


def drift_series(ctx: WorkspaceContext) -> DriftSeries | None:
    """Per day seen: per-class mean confidence and detections per image, the share of images per rule met, and the
    outcomes; with the validation baseline of the last model calibrated. None when nothing was monitored."""
    days = ctx.store.monitored_days()
    if not days:
        return None
    classes = list(ctx.config.classes)
    stored = ctx.store.kv_get(*_BASELINE)
    baseline = Baseline.from_json(stored) if stored else None
    images = [d["images"] for d in days]
    mean_conf = {name: [] for name in classes}
    rate = {name: [] for name in classes}
    for d in days:
        for c, name in enumerate(classes):
            boxes, conf = d["classes"].get(c, (0, 0.0))
            mean_conf[name].append(conf / boxes if boxes else float("nan"))
            rate[name].append(boxes / d["images"])
    share = {reason: [d["reasons"].get(reason, 0) / d["images"] for d in days] for reason in (*REASONS, "any")}
    outcomes = {o: [d["outcomes"].get(o, 0) for d in days] for o in OUTCOMES}
    changes = [i for i in range(1, len(days)) if days[i]["models"][0] != days[i - 1]["models"][-1]]
    return DriftSeries(
        days=[d["day"] for d in days], images=images, mean_conf=mean_conf, detections_per_image=rate,
        flag_share=share, outcomes=outcomes, model_changes=changes,
        baseline_conf={name: baseline.class_conf.get(c) for c, name in enumerate(classes)} if baseline else {},
        baseline_rate={name: baseline.class_rate.get(c, 0.0) for c, name in enumerate(classes)} if baseline else {},
        expected_share=(1.0 - baseline.quantile) if baseline else None,
        baseline_model=baseline.model_hash if baseline else None)


def plot_path(ctx: WorkspaceContext) -> Path:
    return ctx.root / MONITOR_DIR / PLOT_NAME


def drift_plot(ctx: WorkspaceContext, series: DriftSeries | None = None) -> Path | None:
    """Draw WORKSPACE/monitor/drift.png (and drift.json, the series it shows) unless they are up to date with the
    store; None when nothing was monitored."""
    out = plot_path(ctx)
    sidecar = out.with_suffix(".json")
    stamp = [*ctx.store.monitored_fingerprint(), (ctx.store.kv_get(*_BASELINE) or {}).get("key")]
    if stamp[0] == 0:
        return None
    try:
        if json.loads(sidecar.read_text()).get("stamp") == stamp and out.exists():
            return out
    except (OSError, ValueError):
        pass
    series = series or drift_series(ctx)
    if series is None:
        return None
    from labelwise import plots

    plots.drift(series.days, series.images, series.mean_conf, series.detections_per_image,
                {("any rule" if k == "any" else k.replace("_", " ")): v for k, v in series.flag_share.items()},
                out, baseline_conf=series.baseline_conf, baseline_rate=series.baseline_rate,
                expected_share=series.expected_share, model_changes=series.model_changes)
    atomic_write_text(sidecar, json.dumps({"stamp": stamp, "series": series.to_json()}, indent=1))
    return out


@dataclass
class MonitorSummary:
    line: str
    plot: Path | None


def summary(ctx: WorkspaceContext) -> MonitorSummary | None:
    """One line on what `labelwise monitor` has seen, and the drift plot (drawn when out of date); None when it has
    seen nothing."""
    series = drift_series(ctx)
    if series is None:
        return None
    total = sum(series.images)
    flagged = sum(series.outcomes["flagged"])
    capped, dups = sum(series.outcomes["capped"]), sum(series.outcomes["duplicate"])
    last = -1
    line = (f"{total} production image(s) over {len(series.days)} day(s) ({series.days[0]} to {series.days[-1]}), "
            f"{flagged} flagged into the pool, {capped + dups} suppressed ({capped} over the daily cap, {dups} near "
            f"duplicate(s)); {series.days[last]}: {series.flag_share['any'][last]:.0%} met a rule")
    if series.expected_share is not None:
        line += f" (validation: {series.expected_share:.0%} per rule)"
    confs = [v[last] for v in series.mean_conf.values() if math.isfinite(v[last])]
    base = [v for v in series.baseline_conf.values() if v is not None]
    if confs and base:
        line += f", mean confidence {np.mean(confs):.2f} (validation {np.mean(base):.2f})"
    return MonitorSummary(line, drift_plot(ctx, series))
