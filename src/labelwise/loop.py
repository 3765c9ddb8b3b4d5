"""The workflow: rounds of train -> score -> select -> annotate, as a state machine persisted in the store.

This is the one place that calls both the pure core (selection, stopping) and the adapters (detector, annotation
backends, store). Each step reads its inputs from the store, does its work, and records its result and the next step
in ONE transaction, so killing the process at any moment and running the same command again resumes where it was:
training restarts the round's training, scoring skips every image already cached for the round's model, selection
and imports are atomic. Nothing here ever waits for a keyboard.

A round:
    train     train on every labeled pool image (warm start from the previous round's best weights)
    score     one forward pass over the pool: boxes, full class scores, embeddings (cached by image, model, size)
    select    the strategy picks the batch; every score component and the reason are stored
    annotate  the batch goes to the annotation backend; labels come back; the round is done when every image
              is labeled or skipped (skipped images go back to the pool)
The first round of a workspace with no labels at all skips train and score and picks its batch at random.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labelwise.annotation.base import AnnotationBackend, Batch, BatchItem, PullResult
from labelwise.config import (
    ConfigError,
    WorkspaceConfig,
    config_from_dict,
    load_config,
    read_data_yaml,
    save_config,
)
from labelwise.detections import ScoredPool
from labelwise.detectors.base import Detector, ScoreFailure, TrainRequest
from labelwise.fileio import atomic_write_text, sha256_file
from labelwise.pool import (
    Rejected,
    find_files,
    format_yolo_label,
    inspect_image,
    is_candidate,
    label_path_for,
    read_yolo_label,
)
from labelwise.progress import track
from labelwise.store import STORE_NAME, Store

STEPS = ("train", "score", "select", "annotate", "done")


class LoopError(RuntimeError):
    """The loop cannot take the next step; the message says why and what to do."""


def crash_point(name: str) -> None:
    """Fault injection for the crash-safety tests: LABELWISE_CRASH_AT=<name> kills the process here with SIGKILL,
    exactly as `kill -9` would, at a moment a timing-based kill could not hit reliably."""
    if os.environ.get("LABELWISE_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class AddReport:
    added: int = 0
    labeled: int = 0
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (path, path of the same bytes already known)
    quarantined: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    unlabeled_in_labeled_source: int = 0


@dataclass
class Status:
    workspace: Path
    round: int | None
    step: str
    counts: dict[str, int]
    last_map50: float | None
    next_command: str
    message: str
    quarantined: list[tuple[str, str]]
    finished: str | None
    rounds: list[dict[str, Any]]
    advice: list[Any] = field(default_factory=list)


@dataclass
class RoundSummary:
    round: int
    n_labeled: int | None
    map50: float | None
    selected: list[dict[str, Any]]


class StoreBackendState:
    """BackendState kept in the store's kv table, one namespace per backend."""

    def __init__(self, store: Store, namespace: str):
        self.store, self.namespace = store, namespace

    def get(self, key: str, default: Any = None) -> Any:
        return self.store.kv_get(self.namespace, key, default)

    def set(self, key: str, value: Any) -> None:
        self.store.kv_set(self.namespace, key, value)


class Workspace:
    """A labelwise workspace: labelwise.yaml, the store, and everything rounds write. The Python API of the CLI."""

    def __init__(self, root: Path, detector: Detector | None = None):
        self.root = Path(root).absolute()
        self.config: WorkspaceConfig = load_config(self.root)
        self.store = Store(self.root / STORE_NAME)
        self._detector = detector

    # -- creation and the pool -----------------------------------------------------------------------------------

    @classmethod
    def create(cls, root: Path, images: list[Path], classes: list[str] | None = None, data_yaml: Path | None = None,
               labeled: list[Path] | None = None, val: Path | None = None, **settings: Any) -> "Workspace":
        root = Path(root).absolute()
        if (root / "labelwise.yaml").exists():
            raise ConfigError(f"{root} is already a labelwise workspace; use `labelwise add` to grow its pool")
        if data_yaml is not None:
            names, _train, data_val = read_data_yaml(data_yaml)
            if classes and list(classes) != names:
                raise ConfigError(f"--classes {classes} differ from the names in {data_yaml}: {names}")
            classes = names
            val = val or data_val
        if not classes:
            raise ConfigError("give the class names with --classes a,b,c or --data data.yaml")
        for source in images + (labeled or []) + ([val] if val else []):
            if not Path(source).exists():
                raise ConfigError(f"{source} does not exist")
        data: dict[str, Any] = {
            "classes": list(classes), "images": [str(Path(p).absolute()) for p in images],
            "labeled": [str(Path(p).absolute()) for p in labeled or []],
            "val": str(Path(val).absolute()) if val else None,
        }
        data.update(settings)
        config = config_from_dict(data, "labelwise.yaml settings")
        root.mkdir(parents=True, exist_ok=True)
        save_config(root, config)
        ws = cls(root)
        return ws

    def add(self, sources: list[Path], *, labeled: bool = False, split: str = "pool",
            progress: bool = True) -> AddReport:
        """Hash, validate and register images. With labeled=True their YOLO labels (images/ -> labels/) come too.

        Idempotent: a file already registered under the same path is skipped without being read again.
        """
        report = AddReport()
        n_classes = len(self.config.classes)
        explicit = {Path(s).absolute() for s in sources if Path(s).is_file()}
        files = [p for p in find_files(sources) if is_candidate(p, p in explicit)]
        iterator = track(files, len(files), "Adding images") if progress and files else files
        for path in iterator:
            if self.store.known_path(str(path)) is not None:
                continue
            found = inspect_image(path)
            if isinstance(found, Rejected):
                self.store.quarantine(str(path), found.reason)
                report.quarantined.append((str(path), found.reason))
                continue
            boxes = None
            if labeled:
                label_file = label_path_for(path)
                if label_file.exists():
                    try:
                        boxes = read_yolo_label(label_file, n_classes)
                    except ValueError as exc:
                        reason = f"label rejected: {exc}"
                        self.store.quarantine(str(path), reason)
                        report.quarantined.append((str(path), reason))
                        continue
                else:
                    report.unlabeled_in_labeled_source += 1
            existing = self.store.image_by_sha(found.sha256)
            image_id, created = self.store.add_image(found.sha256, str(path), found.width, found.height, split,
                                                     found.phash, found.dhash)
            if not created:
                report.duplicates.append((str(path), str(existing.path if existing else "")))
                continue
            report.added += 1
            if boxes is not None:
                if split == "pool" and self._held_out(found.sha256):
                    self.store.set_split(image_id, "val")
                self.store.put_label(image_id, boxes, round_no=0, source=f"file {label_file}")
                report.labeled += 1
        if sources and split == "pool" and not labeled:
            known = set(self.config.images)
            new = [str(Path(s).absolute()) for s in sources if str(Path(s).absolute()) not in known]
            if new:
                self.config.images.extend(new)
                save_config(self.root, self.config)
        return report

    def _held_out(self, sha256: str) -> bool:
        """Whether a labeled image belongs to the fixed validation part: decided by its hash, so it never moves
        between rounds and does not depend on the order images arrive. Only without a user-given val split."""
        if self.config.val:
            return False
        return int(sha256[:8], 16) / 0xFFFFFFFF < self.config.val_fraction

    def ingest_sources(self, progress: bool = True) -> AddReport:
        """Register every source named in labelwise.yaml (the pool, labeled seeds, the val folder)."""
        total = AddReport()
        # Labeled sources first: a folder named both as pool and as labeled must arrive with its labels.
        jobs = [([Path(p) for p in self.config.labeled], True, "pool"),
                ([Path(p) for p in self.config.images], False, "pool")]
        if self.config.val:
            jobs.append(([Path(self.config.val)], True, "val"))
        for sources, labeled, split in jobs:
            if not sources:
                continue
            r = self.add(sources, labeled=labeled, split=split, progress=progress)
            total.added += r.added
            total.labeled += r.labeled
            total.duplicates += r.duplicates
            total.quarantined += r.quarantined
            total.unlabeled_in_labeled_source += r.unlabeled_in_labeled_source
        return total

    # -- the state machine ---------------------------------------------------------------------------------------

    @property
    def detector(self) -> Detector:
        if self._detector is None:
            from labelwise.detectors.ultralytics import UltralyticsDetector

            self._detector = UltralyticsDetector(self.root / ".ultralytics")
        return self._detector

    def finished(self) -> str | None:
        return self.store.kv_get("loop", "finished")

    def _open_round(self) -> tuple[int, str]:
        """The round and step to do next, opening a new round when the last one is done."""
        current = self.store.current_round()
        if current is not None and current.step != "done":
            return current.round, current.step
        round_no = 1 if current is None else current.round + 1
        labeled = self.store.counts()["pool_labeled"]
        step = "train" if labeled else "select"
        self.store.start_round(round_no, step)
        self.store.update_round(round_no, strategy=json.dumps(self.config.strategy_for_round(round_no)))
        return round_no, step

    def step(self) -> str | None:
        """Take the next step. Returns the name of the step done, or None when the loop waits or has finished."""
        if self.finished():
            return None
        round_no, step = self._open_round()
        if step == "train":
            self.train()
        elif step == "score":
            self.score()
        elif step == "select":
            self.select()
        elif step == "annotate":
            batch = self.batch()
            backend = self.backend()
            backend.push(batch)
            crash_point("after_push")
            if not self.pull(backend):
                return None
        return step

    # -- train ---------------------------------------------------------------------------------------------------

    def _round_dir(self, round_no: int) -> Path:
        return self.root / "rounds" / f"r{round_no:03d}"

    def write_dataset(self, round_no: int) -> Path:
        """The round's training data as an Ultralytics dataset built from the store (symlinks + YOLO txt)."""
        root = self._round_dir(round_no) / "data"
        for split, rows in (("train", self.store.labels("pool")), ("val", self.store.labels("val"))):
            img_dir, lbl_dir = root / "images" / split, root / "labels" / split
            img_dir.mkdir(parents=True, exist_ok=True)
            lbl_dir.mkdir(parents=True, exist_ok=True)
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
        return self._write_data_yaml(root, "images/val")

    def _start_weights(self, round_no: int) -> str:
        for r in reversed(self.store.rounds()):
            if r.round < round_no and r.model_path and Path(r.model_path).exists():
                return r.model_path
        return self.config.model

    def train(self) -> None:
        round_no, step = self._open_round()
        if step != "train":
            raise LoopError(f"round {round_no} is at step '{step}', not 'train'")
        n_labeled = self.store.counts()["pool_labeled"]
        data_yaml = self.write_dataset(round_no)
        cfg = self.config
        options = {"nbs": cfg.train.nbs, "warmup_epochs": cfg.train.warmup_epochs, "patience": cfg.train.patience,
                   **cfg.train.extra}
        result = self.detector.train(TrainRequest(
            data_yaml=data_yaml, start=self._start_weights(round_no), out_dir=self._round_dir(round_no) / "train",
            epochs=cfg.train.epochs, imgsz=cfg.imgsz, batch=cfg.train.batch, device=cfg.device, seed=cfg.seed,
            options=options,
        ))
        crash_point("after_train")
        self.store.update_round(
            round_no, step="score", model_path=str(result.weights), model_hash=sha256_file(result.weights)[:16],
            n_labeled=n_labeled, map50=result.map50, map50_95=result.map50_95,
            per_class_ap50=result.per_class_ap50, train_seconds=result.seconds,
        )

    # -- score ---------------------------------------------------------------------------------------------------

    def score(self, progress: bool = True) -> int:
        """Score every pool image (unlabeled ones for ranking, labeled ones for their embeddings) with the round's
        model. Returns the number of images that needed inference (0 when all were cached)."""
        round_no, step = self._open_round()
        if step != "score":
            raise LoopError(f"round {round_no} is at step '{step}', not 'score'")
        current = self.store.current_round()
        assert current is not None and current.model_path and current.model_hash
        started = time.perf_counter()
        n = self._score_images(Path(current.model_path), current.model_hash, progress=progress)
        n += self._extra_passes(round_no, json.loads(current.strategy or "{}"), progress=progress)
        self.store.update_round(round_no, step="select", score_seconds=time.perf_counter() - started,
                                agreement=self._agreement_with_previous(current))
        return n

    def _agreement_with_previous(self, current: Any, stop_set_size: int = 200, conf: float = 0.25) -> float | None:
        """Stabilizing predictions: how far this round's model agrees with the previous one on a fixed stop set
        (the pool images with the smallest hashes: fixed, label-independent, and no extra inference since every
        pool image is scored each round)."""
        from labelwise.stopping import prediction_agreement

        previous = [r for r in self.store.rounds() if r.round < current.round and r.model_hash]
        if not previous:
            return None
        prev_hash = previous[-1].model_hash
        shas = sorted(img.sha256 for img in self.store.images(split="pool"))[:stop_set_size]
        pairs = []
        for sha in shas:
            a = self.store.detections(sha, prev_hash, self.config.imgsz)
            b = self.store.detections(sha, current.model_hash, self.config.imgsz)
            if a is None or b is None:
                continue
            pairs.append(tuple((d.boxes[keep], d.class_scores[keep].argmax(axis=1)) for d in (a, b)
                               for keep in [d.class_scores.max(axis=1, initial=0) >= conf]))
        if not pairs:
            return None
        return prediction_agreement([p for p, _ in pairs], [c for _, c in pairs])

    def _score_images(self, weights: Path, model_hash: str, *, flip: bool = False, variant: str | None = None,
                      states: tuple[str, ...] = ("unlabeled", "labeled"), progress: bool = True) -> int:
        variant = variant if variant is not None else ("flip" if flip else "")
        cfg = self.config
        # The cache is keyed by (image, model, size) only; if the thresholds that decide which boxes are kept have
        # changed since, the cached detections of this model are stale and go.
        settings = {"conf": cfg.score.conf, "iou": cfg.score.iou, "max_det": cfg.score.max_det}
        cached_with = self.store.kv_get("score_settings", model_hash)
        if cached_with is not None and cached_with != settings:
            self.store.drop_detections(model_hash)
        if cached_with != settings:
            self.store.kv_set("score_settings", model_hash, settings)
        done = self.store.scored_shas(model_hash, cfg.imgsz, variant)
        todo = [img for state in states for img in self.store.images(split="pool", state=state)
                if img.sha256 not in done]
        if not todo:
            return 0
        stream = self.detector.score(weights, ((img.sha256, img.path) for img in todo), imgsz=cfg.imgsz,
                                     conf=cfg.score.conf, iou=cfg.score.iou, batch=cfg.score.batch,
                                     device=cfg.device, flip=flip, max_det=cfg.score.max_det)
        if progress:
            stream = track(stream, len(todo), "Scoring" + (f" ({variant})" if variant else ""))
        pending: list[tuple[str, Any]] = []
        by_sha = {img.sha256: img for img in todo}
        for sha, result in stream:
            if isinstance(result, ScoreFailure):
                self.store.quarantine(str(by_sha[sha].path), result.reason)
                continue
            pending.append((sha, result))
            if len(pending) >= 64:  # commit often: a kill loses at most one chunk of inference, never a label
                self.store.put_detections(model_hash, cfg.imgsz, pending, variant)
                pending = []
                crash_point("mid_score")
        if pending:
            self.store.put_detections(model_hash, cfg.imgsz, pending, variant)
        return len(todo)

    def _extra_passes(self, round_no: int, strategy: dict[str, Any], progress: bool = True) -> int:
        """The inference some strategies need beyond the plain pass: the mirrored image for `consistency`, the
        committee members' passes for `committee`. Cached like the plain pass, so calling it again is free."""
        current = self.store.current_round()
        assert current is not None and current.model_path and current.model_hash
        if strategy.get("name") == "consistency":
            return self._score_images(Path(current.model_path), current.model_hash, flip=True,
                                      states=("unlabeled", "selected"), progress=progress)
        if strategy.get("name") == "committee":
            return self._score_committee(round_no, strategy, progress=progress)
        return 0

    def _score_committee(self, round_no: int, strategy: dict[str, Any], progress: bool) -> int:
        """Query by committee: N members trained on bootstrap resamples of the labeled set, each warm-started from
        the round's model for a few epochs, then each scores the unlabeled pool."""
        current = self.store.current_round()
        assert current is not None and current.model_path
        members = int(strategy.get("committee_size", 3))
        epochs = int(strategy.get("committee_epochs", max(1, self.config.train.epochs // 3)))
        rng = np.random.default_rng(self.config.seed + round_no)
        labeled = self.store.labels("pool")
        if not labeled:
            raise LoopError("query by committee needs labeled images to resample; label a seed batch first")
        # Every member's resample is drawn up front, so member j trains on the same sample whether or not the
        # members before it were already trained (a resumed run must not give member 1 member 0's sample).
        samples = [rng.integers(0, len(labeled), size=len(labeled)) for _ in range(members)]
        n = 0
        for j in range(members):
            variant = f"member{j}"
            weights_path = self.store.kv_get("committee", f"r{round_no}/{variant}")
            if not weights_path or not Path(weights_path).exists():
                picks = samples[j]
                data_yaml = self._write_bootstrap(round_no, j, [labeled[i] for i in picks])
                result = self.detector.train(TrainRequest(
                    data_yaml=data_yaml, start=current.model_path,
                    out_dir=self._round_dir(round_no) / f"committee{j}", epochs=epochs, imgsz=self.config.imgsz,
                    batch=self.config.train.batch, device=self.config.device, seed=self.config.seed + j + 1,
                    options={"nbs": self.config.train.nbs, "warmup_epochs": 0},
                ))
                weights_path = str(result.weights)
                self.store.kv_set("committee", f"r{round_no}/{variant}", weights_path)
            n += self._score_images(Path(weights_path), current.model_hash, variant=variant,
                                    states=("unlabeled", "selected"), progress=progress)
        return n

    def _write_bootstrap(self, round_no: int, member: int, rows: list) -> Path:
        import shutil

        root = self._round_dir(round_no) / f"committee{member}-data"
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
        val = self._round_dir(round_no) / "data"
        return self._write_data_yaml(root, val / "images" / "val")

    def _write_data_yaml(self, root: Path, val: str | Path) -> Path:
        """An Ultralytics dataset YAML for `root` (train = root/images/train) with the workspace's class ids."""
        names = "\n".join(f"  {i}: {json.dumps(n)}" for i, n in enumerate(self.config.classes))
        yaml_path = root / "data.yaml"
        atomic_write_text(yaml_path, f"path: {root}\ntrain: images/train\nval: {val}\nnames:\n{names}\n")
        return yaml_path

    # -- select --------------------------------------------------------------------------------------------------

    def select(self, k: int | None = None, strategy: str | dict[str, Any] | None = None) -> list[dict[str, Any]]:
        from labelwise.selection import LabeledContext, StrategyConfig, cold_start_select, select

        round_no, step = self._open_round()
        if step not in ("select", "annotate"):
            raise LoopError(f"round {round_no} is at step '{step}'; run `labelwise {step}` first")
        if step == "annotate":
            if any(r["outcome"] != "pending" for r in self.store.selection(round_no)):
                raise LoopError(f"round {round_no}'s batch already has imported labels; it cannot be re-selected. "
                                "Finish it with `labelwise import` / `labelwise annotate pull`.")
        current = self.store.current_round()
        assert current is not None
        # Without an explicit strategy, labelwise.yaml as it is NOW decides (strategy / schedule): the round's
        # record was written when the round opened, before the user may have edited the file for this selection.
        spec = self.config.strategy_for_round(round_no) if strategy is None else (
            {"name": strategy} if isinstance(strategy, str) else dict(strategy))
        spec = self._checked_strategy(spec)
        budget = self.config.budget
        unlabeled = self.store.image_ids("pool", "unlabeled")
        if step == "annotate":
            # Re-selecting: the old picks are candidates again. The store changes only when the new batch is saved
            # (one transaction below), so a failed re-selection leaves the old batch exactly as it was.
            old = self.store.image_ids("pool", "selected")
            unlabeled = np.unique(np.concatenate([unlabeled, old])).astype(np.int64)
        if k is None:
            k = budget.initial or budget.per_round if not current.model_hash else budget.per_round
            if budget.total is not None:
                k = min(k, max(0, budget.total - self.store.counts()["pool_labeled"]))
        known = {f.name for f in dataclasses.fields(StrategyConfig)}
        try:
            strategy_config = StrategyConfig.from_dict(
                {key: v for key, v in spec.items() if key in known} | {"seed": self.config.seed + round_no})
        except ValueError as exc:  # a bad name or value in labelwise.yaml: the user's words, not a traceback
            raise ConfigError(f"{self.root / 'labelwise.yaml'}: {exc}") from None
        unhashable = self._backfill_hashes()
        labeled_all = self.store.image_ids("pool", "labeled")
        # "labeled hash #J" in a selection's skips is image hash_ids[J]; a labeled file that could not be hashed
        # (unreadable since it was labeled; quarantined by the backfill) is left out
        hash_ids = self.store.ids_with_hashes(labeled_all) if unhashable else labeled_all
        start = None if current.model_hash else self._cold_start_weights(strategy_config.cold_start)
        if not current.model_hash and start is None:  # nothing to embed with: only chance can choose
            spec = {"name": "random", "cold_start": "random"}  # what the rounds table should say this round used
            rng = np.random.default_rng(self.config.seed + round_no)
            rows = rng.permutation(len(unlabeled))[:k]
            why = ("cold start: no labels yet, picked at random" if strategy_config.cold_start == "random" else
                   f"cold start: picked at random, because model '{self.config.model}' is not a trained checkpoint "
                   f"whose embeddings could choose (cold_start: {strategy_config.cold_start} needs one)")
            picks = [(int(unlabeled[r]), rank, 0.0, {"random": 1.0}, why) for rank, r in enumerate(rows, start=1)]
            skipped: list[tuple[int, str, float]] = []
        else:
            cfg = self.config
            if current.model_hash:
                model_hash, n_classes = current.model_hash, len(cfg.classes)
            else:  # cold start from a pretrained checkpoint: its embeddings only, its classes may be others
                model_hash, n_classes = sha256_file(start)[:16], None
                spec = {"name": "cold_start", "cold_start": strategy_config.cold_start, "model": str(start)}
                self._score_images(start, model_hash, states=("unlabeled", "labeled"), progress=True)
            pool = self.store.scored_pool(unlabeled, model_hash, cfg.imgsz, n_classes=n_classes)
            # The labeled embeddings come with their image ids, in the same order (scored_pool sorts by id), so a
            # "duplicate of labeled #J" names the right image; a labeled image without an embedding is left out.
            labeled_pool = self.store.scored_pool(labeled_all, model_hash, cfg.imgsz, n_classes=n_classes)
            labeled_ids = labeled_pool.image_ids
            labeled_ctx = LabeledContext(
                embeddings=labeled_pool.embeddings if len(labeled_ids)
                else np.zeros((0, pool.embeddings.shape[1]), np.float32),
                class_counts=self.store.class_box_counts(len(cfg.classes)),
                hashes=self.store.image_hashes(hash_ids) if pool.hashes is not None else None,
            )
            # GAP features after SiLU share one large positive component, so raw cosine similarity is near 1 for
            # every pair (worst with a young model) and near-duplicate suppression would reject the whole pool.
            # Centring on the mean of pool and labeled embeddings leaves only what tells images apart.
            n_all = len(pool) + len(labeled_ctx.embeddings)
            centre = ((pool.embeddings.sum(axis=0, dtype=np.float64) + labeled_ctx.embeddings.sum(axis=0))
                      / max(n_all, 1)).astype(np.float32)
            np.subtract(pool.embeddings, centre, out=pool.embeddings)  # in place: this call owns the copy (140 MB at 80k)
            labeled_ctx = dataclasses.replace(labeled_ctx, embeddings=labeled_ctx.embeddings - centre)
            if current.model_hash:
                extra: dict[str, Any] = {}
                self._extra_passes(round_no, spec)  # a strategy chosen after scoring may still need its passes
                if strategy_config.name == "consistency":
                    extra["flipped"] = self._aligned(pool, current.model_hash, "flip")
                if strategy_config.name == "committee":
                    size = int(spec.get("committee_size", 3))
                    extra["members"] = [self._aligned(pool, current.model_hash, f"member{j}") for j in range(size)]
                result = select(pool, k, strategy_config, labeled=labeled_ctx, **extra)
            else:
                result = cold_start_select(pool, k, strategy_config, labeled=labeled_ctx)
            picks = [(int(pool.image_ids[row]), rank, float(score), comp, why) for rank, (row, score, comp, why)
                     in enumerate(zip(result.rows, result.scores, result.components, result.reasons), start=1)]
            skipped = [(int(pool.image_ids[row]), _describe_duplicate(of, pool, labeled_ids, hash_ids), float(sim))
                       for row, of, sim in result.skipped_duplicates]
        if not picks and k > 0 and len(unlabeled):
            raise LoopError(f"the strategy selected nothing from {len(unlabeled)} unlabeled images "
                            f"({len(skipped)} skipped as near-duplicates); lower or switch off "
                            "strategy.dedup_threshold in labelwise.yaml")
        crash_point("before_save_selection")
        with self.store.transaction() as c:  # the old batch back to the pool, the new one in, the record: atomic
            if step == "annotate":
                c.execute("UPDATE images SET state='unlabeled' WHERE id IN "
                          "(SELECT image_id FROM selections WHERE round=?) AND state='selected'", (round_no,))
            if json.dumps(spec) != (current.strategy or ""):
                self.store.update_round(round_no, strategy=json.dumps(spec))
            self.store.save_selection(round_no, picks, skipped, next_step="annotate")
        return self.store.selection(round_no)

    def _backfill_hashes(self) -> int:
        """Perceptual hashes for images registered before labelwise computed them at ingest (older workspaces).
        Returns how many images could not be hashed (quarantined with the reason)."""
        from labelwise.pool import backfill_hashes

        failed = backfill_hashes(self.store)
        for path, reason in failed:
            self.store.quarantine(path, reason)
        return len(failed)

    def _cold_start_plan(self) -> str:
        """How the first batch will be chosen, in words, without loading a model."""
        method = self.config.strategy_for_round(1).get("cold_start", "typical")
        if method == "random":
            return "picked at random (cold_start: random)"
        if Path(self.config.model).suffix != ".pt":
            return f"picked at random: model '{self.config.model}' is not a trained checkpoint to embed the pool with"
        return (f"chosen from the embeddings of {self.config.model} "
                f"({'TypiClust' if method == 'typical' else 'k-center greedy'}, near-duplicates removed first)")

    def _cold_start_weights(self, method: str) -> Path | None:
        """The checkpoint whose embeddings choose the first batch: `model:` when it is a trained checkpoint (a local
        .pt, or a name Ultralytics downloads), None for a model YAML (random weights embed nothing) or `random`."""
        if method == "random" or Path(self.config.model).suffix != ".pt":
            return None
        local = Path(self.config.model)
        if local.exists():
            return local.absolute()
        load = getattr(self.detector, "load", None)  # e.g. yolo11n.pt, downloaded by Ultralytics when online
        if load is None:
            return None
        path = getattr(load(self.config.model), "ckpt_path", None)
        return Path(path).absolute() if path and Path(path).exists() else None

    def _checked_strategy(self, spec: dict[str, Any]) -> dict[str, Any]:
        """A strategy mapping (from labelwise.yaml, the schedule or --strategy) checked before use: an unknown key is
        an error, not silently dropped (a typo like `dedup_treshold` must not fall back to the default), and
        class_quotas may name classes by name as well as by id."""
        from labelwise.selection import StrategyConfig

        allowed = {f.name for f in dataclasses.fields(StrategyConfig)} | {"committee_size", "committee_epochs"}
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise ConfigError(f"labelwise.yaml: strategy: unknown key(s) {', '.join(unknown)}; allowed: "
                              f"{', '.join(sorted(allowed))}")
        quotas = spec.get("class_quotas")
        if quotas:
            if not isinstance(quotas, dict):
                raise ConfigError("labelwise.yaml: strategy: class_quotas must map a class (name or id) to a minimum")
            names = {n: i for i, n in enumerate(self.config.classes)}
            fixed = {}
            for c, minimum in quotas.items():
                if c in names:
                    c = names[c]
                try:
                    c = int(c)
                except (TypeError, ValueError):
                    raise ConfigError(f"labelwise.yaml: strategy: class_quotas names {c!r}, which is neither a class "
                                      f"({', '.join(self.config.classes)}) nor a class id") from None
                if not 0 <= c < len(self.config.classes):
                    raise ConfigError(f"labelwise.yaml: strategy: class_quotas names class id {c}; ids are 0.."
                                      f"{len(self.config.classes) - 1}")
                fixed[str(c)] = int(minimum)
            spec = {**spec, "class_quotas": fixed}
        return spec

    def _aligned(self, pool: ScoredPool, model_hash: str, variant: str) -> ScoredPool:
        other = self.store.scored_pool(pool.image_ids, model_hash, self.config.imgsz, variant,
                                       n_classes=len(self.config.classes))
        if len(other) != len(pool):
            raise LoopError(f"the '{variant}' pass is missing for {len(pool) - len(other)} of {len(pool)} images "
                            "(inference failed on them; see `labelwise status` for quarantined files); run "
                            "`labelwise select` again to retry the pass")
        return other

    # -- annotation ----------------------------------------------------------------------------------------------

    def batch(self, round_no: int | None = None) -> Batch:
        current = self.store.current_round() if round_no is None else next(
            (r for r in self.store.rounds() if r.round == round_no), None)
        if current is None or current.step not in ("annotate", "done"):
            raise LoopError("no batch has been selected yet; run `labelwise select`")
        rows = self.store.selection(current.round)
        items = []
        for r in rows:
            preds: tuple = ()
            if current.model_hash:
                det = self.store.detections(r["sha256"], current.model_hash, self.config.imgsz)
                if det is not None:
                    preds = tuple(b for b in det.yolo_boxes() if b[5] >= 0.25)
            items.append(BatchItem(
                image_id=r["image_id"], sha256=r["sha256"], path=Path(r["path"]), width=r["width"],
                height=r["height"], rank=r["rank"], score=r["score"], components=r["components"],
                reason=r["reason"], predictions=preds,
            ))
        version = f"r{current.round}" + (f"-{current.model_hash[:8]}" if current.model_hash else "")
        return Batch(round=current.round, model_version=version, classes=tuple(self.config.classes),
                     items=tuple(items))

    def backend(self, name: str | None = None) -> AnnotationBackend:
        from labelwise.annotation import make_backend

        options = dict(self.config.annotation)
        name = name or options.pop("backend", "folder")
        options.pop("backend", None)
        return make_backend(name, options, StoreBackendState(self.store, f"backend:{name}"), self.root,
                            tuple(self.config.classes))

    def export(self) -> Path:
        """Stage the current batch as a folder with a manifest (the folder backend), whatever backend is set."""
        from labelwise.annotation.folder import FolderBackend

        batch = self.batch()
        backend = FolderBackend(self.root / "annotation")
        backend.push(batch)
        duplicates = self.store.duplicate_skips(batch.round)
        manifest = backend.folder(batch) / "duplicates_skipped.csv"
        if duplicates:
            import csv
            import io
            import re

            buf = io.StringIO()  # the csv module: paths may hold commas or quotes
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(["image_path", "duplicate_of_path", "duplicate_of", "cosine_similarity",
                             "hamming_distance"])
            for image_id, of, sim in duplicates:
                found = re.fullmatch(r"image (\d+) \((.+)\)", of)  # as _describe_duplicate writes it
                of_path = str(self.store.image(int(found.group(1))).path) if found else ""
                near = ["", f"{sim:.0f}"] if PERCEPTUAL_HASH in of else [f"{sim:.4f}", ""]
                writer.writerow([str(self.store.image(image_id).path), of_path, of, *near])
            atomic_write_text(manifest, buf.getvalue())
        elif manifest.exists():  # from an earlier selection of this round that did skip duplicates
            manifest.unlink()
        return backend.folder(batch)

    def import_labels(self, folder: Path) -> "ImportReport":
        """Take YOLO txt labels for the current batch from `folder` (partial imports are fine)."""
        from labelwise.annotation.folder import read_labels

        folder = Path(folder)
        if folder.is_file() and folder.name.lower().endswith((".zip", ".tar", ".tar.gz", ".tgz")):
            from labelwise.archive import safe_extract

            target = self.root / "imports" / f"{folder.name.split('.')[0]}-{int(time.time())}"
            safe_extract(folder, target)
            folder = target
        if not folder.is_dir():
            raise LoopError(f"{folder} is not a folder of YOLO label files")
        batch = self.batch()
        return self._apply(batch, read_labels(folder, batch))

    def pull(self, backend: AnnotationBackend | None = None) -> bool:
        """Fetch finished labels from the backend into the store. True when the round's batch is complete."""
        backend = backend or self.backend()
        batch = self.batch()
        report = self._apply(batch, backend.pull(batch))
        return report.complete

    def _apply(self, batch: Batch, result: PullResult) -> "ImportReport":
        """Write pulled labels in one transaction; complete the round when nothing is pending."""
        by_sha = batch.by_sha()
        report = ImportReport(problems=[p.message if p.where in p.message else f"{p.where}: {p.message}"
                                      for p in result.problems])
        pending_before = {r["image_id"] for r in self.store.selection(batch.round) if r["outcome"] == "pending"}
        with self.store.transaction():
            for label in result.labels:
                item = by_sha.get(label.sha256)
                if item is None:
                    report.problems.append(f"{label.source}: not an image of round {batch.round}'s batch; ignored")
                    continue
                if label.status == "skipped":
                    if item.image_id in pending_before:
                        self.store.set_outcome(batch.round, item.image_id, "skipped")
                        report.skipped += 1
                    continue
                current = self.store.label(item.image_id)
                if current is not None and [list(b) for b in current] == [
                        [b[0], *(round(float(v), 8) for v in b[1:5])] for b in label.boxes] \
                        and item.image_id not in pending_before:
                    continue  # pulling twice changes nothing
                self.store.put_label(item.image_id, label.boxes, round_no=batch.round, source=label.source,
                                     annotator=label.annotator, lead_time_s=label.lead_time_s,
                                     updated_at=label.updated_at)
                self.store.set_outcome(batch.round, item.image_id, "labeled")
                report.imported += 1
                crash_point("mid_import")
            outcomes = [r["outcome"] for r in self.store.selection(batch.round)]
            report.pending = outcomes.count("pending")
            if report.pending == 0 and self.store.current_round().step == "annotate":
                self.store.update_round(batch.round, step="done", finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
                report.complete = True
        return report

    # -- running, stopping and status ----------------------------------------------------------------------------

    def stop_advice(self) -> list[Any]:
        from labelwise.stopping import RoundHistory, advise

        trained = [r for r in self.store.rounds() if r.map50 is not None]
        history = RoundHistory(
            labeled_counts=[r.n_labeled or 0 for r in trained], map50=[r.map50 for r in trained],
            agreements=[float('nan') if r.agreement is None else r.agreement for r in trained],
        )
        s = self.config.stopping
        return advise(history, min_gain=s.min_map_gain, patience=s.patience)

    def _should_stop(self) -> str | None:
        """A reason to stop before the next selection: budget spent, pool empty, or the stopping rule."""
        counts = self.store.counts()
        budget = self.config.budget
        if budget.total is not None and counts["pool_labeled"] >= budget.total:
            return f"label budget reached ({counts['pool_labeled']} of {budget.total} labeled)"
        if counts["pool_unlabeled"] == 0:
            return "every pool image is labeled"
        rounds = self.store.rounds()
        if self.config.stopping.max_rounds and len(rounds) > self.config.stopping.max_rounds:
            return f"max_rounds ({self.config.stopping.max_rounds}) reached"
        rule = self.config.stopping.rule
        if rule != "none":
            for advice in self.stop_advice():
                if advice.rule == rule and advice.stop:
                    return f"stopping rule '{rule}': {advice.reason}"
        return None

    def run(self, oracle: Path | None = None, rounds: int | None = None,
            on_round: Callable[[RoundSummary], None] | None = None) -> str:
        """Advance as far as possible: through `rounds` completed rounds (default: until the budget or the
        stopping rule), with the labels in `oracle` standing in for the annotators when given.
        Returns why it stopped."""
        completed = 0
        while True:
            if self.finished():
                return self.finished()  # type: ignore[return-value]
            round_no, step = self._open_round()
            if step == "score":
                reason = self._should_stop()
                if reason:
                    self.store.update_round(round_no, step="done")
                    self.store.kv_set("loop", "finished", reason)
                    return reason
            if step == "annotate" and oracle is not None:
                self.export()
                crash_point("after_push")
                report = self.import_labels(oracle)
                if not report.complete:
                    missing = report.pending
                    raise LoopError(f"the oracle {oracle} has no labels for {missing} selected images of round "
                                    f"{round_no}; {'; '.join(report.problems[:3])}")
            elif step == "annotate":
                if not self.step() and self.store.current_round().step != "done":
                    progress = self.backend().progress(self.batch())
                    return (f"waiting for annotations of round {round_no}: {progress.done}/{progress.total} done; "
                            "run `labelwise annotate wait` or `labelwise import LABELS`, then `labelwise run`")
            else:
                self.step()
            current = self.store.current_round()
            if current is not None and current.step == "done" and current.round == round_no:
                completed += 1
                if on_round:
                    on_round(RoundSummary(round_no, current.n_labeled, current.map50,
                                          self.store.selection(round_no)))
                if rounds is not None and completed >= rounds:
                    return f"{completed} round(s) done"

    def status(self) -> Status:
        counts = self.store.counts()
        current = self.store.current_round()
        finished = self.finished()
        trained = [r for r in self.store.rounds() if r.map50 is not None]
        last_map = trained[-1].map50 if trained else None
        if finished:
            step, cmd, msg = "finished", "labelwise report", f"the loop has finished: {finished}"
        elif current is None or current.step == "done":
            nxt = "train" if counts["pool_labeled"] else "select"
            step, cmd = nxt, f"labelwise {nxt}" if nxt == "train" else "labelwise select"
            msg = (f"round {(current.round if current else 0) + 1} starts with "
                   + ("training" if nxt == "train" else "the first batch (nothing is labeled yet): "
                      + self._cold_start_plan()))
        elif current.step == "annotate":
            sel = self.store.selection(current.round)
            pending = sum(1 for r in sel if r["outcome"] == "pending")
            step, cmd = "annotate", "labelwise export  (then label, then)  labelwise import LABELS"
            msg = f"round {current.round}: {len(sel) - pending}/{len(sel)} selected images labeled"
        else:
            step, cmd, msg = current.step, f"labelwise {current.step}", f"round {current.round}: next is {current.step}"
        rounds = [{"round": r.round, "step": r.step, "n_labeled": r.n_labeled, "map50": r.map50,
                   "map50_95": r.map50_95, "strategy": json.loads(r.strategy or "{}").get("name")}
                  for r in self.store.rounds()]
        try:
            advice = self.stop_advice()
        except Exception as exc:  # advice must never hide the status itself
            advice = [f"stopping advice unavailable: {exc}"]
        return Status(self.root, current.round if current else None, step, counts, last_map, cmd, msg,
                      self.store.quarantined(), finished, rounds, advice)


@dataclass
class ImportReport:
    imported: int = 0
    skipped: int = 0
    pending: int = 0
    complete: bool = False
    problems: list[str] = field(default_factory=list)


PERCEPTUAL_HASH = "perceptual hash"


def _describe_duplicate(of: Any, pool: ScoredPool, labeled_ids: np.ndarray, hash_ids: np.ndarray) -> str:
    """Turn the core's 'pool row 17' / 'labeled #3' / 'hash of pool row 17' / 'labeled hash #3' into an image id
    the manifest can name."""
    text = str(of)
    try:
        idx = int(text.rsplit(" ", 1)[-1].lstrip("#"))
    except ValueError:
        return text
    how = f", {PERCEPTUAL_HASH}" if "hash" in text else ""
    if text.startswith("labeled"):
        ids = hash_ids if how else labeled_ids
        return f"image {int(ids[idx])} (labeled{how})" if idx < len(ids) else text
    return f"image {int(pool.image_ids[idx])} (in this batch{how})" if idx < len(pool) else text
