"""`labelwise simulate`: replay a labeled YOLO dataset with its ground truth as the annotators, and measure.

For every strategy and seed the simulation runs a real workspace (`labelwise.loop.Workspace`) under
OUT/runs/<strategy>/seed<seed>/, with the dataset's train labels as the oracle, so what is measured is exactly what
`labelwise run` does. Nothing is written into the dataset: each round trains on a dataset the workspace builds from
its store (symlinked images, label files written by the workspace), so Ultralytics' label caches land in the
workspace too; read-only datasets work.

Rounds and the learning curve
-----------------------------
`rounds` counts labeled batches: round 1 is the random cold-start batch of `initial` images, rounds 2..R each add
`per_round` images chosen by the strategy. A workspace round's mAP50 belongs to the model trained at the START of
that round, so the last batch is labeled but not trained on; after the last round the simulation trains once more
(a new round left at its score step, with the agreement of the stabilizing-predictions rule measured) so the final
budget has an mAP50. The learning curve therefore has R points, at
    n = initial, initial + per_round, ..., initial + (R - 1) * per_round   (capped by `budget` when given).
`budget` B instead of `rounds`: R = 1 + ceil((B - initial) / per_round), and the last batch is cut to reach B.

Strategies, presets and variants
--------------------------------
Each entry of `strategies` is a label: a plain strategy name (`labelwise.selection.STRATEGIES`, written as
`{"name": ...}`), a preset name (`labelwise.presets.PRESETS`, its whole mapping), or a label of `variants`, a
mapping label -> strategy mapping for ablations (a variant may start from a preset with `preset: default` and
override keys, e.g. `{preset: default, dedup_hamming: null}`); every variant is run, listed or not. The resolved
mapping is written as the `strategy:` section of each workspace's labelwise.yaml and recorded in simulation.json;
the label names the folders, the table rows and the plot lines.

Fairness
--------
- Every strategy of a seed starts from the same initial set: the cold-start batch depends only on the workspace
  seed (= the simulation seed), the simulation's `cold_start` (written into EVERY workspace's strategy mapping,
  overriding a preset's own value) and the order of image ids, and every workspace registers the same files in
  the same sorted order. The simulation checks this after round 1 and stops with an error if it ever differs.
- Plain `random` is pure chance: no near-duplicate filter (dedup_threshold and dedup_hamming off).
- Evaluation is on the dataset's `val:` split, registered as the workspaces' fixed validation split; it never
  enters the pool.

Resuming
--------
Workspaces persist; running the same command again continues every workspace from where it stopped (a killed
training restarts that round's training; finished rounds are kept and never retrained). More seeds, strategies or
rounds can be added later to the same output folder; other settings must stay the same (checked against
OUT/simulation.json).

Outputs (OUT/)
--------------
results.csv, results.json   one row per strategy, seed and curve point (see `PointRow`); the json adds the summary
learning_curves.png        mAP50 against labeled images, mean and 95% CI band of the mean over seeds, one line per
                           strategy, the full-pool mAP50 as a reference line when known
rare_class_ap.png          AP50 per class at the final budget (mean over seeds), rare classes highlighted
summary.md                 per strategy: labels to reach random's final mAP50 and the saving (on the mean curve, and
                           paired seed by seed with its mean and 95% CI), area under the curve and its paired
                           difference to random with CIs, labels to reach 90% / 95% of the full-pool mAP50, AP50 of
                           the rare classes, hard/rare picks against random, boxes picked per class, a per-seed
                           table (random's own values included), and where each stopping rule would have stopped
full_pool/                 with `full_pool`: one workspace trained ONCE on the whole labeled pool (same model,
                           imgsz, epochs, batch and train_args; seed 0), the reference mAP50; resumable

Statistics (`labelwise.savings`): savings and areas are paired seed by seed (strategy seed s against random seed s:
same initial set, same val split); means come with Student-t 95% intervals over seeds, none with a single seed. A
seed that never reaches random's final mAP50 is censored at its final budget plus one round, flagged, and counted
in the mean (`savings.compare_seeds`).

Rare images: on the synthetic data scenarios.csv says which images are rare; otherwise an image is rare when at
least `RARE_IMAGE_SHARE` (half) of its boxes belong to rare classes, so that dense images with one stray rare box
do not all count as rare.
"""

from __future__ import annotations

import csv
import io
import json
import dataclasses
import math
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from labelwise.config import LOOP_STRATEGY_KEYS, ConfigError, read_data_yaml, save_config
from labelwise.fileio import atomic_write_text
from labelwise.pool import find_files, is_candidate, label_path_for, parse_yolo_label
from labelwise.progress import console

SIMULATION_FILE = "simulation.json"
KV_NAMESPACE = "simulate"

FULL_POOL_DIR = "full_pool"
FULL_POOL_FRACTIONS = (0.9, 0.95)
"""The summary reports the labels each strategy needs to reach these fractions of the full-pool mAP50."""

RARE_IMAGE_SHARE = 0.5
"""Without scenarios.csv, an image is rare when rare classes hold at least this share of its boxes (an image with
no box is not rare). "Holds any rare box" called nearly every image of a dense dataset rare; at 0.5 the rare
objects are (at least) half of what the image shows."""

# Settings that change what a finished round means: a rerun into the same folder must not change them.
_FIXED_SETTINGS = ("data_yaml", "initial", "per_round", "epochs", "imgsz", "model", "batch", "train_args",
                   "cold_start")
# What a record written before a setting existed meant by it.
_SETTING_DEFAULTS: dict[str, Any] = {"cold_start": "random"}
# Strategy keys the simulation writes that an older `selection.StrategyConfig` may not know yet; at these values
# they mean what the loop did before the key existed, so they are left out there instead of failing.
_NEUTRAL_IF_UNKNOWN: dict[str, Any] = {"cold_start": "random", "dedup_hamming": None}
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class SimulationError(RuntimeError):
    """The simulation cannot go on; the message says why and which file or setting to fix."""


@dataclass(frozen=True)
class SimulationSettings:
    data_yaml: str
    strategies: tuple[str, ...]
    seeds: tuple[int, ...]
    initial: int
    per_round: int
    rounds: int
    budget: int | None
    epochs: int
    imgsz: int
    model: str
    batch: int
    train_args: dict[str, Any] = field(default_factory=dict)
    strategy_mappings: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> resolved mapping
    cold_start: str = "random"
    full_pool: bool = False

    def final_labels(self) -> int:
        n = self.initial + (self.rounds - 1) * self.per_round
        return min(n, self.budget) if self.budget is not None else n


@dataclass
class PointRow:
    """One point of one learning curve: the model trained on `n_labeled` images, for one strategy and seed.

    point: 0 for the model trained on the initial set, then one per added batch. round: the workspace round whose
    model this is. boxes_labeled: label boxes in the labeled pool (the real annotation cost). batch_*: the batch
    labeled just before this training (point 0: the random initial batch). hard counts are None when the
    dataset records no scenarios (rare then means: rare classes hold at least `RARE_IMAGE_SHARE` of the image's
    boxes). wall_seconds: the workspace round's wall time in the process that ran it (train, score, select, oracle
    import). batch_class_boxes: boxes per class in that batch.
    """

    strategy: str
    seed: int
    point: int
    round: int
    n_labeled: int
    boxes_labeled: int
    map50: float
    map50_95: float | None
    agreement: float | None
    batch_size: int
    batch_boxes: int
    batch_hard: int | None
    batch_rare: int | None
    hard_labeled: int | None
    rare_labeled: int | None
    train_seconds: float | None
    score_seconds: float | None
    wall_seconds: float | None
    per_class_ap50: dict[str, float]
    batch_class_boxes: dict[str, int] = field(default_factory=dict)


@dataclass
class SimulationResult:
    out_dir: Path
    settings: SimulationSettings
    rows: list[PointRow]
    rare_classes: list[str]
    summary: dict[str, Any]
    files: dict[str, Path]


# -- the dataset ----------------------------------------------------------------------------------------------------


@dataclass
class _Dataset:
    data_yaml: Path
    classes: list[str]
    train_dir: Path
    val_dir: Path
    images: list[Path]
    oracle: Path
    scenarios: dict[str, dict] | None  # keyed by the image's resolved absolute path
    class_counts: dict[str, int]  # boxes per class over the whole pool (the oracle's labels)
    rare_classes: list[str]
    rare_source: str


def _inspect_dataset(data_yaml: Path, out_dir: Path) -> _Dataset:
    data_yaml = Path(data_yaml).absolute()
    if not data_yaml.is_file():
        raise SimulationError(f"{data_yaml} not found: give the dataset's data.yaml with --data")
    classes, train, val = read_data_yaml(data_yaml)
    if len(train) != 1:
        raise SimulationError(f"{data_yaml}: `train:` must name exactly one image folder for a simulation "
                              f"(found {len(train)}); merge them or write a data.yaml for one")
    if val is None:
        raise SimulationError(f"{data_yaml}: a simulation needs a fixed `val:` split to evaluate on, and it has none")
    train_dir, val_dir = train[0], val
    for name, folder in (("train", train_dir), ("val", val_dir)):
        if not folder.is_dir():
            raise SimulationError(f"{data_yaml}: the {name} folder {folder} does not exist")
    images = [p for p in find_files([train_dir]) if is_candidate(p, False)]
    if not images:
        raise SimulationError(f"{train_dir} (train: in {data_yaml}) holds no images")
    val_images = [p for p in find_files([val_dir]) if is_candidate(p, False)]
    if not any(label_path_for(p).exists() for p in val_images):
        raise SimulationError(f"the val split {val_dir} has no YOLO label files beside its images "
                              f"(expected {label_path_for(val_images[0]) if val_images else val_dir / '../labels'})")

    counts = {c: 0 for c in classes}
    missing: list[Path] = []
    for image in images:
        label = label_path_for(image)
        if not label.exists():
            missing.append(image)
            continue
        try:
            boxes = parse_yolo_label(label.read_text(encoding="utf-8"), len(classes), str(label))
        except ValueError as exc:
            raise SimulationError(f"the oracle label {label} is malformed: {exc}") from None
        for b in boxes:
            counts[classes[int(b[0])]] += 1

    oracle = label_path_for(images[0]).parent
    if missing or any(label_path_for(p).parent != oracle for p in images):
        # YOLO convention: an image without a label file shows no object. The folder oracle needs a file for every
        # selected image, so mirror the labels (with empty files for the missing ones) under the output folder.
        oracle = out_dir / "oracle"
        if not (oracle / ".complete").exists():
            shutil.rmtree(oracle, ignore_errors=True)
            for image in images:
                target = oracle / image.relative_to(train_dir).with_suffix(".txt")
                target.parent.mkdir(parents=True, exist_ok=True)
                source = label_path_for(image)
                target.write_text(source.read_text(encoding="utf-8") if source.exists() else "")
            (oracle / ".complete").write_text("")

    scenarios = None
    root = data_yaml.parent
    if (root / "scenarios.csv").is_file():
        from labelwise.synthetic import read_scenarios

        try:
            scenarios = {str((root / rel).resolve()): row for rel, row in read_scenarios(root).items()}
        except (OSError, KeyError, ValueError) as exc:
            raise SimulationError(f"{root / 'scenarios.csv'} cannot be read: {exc}") from None

    from labelwise.plots import rare_classes_from_counts
    from labelwise.synthetic import CLASS_NAMES, RARE_CLASSES

    if scenarios is not None and tuple(classes) == CLASS_NAMES:
        rare = [CLASS_NAMES[c] for c in RARE_CLASSES]
        rare_source = "the synthetic dataset's rare classes"
    else:
        rare = rare_classes_from_counts(counts)
        rare_source = (f"classes with at most 10% of the commonest class's boxes in the pool; a rare image: rare "
                       f"classes hold at least {RARE_IMAGE_SHARE:.0%} of its boxes")
    return _Dataset(data_yaml, classes, train_dir, val_dir, images, oracle, scenarios, counts, rare, rare_source)


# -- settings and resuming ------------------------------------------------------------------------------------------


def _settings_record(settings: SimulationSettings) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(settings)))


def _check_or_save_settings(out_dir: Path, settings: SimulationSettings) -> None:
    path = out_dir / SIMULATION_FILE
    record = _settings_record(settings)
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError as exc:
            raise SimulationError(f"{path} is not valid JSON ({exc}); remove it only if the runs under "
                                  f"{out_dir / 'runs'} should be discarded") from None
        changed = [k for k in _FIXED_SETTINGS if old.get(k, _SETTING_DEFAULTS.get(k)) != record[k]]
        if changed:
            diffs = "; ".join(f"{k}: {old.get(k, _SETTING_DEFAULTS.get(k))!r} -> {record[k]!r}" for k in changed)
            raise SimulationError(f"{out_dir} holds a simulation with other settings ({diffs}). Resume it with the "
                                  "same settings, or give another --out folder.")
        old_mappings = old.get("strategy_mappings") or {}
        for label, mapping in record["strategy_mappings"].items():
            if label in old_mappings and old_mappings[label] != mapping:
                before = old_mappings[label]
                keys = sorted(k for k in set(before) | set(mapping) if before.get(k, "<unset>") != mapping.get(k,
                                                                                                          "<unset>"))
                diffs = "; ".join(f"{k}: {before.get(k, '<unset>')!r} -> {mapping.get(k, '<unset>')!r}" for k in keys)
                raise SimulationError(f"{out_dir}: strategy '{label}' now resolves to another mapping than its "
                                      f"finished runs used ({diffs}); a preset or variant changed. Give the new "
                                      "mapping another label (--variants), or another --out folder.")
        # strategies and seeds accumulate, so that a later run can add some without losing the earlier ones
        record["strategies"] = list(dict.fromkeys(old.get("strategies", []) + record["strategies"]))
        record["strategy_mappings"] = {**old_mappings, **record["strategy_mappings"]}
        record["seeds"] = sorted(set(old.get("seeds", [])) | set(record["seeds"]))
        record["full_pool"] = bool(old.get("full_pool")) or record["full_pool"]
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def resolve_strategies(labels: Sequence[str], variants: dict[str, dict[str, Any]] | None = None,
                       cold_start: str = "random") -> dict[str, dict[str, Any]]:
    """label -> the strategy mapping its workspaces get, in run order (the labels, then unlisted variants).

    A label is a variant (from `variants`), a preset (`presets.PRESETS`) or a plain strategy name
    (`selection.STRATEGIES`), in that order of precedence. A variant's mapping may name `preset:` to start from;
    it must end up with a `name`. Every mapping gets `cold_start` (the simulation's, overriding a preset's, so that
    all strategies of a seed share the initial set); a `random` mapping gets no near-duplicate filter unless it
    sets one itself. Raises SimulationError for an unknown label, a bad label (it names folders) or a mapping
    `selection.StrategyConfig` rejects.
    """
    from labelwise.presets import PRESETS, resolve
    from labelwise.selection import COLD_STARTS, STRATEGIES, StrategyConfig

    if cold_start not in COLD_STARTS:
        raise SimulationError(f"unknown cold start {cold_start!r}; expected one of {', '.join(COLD_STARTS)}")
    variants = dict(variants or {})
    known_keys = {f.name for f in dataclasses.fields(StrategyConfig)}
    out: dict[str, dict[str, Any]] = {}
    for label in dict.fromkeys([*labels, *variants]):
        if not isinstance(label, str) or not _LABEL.match(label):
            raise SimulationError(f"strategy label {label!r} must be letters, digits, '_', '-', '.' or '+' (it "
                                  "names a folder)")
        if label in variants:
            spec = variants[label]
            if not isinstance(spec, dict):
                raise SimulationError(f"variant '{label}' must be a strategy mapping, got {type(spec).__name__}")
            spec = dict(spec)
            base = spec.pop("preset", None)
            if base is not None:
                if base not in PRESETS:
                    raise SimulationError(f"variant '{label}': unknown preset {base!r}; presets: "
                                          f"{', '.join(PRESETS)}")
                spec = {**resolve(base), **spec}
            if "name" not in spec:
                raise SimulationError(f"variant '{label}' names no strategy: give `name:` or `preset:`")
        elif label in PRESETS:
            spec = resolve(label)
        elif label in STRATEGIES:
            spec = {"name": label}
        else:
            raise SimulationError(f"unknown strategy {label}; known: {', '.join(STRATEGIES)}; presets: "
                                  f"{', '.join(PRESETS)}; or define it in a variants file")
        if spec.get("name") not in STRATEGIES:
            raise SimulationError(f"strategy '{label}': unknown name {spec.get('name')!r}; known: "
                                  f"{', '.join(STRATEGIES)}")
        spec["cold_start"] = cold_start
        if spec["name"] == "random":
            # random is the baseline: pure chance, without the near-duplicate filters the other strategies apply
            spec.setdefault("dedup_threshold", None)
            spec.setdefault("dedup_hamming", None)
        for key, neutral in _NEUTRAL_IF_UNKNOWN.items():
            if key in spec and key not in known_keys:
                if spec[key] != neutral:
                    raise SimulationError(f"strategy '{label}': {key}={spec[key]!r}, but this labelwise's selection "
                                          f"has no `{key}` setting")
                del spec[key]
        try:
            StrategyConfig.from_dict({k: v for k, v in spec.items() if k not in (*LOOP_STRATEGY_KEYS, "class_quotas")})
        except (TypeError, ValueError) as exc:
            raise SimulationError(f"strategy '{label}': {exc}") from None
        out[label] = spec
    return out


def _workspace_settings(settings: SimulationSettings, strategy: str, seed: int, budget_total: int) -> dict[str, Any]:
    train: dict[str, Any] = {"epochs": settings.epochs, "batch": settings.batch}
    if settings.train_args:
        train["extra"] = dict(settings.train_args)
    mapping = settings.strategy_mappings.get(strategy)
    if mapping is None:
        mapping = resolve_strategies([strategy], cold_start=settings.cold_start)[strategy]
    return dict(
        model=settings.model, imgsz=settings.imgsz, seed=seed, train=train,
        budget={"per_round": settings.per_round, "initial": settings.initial, "total": budget_total},
        strategy=dict(mapping),
        # the simulation decides when to stop (rounds/budget); the rules are replayed afterwards, not obeyed
        stopping={"rule": "none"},
    )


def _open_workspace(root: Path, dataset: _Dataset, settings: SimulationSettings, strategy: str, seed: int):
    from labelwise.loop import Workspace, init_state

    total = settings.final_labels()
    if init_state(root) == "done":  # a half-made one ("started") is continued by Workspace.create below
        ws = Workspace(root)
        # a run killed while registering the pool: `add` skips what is known, and the sorted walk gives the rest
        # the same ids as in every other workspace
        ws.ingest_sources(progress=False)
        if (ws.config.budget.total or 0) < total:
            # more rounds asked for than a previous run: raise the cap and let the loop go on
            ws.config.budget.total = total
            save_config(ws.root, ws.config)
            if ws.finished() and ws.store.counts()["pool_labeled"] < total:
                ws.resume()
        return ws
    ws = Workspace.create(root, images=[dataset.train_dir], data_yaml=dataset.data_yaml,
                          **_workspace_settings(settings, strategy, seed, total))
    ws.ingest_sources(progress=False)
    counts = ws.store.counts()
    if counts["val_labeled"] == 0:
        raise SimulationError(f"no labeled validation image was registered from {dataset.val_dir}")
    return ws


# -- the full-pool reference ----------------------------------------------------------------------------------------


def _full_pool(out_dir: Path, dataset: _Dataset, settings: SimulationSettings, train: bool,
               threads: int | None = None) -> dict[str, Any] | None:
    """The model trained ONCE on the whole labeled pool (same model, imgsz, epochs, batch, train_args; seed 0),
    under OUT/full_pool/: its mAP50, the reference the summary measures "labels to 90% / 95% of it" against.

    Resumable: a finished training is read back, never redone; a killed one restarts. With train=False only a
    finished one is read (None otherwise). Note that the strategies' models are warm-started round after round,
    while this one trains `epochs` epochs from the start model, on many more images per epoch.
    """
    from labelwise.loop import Workspace

    root = out_dir / FULL_POOL_DIR
    if not (root / "labelwise.yaml").exists():
        if not train:
            return None
        ws = Workspace.create(root, images=[dataset.train_dir], labeled=[dataset.train_dir],
                              data_yaml=dataset.data_yaml,
                              **_workspace_settings(settings, "random", 0, len(dataset.images)))
    else:
        ws = Workspace(root)
    ws.threads = threads
    try:
        done = [r for r in ws.store.rounds() if r.map50 is not None]
        if not done:
            if not train:
                return None
            ws.ingest_sources(progress=False)
            # YOLO convention, as for the strategies' oracle: an image without a label file shows no object
            for image in ws.store.images("pool", "unlabeled"):
                ws.store.put_label(image.id, [], round_no=None, source="oracle")
            counts = ws.store.counts()
            if counts["val_labeled"] == 0:
                raise SimulationError(f"no labeled validation image was registered from {dataset.val_dir}")
            console.print(f"simulate full pool: training once on {counts['pool_labeled']} labeled images",
                          highlight=False)
            try:
                ws.train()
            except Exception as exc:
                raise SimulationError(f"the full-pool training (workspace {root}) failed: "
                                      f"{exc.__class__.__name__}: {exc}") from exc
            done = [r for r in ws.store.rounds() if r.map50 is not None]
        r = done[0]
        return {"map50": float(r.map50), "map50_95": None if r.map50_95 is None else float(r.map50_95),
                "n_labeled": int(r.n_labeled or 0), "epochs": ws.config.train.epochs,
                "train_seconds": r.train_seconds, "per_class_ap50": dict(r.per_class_ap50 or {})}
    finally:
        ws.store.close()


# -- running one workspace ------------------------------------------------------------------------------------------


def _selection_rounds_done(ws) -> int:
    return sum(1 for r in ws.store.rounds() if r.step == "done" and ws.store.selection(r.round))


def _run_workspace(ws, dataset: _Dataset, settings: SimulationSettings, label: str, eta: "_Eta") -> None:
    """Bring one workspace to `settings.rounds` labeled batches plus the final training. Idempotent."""
    store = ws.store
    remaining = settings.rounds - _selection_rounds_done(ws)
    if remaining > 0 and not ws.finished():
        mark = [time.perf_counter()]

        def on_round(summary) -> None:
            now = time.perf_counter()
            store.kv_set(KV_NAMESPACE, f"wall/{summary.round}", now - mark[0])
            if summary.map50 is not None:  # the cold-start round trains nothing: it would skew the estimate
                eta.done_round(now - mark[0])
            mark[0] = now
            got = "-" if summary.map50 is None else f"{summary.map50:.3f}"
            console.print(f"simulate {label}: round {summary.round}/{settings.rounds} done, model on "
                          f"{summary.n_labeled or 0} labels mAP50 {got}; {eta.describe()}", highlight=False)

        ws.run(oracle=dataset.oracle, rounds=remaining, on_round=on_round)

    labeled = store.counts()["pool_labeled"]
    trained = [r for r in store.rounds() if r.map50 is not None]
    if not trained or trained[-1].n_labeled != labeled:
        current = store.current_round()
        if current is not None and current.step not in ("done", "train"):
            raise SimulationError(f"{ws.root}: round {current.round} is at step '{current.step}' with "
                                  f"{labeled} labels but no model trained on them; run `labelwise run -w "
                                  f"{ws.root}` to finish it, or remove the folder to start this run again")
        started = time.perf_counter()
        ws.train()
        _measure_final_agreement(ws)
        current = store.current_round()
        store.kv_set(KV_NAMESPACE, f"wall/{current.round}", time.perf_counter() - started)
        eta.done_round(time.perf_counter() - started)
        console.print(f"simulate {label}: final model on {current.n_labeled} labels mAP50 {current.map50:.3f}; "
                      f"{eta.describe()}", highlight=False)
    else:
        _measure_final_agreement(ws)  # a run killed between the final training and its scoring


def _measure_final_agreement(ws) -> None:
    """The stabilizing-predictions rule needs every model's agreement with the previous one; the loop measures it
    when a round scores, which the final model (trained for its mAP50 only) never does. Score the pool with the
    plain pass only (no committee or flip passes: no selection follows) and record the agreement."""
    store = ws.store
    current = store.current_round()
    if current is None or not current.model_hash or current.agreement is not None:
        return
    if not any(r.model_hash for r in store.rounds() if r.round < current.round):
        return
    started = time.perf_counter()
    # private loop methods on purpose: score() would also run a strategy's committee or flip passes
    ws._score_images(Path(current.model_path), current.model_hash, progress=True)
    agreement = ws._agreement_with_previous(current)
    fields: dict[str, Any] = {"agreement": agreement}
    if current.score_seconds is None:
        fields["score_seconds"] = time.perf_counter() - started
    store.update_round(current.round, **fields)


class _Eta:
    """Rounds done and time left over the whole simulation, from the mean time of the rounds run so far."""

    def __init__(self, total_rounds: int):
        self.total, self.done, self.seconds = total_rounds, 0, 0.0

    def skip(self, n: int) -> None:
        self.total = max(self.done, self.total - n)

    def done_round(self, seconds: float) -> None:
        self.done += 1
        self.seconds += seconds

    def describe(self) -> str:
        left = max(self.total - self.done, 0)
        if not self.done:
            return f"{left} round(s) to go"
        minutes = left * self.seconds / self.done / 60
        return f"{self.done}/{self.total} rounds run, about {minutes:.1f} min left"


# -- measuring a workspace ------------------------------------------------------------------------------------------


def is_rare_image(class_ids: Sequence[int], rare_ids: set[int], share: float = RARE_IMAGE_SHARE) -> bool:
    """An image is rare when rare classes hold at least `share` of its boxes:
    |{b : class(b) in rare}| / |boxes| >= share; an image without boxes is not rare."""
    ids = list(class_ids)
    return bool(ids) and sum(int(c) in rare_ids for c in ids) >= share * len(ids)


def _image_flags(dataset: _Dataset, path: Path, boxes: Sequence[Sequence[float]]) -> tuple[bool | None, bool]:
    """(hard, rare) of one labeled image: from scenarios.csv when the dataset has it, else rare by
    `is_rare_image` and hard unknown."""
    if dataset.scenarios is not None:
        row = dataset.scenarios.get(str(Path(path).resolve()))
        if row is not None:
            return bool(row["hard"]), bool(row["rare"])
    rare_ids = {dataset.classes.index(c) for c in dataset.rare_classes}
    return (None if dataset.scenarios is None else False), is_rare_image([int(b[0]) for b in boxes], rare_ids)


def _measure(ws, dataset: _Dataset, strategy: str, seed: int, n_points: int) -> list[PointRow]:
    """The curve points of one workspace, the first `n_points` of them (a folder that once ran more rounds than
    asked now keeps them, but the table compares every strategy at the same budget)."""
    store = ws.store
    rounds = store.rounds()
    batches: dict[int, dict[str, Any]] = {}
    for r in rounds:
        picks = [p for p in store.selection(r.round) if p["outcome"] == "labeled"]
        if not picks:
            continue
        size = boxes = 0
        hard: int | None = 0
        rare = 0
        per_class = {c: 0 for c in dataset.classes}
        for p in picks:
            label = store.label(p["image_id"]) or []
            is_hard, is_rare = _image_flags(dataset, Path(p["path"]), label)
            size += 1
            boxes += len(label)
            hard = None if is_hard is None or hard is None else hard + int(is_hard)
            rare += int(is_rare)
            for b in label:
                if 0 <= int(b[0]) < len(dataset.classes):
                    per_class[dataset.classes[int(b[0])]] += 1
        batches[r.round] = {"size": size, "boxes": boxes, "hard": hard, "rare": rare, "classes": per_class}

    rows = []
    trained = [r for r in rounds if r.map50 is not None][:n_points]
    for point, r in enumerate(trained):
        before = [b for s, b in batches.items() if s < r.round]
        last = batches.get(max((s for s in batches if s < r.round), default=-1),
                           {"size": 0, "boxes": 0, "hard": None, "rare": None, "classes": {}})
        hard_total = None if any(b["hard"] is None for b in before) else sum(b["hard"] for b in before)
        wall = store.kv_get(KV_NAMESPACE, f"wall/{r.round}")
        rows.append(PointRow(
            strategy=strategy, seed=seed, point=point, round=r.round, n_labeled=int(r.n_labeled or 0),
            boxes_labeled=sum(b["boxes"] for b in before), map50=float(r.map50),
            map50_95=None if r.map50_95 is None else float(r.map50_95), agreement=r.agreement,
            batch_size=last["size"], batch_boxes=last["boxes"], batch_hard=last["hard"], batch_rare=last["rare"],
            hard_labeled=hard_total, rare_labeled=sum(b["rare"] for b in before),
            train_seconds=r.train_seconds, score_seconds=r.score_seconds,
            wall_seconds=float(wall) if wall is not None else None,
            per_class_ap50={c: float((r.per_class_ap50 or {}).get(c, float("nan"))) for c in dataset.classes},
            batch_class_boxes=dict(last["classes"]),
        ))
    return rows


def _check_same_initial_set(ws, seed: int, strategy: str, initial_sets: dict[int, tuple[str, set[str]]]) -> None:
    picked = {p["sha256"] for p in ws.store.selection(1)}
    if not picked:
        return
    if seed not in initial_sets:
        initial_sets[seed] = (strategy, picked)
    elif initial_sets[seed][1] != picked:
        raise SimulationError(f"seed {seed}: the initial labeled set of '{strategy}' ({ws.root}) differs from "
                              f"that of '{initial_sets[seed][0]}'; the comparison would not be fair. Was one "
                              "workspace made from another version of the dataset? Remove it and run again.")


# -- the summary ----------------------------------------------------------------------------------------------------


def _curves(rows: list[PointRow], strategies: Sequence[str], seeds: Sequence[int], cost: str = "n_labeled"):
    """Learning curves per strategy and seed: (cost, mAP50) per point; cost "n_labeled" (images) or
    "boxes_labeled" (the boxes an annotator drew)."""
    out: dict[str, list[tuple[list[float], list[float]]]] = {}
    for s in strategies:
        seeds_curves = []
        for seed in seeds:
            pts = sorted((r for r in rows if r.strategy == s and r.seed == seed), key=lambda r: r.point)
            if pts:
                seeds_curves.append(([float(getattr(p, cost)) for p in pts], [p.map50 for p in pts]))
        if seeds_curves:
            out[s] = seeds_curves
    return out


def _final(rows: list[PointRow], strategy: str, seed: int) -> PointRow | None:
    pts = [r for r in rows if r.strategy == strategy and r.seed == seed]
    return max(pts, key=lambda r: r.point) if pts else None


def _mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None
    return float(np.mean(vals)), float(np.std(vals))


def _picks_share(rows: list[PointRow], strategy: str, key: str) -> float | None:
    """Share of the images picked by the strategy itself (batches after the shared random initial one) that are
    hard (key 'batch_hard') or rare ('batch_rare'), pooled over seeds."""
    picked = [r for r in rows if r.strategy == strategy and r.point > 0 and r.batch_size]
    if not picked or any(getattr(r, key) is None for r in picked):
        return None
    return sum(getattr(r, key) for r in picked) / sum(r.batch_size for r in picked)


def _ci_record(ci) -> dict[str, Any]:
    return {"mean": ci.mean, "low": ci.low, "high": ci.high, "sd": ci.sd, "n": ci.n, "confidence": ci.confidence}


def summarise(rows: list[PointRow], strategies: Sequence[str], seeds: Sequence[int],
              rare_classes: Sequence[str], dataset_rates: dict[str, float | None],
              full_pool: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every figure of summary.md, as plain data (also written to results.json).

    Per strategy: the mean curve and its saving against random's mean curve; the paired per-seed comparison
    against random (`savings.compare_seeds`: saving with censoring, AUC, AUC difference, each with mean and 95% CI);
    per-seed final mAP50, AUC and labels to reach the seed's own final mAP50 (random's own noise); labels to reach
    90% / 95% of the full-pool mAP50 when `full_pool` is given; AP50 per class; hard/rare pick shares; boxes picked
    per class; the stopping rules replayed.
    """
    from labelwise.savings import (
        area_under_curve,
        compare_seeds,
        label_saving,
        labels_to_reach,
        labels_to_reach_seeds,
        mean_ci,
        mean_curve,
    )
    from labelwise.stopping import replay_stopping

    curves = _curves(rows, strategies, seeds)
    summary: dict[str, Any] = {"strategies": {}, "dataset_rates": dataset_rates, "rare_classes": list(rare_classes),
                               "full_pool": full_pool}
    random_curves = curves.get("random")
    random_mean = mean_curve(random_curves) if random_curves else None
    if random_mean is not None:
        summary["random_final_map50"] = float(random_mean.mean[-1])
        summary["random_final_labels"] = float(random_mean.labeled_counts[-1])
        summary["random_labels_to_final"] = labels_to_reach(random_mean.labeled_counts, random_mean.mean,
                                                            float(random_mean.mean[-1]))
    # one label range for every strategy's area, so a strategy with a cut-short curve is not favoured
    ranges = [(c[0][0], c[0][-1]) for seeds_curves in curves.values() for c in seeds_curves]
    common = (max(a for a, _ in ranges), min(b for _, b in ranges)) if ranges else None
    if common is not None and common[1] < common[0]:
        common = None
    share_random = {k: _picks_share(rows, "random", k) for k in ("batch_hard", "batch_rare")}
    round_step = None
    labeled_points = sorted({r.n_labeled for r in rows})
    if len(labeled_points) > 1:
        round_step = float(labeled_points[-1] - labeled_points[-2])

    for s, seeds_curves in curves.items():
        mc = mean_curve(seeds_curves)
        entry: dict[str, Any] = {
            "n_seeds": mc.n_seeds,
            "mean_curve": {"labeled": mc.labeled_counts.tolist(), "map50": mc.mean.tolist(), "sd": mc.std.tolist(),
                           "low": mc.low.tolist(), "high": mc.high.tolist(),
                           "ci_low": mc.ci_low.tolist(), "ci_high": mc.ci_high.tolist()},
            "final_labels": float(mc.labeled_counts[-1]),
            "final_map50": float(mc.mean[-1]), "final_map50_sd": float(mc.std[-1]),
        }
        run_seeds = [seed for seed in seeds if _final(rows, s, seed) is not None]
        # each seed on its own: final mAP50, area, labels to reach its own final mAP50
        per_seed = []
        for seed, (n, m) in zip(run_seeds, seeds_curves):
            per_seed.append({"seed": seed, "final_labels": float(n[-1]), "final_map50": float(m[-1]),
                             "auc": area_under_curve(n, m, common) if common else None,
                             "labels_to_own_final": labels_to_reach(n, m, float(m[-1]))})
        entry["per_seed"] = per_seed
        if common is not None:
            aucs = [p["auc"] for p in per_seed]
            entry["auc"], entry["auc_sd"] = _mean_sd(aucs)
            entry["auc_range"] = list(common)
            entry["auc_ci"] = _ci_record(mean_ci(aucs))
        if random_mean is not None:
            saving = label_saving((mc.labeled_counts, mc.mean), (random_mean.labeled_counts, random_mean.mean))
            entry["labels_to_random_final"] = saving.labels_needed
            entry["saving_percent"] = saving.saving_percent
            paired_seeds = [seed for seed in run_seeds if _final(rows, "random", seed) is not None]
            if paired_seeds:
                comparison = compare_seeds(_curves(rows, [s], paired_seeds)[s],
                                           _curves(rows, ["random"], paired_seeds)["random"],
                                           label_range=tuple(common) if common else None, round_step=round_step)
                entry["paired_saving_percent"] = [c.saving_percent for c in comparison.seeds]
                entry["paired_censored"] = [c.censored for c in comparison.seeds]
                entry["paired"] = _paired_record(comparison, paired_seeds) | {
                    "auc": _ci_record(comparison.auc), "auc_difference": _ci_record(comparison.auc_difference)}
                # Images are not the whole cost: a strategy that picks crowded scenes buys more boxes per image.
                # The same paired saving with the boxes drawn as the cost says whether it saves annotation work.
                boxes = compare_seeds(_curves(rows, [s], paired_seeds, "boxes_labeled")[s],
                                      _curves(rows, ["random"], paired_seeds, "boxes_labeled")["random"])
                entry["paired_boxes"] = _paired_record(boxes, paired_seeds)
        if full_pool is not None and full_pool.get("map50") is not None:
            entry["full_pool_targets"] = {}
            for fraction in FULL_POOL_FRACTIONS:
                reach = labels_to_reach_seeds(seeds_curves, fraction * float(full_pool["map50"]))
                entry["full_pool_targets"][f"{fraction:g}"] = {
                    "fraction": fraction, "target_map50": reach.target, "per_seed": reach.per_seed,
                    "mean": reach.mean, "n_reached": reach.n_reached, "n_seeds": len(reach.per_seed)}
        finals = [f for f in (_final(rows, s, seed) for seed in seeds) if f is not None]
        entry["final_ap50"] = {c: _mean_sd([f.per_class_ap50.get(c, float("nan")) for f in finals])[0]
                               for c in (finals[0].per_class_ap50 if finals else {})}
        entry["rare_ap50"] = {c: entry["final_ap50"].get(c) for c in rare_classes}
        for key, name in (("batch_hard", "hard"), ("batch_rare", "rare")):
            share = _picks_share(rows, s, key)
            entry[f"{name}_share"] = share
            base = share_random[key]
            entry[f"{name}_share_vs_random"] = (share / base) if share is not None and base else None
        entry["picked_class_boxes"] = _picked_class_boxes(rows, s, run_seeds)
        stops = []
        for seed in seeds:
            pts = sorted((r for r in rows if r.strategy == s and r.seed == seed), key=lambda r: r.point)
            if not pts:
                continue
            replays = replay_stopping([p.map50 for p in pts], [p.n_labeled for p in pts],
                                      [float("nan") if p.agreement is None else p.agreement for p in pts])
            stops.append({"seed": seed, "rules": [asdict(r) for r in replays]})
        entry["stopping"] = stops
        entry["wall_seconds"] = sum(r.wall_seconds or 0.0 for r in rows if r.strategy == s)
        summary["strategies"][s] = entry
    return summary


def _picked_class_boxes(rows: list[PointRow], strategy: str, seeds: Sequence[int]) -> dict[str, float]:
    """Boxes per class in the batches the strategy picked itself (after the shared initial one), mean per seed."""
    totals: dict[str, float] = {}
    for r in rows:
        if r.strategy == strategy and r.point > 0:
            for c, n in r.batch_class_boxes.items():
                totals[c] = totals.get(c, 0) + n
    return {c: n / max(len(seeds), 1) for c, n in totals.items()}


def _fmt(value: float | None, spec: str = ".3f", none: str = "-") -> str:
    return none if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def _paired_record(comparison, seeds: Sequence[int]) -> dict[str, Any]:
    """A `savings.SeedsComparison` as results.json keeps it: per seed, the saving's mean and CI, censored seeds."""
    return {"seeds": [{"seed": seed, **asdict(c)} for seed, c in zip(seeds, comparison.seeds)],
            "saving": _ci_record(comparison.saving), "n_censored": comparison.n_censored}


def _fmt_paired_saving(pair: dict[str, Any]) -> str:
    text = _fmt_ci(pair.get("saving"), ".0f")
    return text + (f", {pair['n_censored']} censored" if pair.get("n_censored") else "")


def _fmt_ci(ci: dict[str, Any] | None, spec: str = ".3f") -> str:
    """'0.512 (0.480 to 0.544)'; with one seed '0.512 (1 seed: no CI)'."""
    if not ci or ci.get("mean") is None:
        return "-"
    if ci.get("low") is None:
        return f"{format(ci['mean'], spec)} (1 seed: no CI)"
    return f"{format(ci['mean'], spec)} ({format(ci['low'], spec)} to {format(ci['high'], spec)})"


def _fmt_reach(target: dict[str, Any] | None) -> str:
    if not target:
        return "-"
    if target["mean"] is not None:
        return f"{target['mean']:.0f}"
    return f"not reached ({target['n_reached']}/{target['n_seeds']} seeds did)"


def summary_markdown(summary: dict[str, Any], settings: SimulationSettings, dataset_name: str,
                     rare_source: str, rows: list[PointRow]) -> str:
    from labelwise.stopping import RULES

    strategies = summary["strategies"]
    lines = [f"# labelwise simulation: {dataset_name}", ""]
    seeds_text = ", ".join(str(s) for s in settings.seeds)
    lines += [
        f"- data: `{settings.data_yaml}`",
        f"- strategies: {', '.join(strategies)}; seeds: {seeds_text}",
        f"- initial batch {settings.initial} (cold start `{settings.cold_start}`, the same for every strategy of a "
        f"seed), then {settings.per_round} per round, {settings.rounds} labeled "
        f"batches (final budget {settings.final_labels()} images)",
        f"- training: model `{settings.model}`, {settings.epochs} epoch(s) per round (warm start from the previous "
        f"round), imgsz {settings.imgsz}, batch {settings.batch}"
        + (f", extra {settings.train_args}" if settings.train_args else ""),
        "- evaluation: the dataset's fixed val split; each strategy of a seed starts from the same initial set",
        f"- rare classes: {', '.join(summary['rare_classes']) or 'none'} ({rare_source})",
        f"- total wall time: {sum(e['wall_seconds'] for e in strategies.values()) / 60:.1f} min",
    ]
    described = [label for label in strategies if settings.strategy_mappings.get(label, {"name": label}) != {
        "name": label}]
    for label in described:
        mapping = ", ".join(f"{k}: {v}" for k, v in settings.strategy_mappings[label].items())
        lines.append(f"- `{label}`: {mapping}")
    lines.append("")
    full_pool = summary.get("full_pool")
    if full_pool is not None:
        targets = ", ".join(f"{100 * f:.0f}% = {f * full_pool['map50']:.3f}" for f in FULL_POOL_FRACTIONS)
        lines += [f"Full-pool reference: one model trained once on all {full_pool['n_labeled']} labeled pool images "
                  f"({full_pool['epochs']} epoch(s) from the start model, seed 0) reaches mAP50 "
                  f"**{full_pool['map50']:.3f}** ({targets}).", ""]
    rates = summary["dataset_rates"]
    n_seeds = len(settings.seeds)
    if "random_final_map50" in summary:
        lines.append(f"Random sampling's final mAP50 (mean over seeds): **{summary['random_final_map50']:.3f}** at "
                     f"{summary['random_final_labels']:.0f} labeled images (first reached at "
                     f"{_fmt(summary.get('random_labels_to_final'), '.0f')}). The saving is "
                     "100 (1 - labels the strategy needs to first reach it / labels random needed to first reach "
                     "it), so random against itself is 0 by construction; `-` means the strategy never reached it "
                     "within the budget. Paired: seed by seed against random's same seed (same initial set), mean "
                     "and 95% Student-t interval over seeds; a seed that never reached random's final mAP50 counts "
                     "at its final budget plus one round (marked `*`, censored).")
        curve = summary["strategies"]["random"]["mean_curve"]["map50"]
        if len(curve) < 2 or curve[-1] <= curve[0] + 1e-3:
            lines += ["", "**Warning:** random's mean learning curve did not rise (final mAP50 "
                      f"{curve[-1]:.3f}, first {curve[0]:.3f}): every strategy 'reaches' that level at once, so the "
                      "savings below mean nothing. Train longer (--epochs), with more labels, or from a pretrained "
                      "--model."]
        if n_seeds == 1:
            lines += ["", "One seed only: no confidence interval can be given; run more seeds (--seeds) before "
                      "reading anything into the differences."]
    else:
        lines.append("Random sampling was not simulated, so there is no baseline for the label saving.")
    lines += ["", "## Results per strategy", ""]
    rare = summary["rare_classes"]
    head = ["strategy", "seeds", "final mAP50 (± sd)", "labels to reach random's final", "saving % (mean curve)",
            "saving % per seed", "saving % paired (95% CI)", f"AUC (mAP50 over {_range(strategies)}; 95% CI)",
            "AUC - random (95% CI)", "saving % in boxes drawn, paired (95% CI)"]
    if full_pool is not None:
        head += [f"labels to {100 * f:.0f}% of full pool" for f in FULL_POOL_FRACTIONS]
    head += [f"AP50 {c}" for c in rare]
    head += ["hard picks (x random)", "rare picks (x random)", "wall min"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s, e in strategies.items():
        paired = e.get("paired_saving_percent")
        censored = e.get("paired_censored") or [False] * len(paired or [])
        paired_text = "-" if not paired else " / ".join(_fmt(p, ".0f") + ("*" if c else "")
                                                        for p, c in zip(paired, censored))
        saving_text = _fmt(e.get("saving_percent"), ".0f")
        pair = e.get("paired") or {}
        paired_ci = _fmt_paired_saving(pair)
        auc_diff = _fmt_ci(pair.get("auc_difference"), "+.3f")
        box_ci = _fmt_paired_saving(e.get("paired_boxes") or {})
        if s == "random":  # measured against itself: 0 by construction
            saving_text, paired_text, paired_ci, auc_diff, box_ci = f"baseline ({saving_text})", "baseline", \
                "baseline", "baseline", "baseline"
        cells = [s, str(e["n_seeds"]), f"{e['final_map50']:.3f} ± {e['final_map50_sd']:.3f}",
                 _fmt(e.get("labels_to_random_final"), ".0f"), saving_text, paired_text, paired_ci,
                 _fmt_ci(e.get("auc_ci")), auc_diff, box_ci]
        if full_pool is not None:
            cells += [_fmt_reach((e.get("full_pool_targets") or {}).get(f"{f:g}")) for f in FULL_POOL_FRACTIONS]
        cells += [_fmt(e["rare_ap50"].get(c)) for c in rare]
        for name in ("hard", "rare"):
            share = e[f"{name}_share"]
            ratio = e[f"{name}_share_vs_random"]
            cells.append("-" if share is None else f"{100 * share:.0f}% ({_fmt(ratio, '.2f')}x)")
        cells.append(f"{e['wall_seconds'] / 60:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    base = [f"{name} {100 * v:.0f}%" for name, v in rates.items() if v is not None]
    lines += ["", "Hard/rare picks: share of the images each strategy chose itself (every batch after the shared "
              "initial one) that are hard or rare"
              + (f"; in the whole pool: {', '.join(base)}" if base else "") + ". x random: that share divided by "
              "random's.", ""]
    if full_pool is not None:
        lines += ["Labels to 90% / 95% of full pool: mean over seeds of the labels each seed needed to first reach "
                  "that fraction of the full-pool mAP50; `not reached` when a seed never did within the budget.", ""]

    if "random_final_map50" in summary:
        def headline(item: tuple[str, dict[str, Any]]) -> float | None:
            pair = item[1].get("paired") or {}
            paired_mean = (pair.get("saving") or {}).get("mean")
            return paired_mean if paired_mean is not None else item[1].get("saving_percent")

        best = max(((s, e) for s, e in strategies.items() if s != "random" and headline((s, e)) is not None),
                   key=lambda item: headline(item), default=None)
        if best is None or headline(best) <= 0:
            lines += ["No strategy reached random's final mAP50 with fewer labels than random needed"
                      + (f" (best: {best[0]}, {headline(best):.0f}%)." if best is not None else "."), ""]
        else:
            s, e = best
            pair = e.get("paired") or {}
            ci = pair.get("saving") or {}
            interval = (f"95% CI {ci['low']:.0f} to {ci['high']:.0f}" if ci.get("low") is not None
                        else "one seed, no CI")
            lines += [f"Best strategy by label saving: **{s}**, {headline(best):.0f}% fewer labels than random "
                      f"to reach its final mAP50 (paired over {ci.get('n', 0)} seed(s), {interval}"
                      + (f", {pair['n_censored']} censored" if pair.get("n_censored") else "")
                      + f"; hard picks {_fmt(e['hard_share_vs_random'], '.2f')}x and rare "
                      f"picks {_fmt(e['rare_share_vs_random'], '.2f')}x random's share).", ""]

    lines += ["## Per seed", "",
              "Each strategy's seed against random's same seed. Random's own rows show its noise: the labels it "
              "needed to first reach its own final mAP50 (equal to the final budget when its curve still rose at "
              "the end).", "",
              "| strategy | seed | final mAP50 | AUC | labels to own final | random's final (target) | "
              "labels random needed | labels needed | saving % | AUC - random |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for s, e in strategies.items():
        paired = {p["seed"]: p for p in (e.get("paired") or {}).get("seeds", [])}
        for seed_entry in e.get("per_seed", []):
            p = paired.get(seed_entry["seed"])
            cells = [s, str(seed_entry["seed"]), _fmt(seed_entry["final_map50"]), _fmt(seed_entry["auc"]),
                     _fmt(seed_entry["labels_to_own_final"], ".0f")]
            if p is None:
                cells += ["-"] * 5
            elif s == "random":
                cells += [_fmt(p["target_map50"]), _fmt(p["random_labels"], ".0f"), "baseline", "baseline",
                          "baseline"]
            else:
                needed = (f">{seed_entry['final_labels']:.0f} (counted as {p['labels_needed']:.0f})"
                          if p["censored"] else _fmt(p["labels_needed"], ".0f"))
                cells += [_fmt(p["target_map50"]), _fmt(p["random_labels"], ".0f"), needed,
                          _fmt(p["saving_percent"], ".0f") + ("*" if p["censored"] else ""),
                          _fmt(p["auc_difference"], "+.3f")]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")

    picked = {s: e.get("picked_class_boxes") or {} for s, e in strategies.items()}
    classes = list(dict.fromkeys(c for boxes in picked.values() for c in boxes))
    if classes:
        lines += ["## Boxes picked per class", "",
                  "Boxes of each class in the images each strategy picked itself (batches after the shared initial "
                  "one), mean per seed; rare classes marked `(rare)`.", "",
                  "| strategy | " + " | ".join(c + (" (rare)" if c in rare else "") for c in classes) + " |",
                  "|" + "---|" * (len(classes) + 1)]
        for s, boxes in picked.items():
            lines.append(f"| {s} | " + " | ".join(_fmt(boxes.get(c), ".1f") for c in classes) + " |")
        lines.append("")

    lines += ["## Stopping rules (replayed)", "",
              "Where each rule would have stopped each seed's run (labeled images at the stop, `never` if it did "
              "not), and the mAP50 given up against the last round (mean over the seeds where it stopped).", ""]
    head = ["strategy"] + [f"{rule}: stops at" for rule in RULES] + [f"{rule}: mAP50 given up" for rule in RULES]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s, e in strategies.items():
        at_cells, given_cells = [], []
        for i, rule in enumerate(RULES):
            stops = [seed["rules"][i] for seed in e["stopping"]]
            at_cells.append(" / ".join("never" if r["stop_round"] is None else f"{r['labeled_at_stop']:.0f}"
                                       for r in stops) or "-")
            given = [r["map50_given_up"] for r in stops if r["map50_given_up"] is not None]
            given_cells.append(_fmt(float(np.mean(given)) if given else None, "+.3f"))
        lines.append("| " + " | ".join([s] + at_cells + given_cells) + " |")
    lines += ["", "## Learning curves (mean over seeds)", "",
              "| strategy | labeled | boxes labeled | mAP50 | mAP50-95 | hard labeled | rare labeled |",
              "|---|---|---|---|---|---|---|"]
    for s in strategies:
        points = sorted({r.point for r in rows if r.strategy == s})
        for p in points:
            at = [r for r in rows if r.strategy == s and r.point == p]
            mean = lambda attr: _mean_sd([getattr(r, attr) for r in at if getattr(r, attr) is not None])[0]  # noqa: E731
            lines.append(f"| {s} | {_fmt(mean('n_labeled'), '.0f')} | {_fmt(mean('boxes_labeled'), '.0f')} | "
                         f"{_fmt(mean('map50'))} | {_fmt(mean('map50_95'))} | {_fmt(mean('hard_labeled'), '.1f')} | "
                         f"{_fmt(mean('rare_labeled'), '.1f')} |")
    lines += ["", "Figures: `learning_curves.png`, `rare_class_ap.png`. Every number: `results.csv`, `results.json`.",
              ""]
    return "\n".join(lines)


def _range(strategies: dict[str, Any]) -> str:
    for e in strategies.values():
        if e.get("auc_range"):
            a, b = e["auc_range"]
            return f"{a:.0f}-{b:.0f} labels"
    return "the curve"


# -- outputs --------------------------------------------------------------------------------------------------------


CSV_FIXED = ("strategy", "seed", "point", "round", "n_labeled", "boxes_labeled", "map50", "map50_95", "agreement",
             "batch_size", "batch_boxes", "batch_hard", "batch_rare", "hard_labeled", "rare_labeled",
             "train_seconds", "score_seconds", "wall_seconds")


def _write_csv(path: Path, rows: list[PointRow], classes: Sequence[str]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*CSV_FIXED, *(f"ap50_{c}" for c in classes), *(f"batch_boxes_{c}" for c in classes)])
    for r in rows:
        d = asdict(r)
        writer.writerow([("" if d[k] is None else d[k]) for k in CSV_FIXED]
                        + [_fmt(r.per_class_ap50.get(c), ".5f", "") for c in classes]
                        + [r.batch_class_boxes.get(c, "") for c in classes])
    atomic_write_text(path, buffer.getvalue())


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _json_safe(value.item())
    return value


def write_outputs(out_dir: Path, settings: SimulationSettings, rows: list[PointRow], dataset: _Dataset,
                  summary: dict[str, Any]) -> dict[str, Path]:
    from labelwise.plots import learning_curves, per_class_ap

    files = {"csv": out_dir / "results.csv", "json": out_dir / "results.json",
             "learning_curves": out_dir / "learning_curves.png", "rare_class_ap": out_dir / "rare_class_ap.png",
             "summary": out_dir / "summary.md"}
    _write_csv(files["csv"], rows, dataset.classes)
    payload = {"settings": _settings_record(settings), "classes": dataset.classes,
               "class_counts": dataset.class_counts, "rare_classes": dataset.rare_classes,
               "rows": [asdict(r) for r in rows], "summary": summary}
    atomic_write_text(files["json"], json.dumps(_json_safe(payload), indent=1) + "\n")
    curves = _curves(rows, settings.strategies, settings.seeds)
    full_pool = summary.get("full_pool") or {}
    learning_curves(curves, files["learning_curves"], target=summary.get("random_final_map50"),
                    reference=full_pool.get("map50"), band="ci",
                    title=f"Learning curves ({len(settings.seeds)} seed(s); band: 95% CI of the mean)")
    final_ap = {s: {c: v for c, v in e["final_ap50"].items() if v is not None}
                for s, e in summary["strategies"].items()}
    per_class_ap(final_ap, files["rare_class_ap"], rare_classes=dataset.rare_classes,
                 class_counts=dataset.class_counts,
                 title=f"AP50 per class at the final budget ({settings.final_labels()} images, mean over seeds)")
    atomic_write_text(files["summary"], summary_markdown(summary, settings, dataset.data_yaml.parent.name,
                                                         dataset.rare_source, rows))
    return files


# -- the entry point ------------------------------------------------------------------------------------------------


def simulate(data_yaml: Path, out_dir: Path, strategies: Sequence[str], seeds: Sequence[int] | int, *,
             initial: int, per_round: int, rounds: int | None = None, budget: int | None = None, epochs: int = 10,
             imgsz: int = 320, model: str = "yolo11n.yaml", batch: int = 16,
             train_args: dict[str, Any] | None = None, variants: dict[str, dict[str, Any]] | None = None,
             cold_start: str = "random", full_pool: bool = False, progress: bool = True,
             threads: int | None = None) -> SimulationResult:
    """Run (or resume) the simulation and write its outputs under `out_dir`. See the module docstring.

    strategies: labels: plain strategy names, preset names (`labelwise.presets.PRESETS`) or labels of `variants`
    (label -> strategy mapping; every variant runs, listed or not; see `resolve_strategies`). seeds: a list of
    seeds, or an int N for seeds 0..N-1. rounds: labeled batches including the initial one; or budget: the final
    number of labeled images (rounds follow from it). train_args: extra Ultralytics train arguments (e.g.
    freeze=10), the same in every round. cold_start: how the initial batch is chosen (typical | kcenter | random),
    the same for every strategy so that a seed's strategies share it. full_pool: also train once on the whole
    labeled pool (OUT/full_pool/, resumable) for the "labels to 90% / 95% of full pool" columns. threads: CPU
    threads for training and scoring (None: OMP_NUM_THREADS, else the usable cores); it does not change results, so
    a rerun may use another.
    """
    out_dir = Path(out_dir).absolute()
    seed_list = tuple(range(seeds)) if isinstance(seeds, int) else tuple(int(s) for s in seeds)
    labels = [s.strip() for s in strategies if s.strip()]
    if not labels and not variants:
        raise SimulationError("give at least one strategy (--strategies random,default,...)")
    mappings = resolve_strategies(labels, variants, cold_start)
    strategy_list = tuple(mappings)
    if not seed_list:
        raise SimulationError("give at least one seed")
    if initial < 1 or per_round < 1:
        raise SimulationError("--initial and --per-round must be at least 1")
    if rounds is None and budget is None:
        raise SimulationError("give --rounds (labeled batches, the initial one included) or --budget (labels)")
    if budget is not None:
        if budget < initial:
            raise SimulationError(f"--budget {budget} is smaller than --initial {initial}")
        needed = 1 + math.ceil((budget - initial) / per_round)
        rounds = needed if rounds is None else min(rounds, needed)
    assert rounds is not None
    if rounds < 1:
        raise SimulationError("--rounds must be at least 1")
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = _inspect_dataset(Path(data_yaml), out_dir)
    if initial > len(dataset.images):
        raise SimulationError(f"--initial {initial} is more than the {len(dataset.images)} pool images in "
                              f"{dataset.train_dir}")
    settings = SimulationSettings(
        data_yaml=str(dataset.data_yaml), strategies=strategy_list, seeds=seed_list, initial=initial,
        per_round=per_round, rounds=rounds, budget=budget, epochs=epochs, imgsz=imgsz, model=model, batch=batch,
        train_args=dict(sorted((train_args or {}).items())), strategy_mappings=mappings, cold_start=cold_start,
        full_pool=full_pool,
    )
    _check_or_save_settings(out_dir, settings)

    quiet_before = console.quiet
    console.quiet = not progress  # the loop's own scoring bars go to the same console
    rows: list[PointRow] = []
    initial_sets: dict[int, tuple[str, set[str]]] = {}
    # +1: the final training after the last labeled batch
    # trainings: rounds 2..R train at their start, plus the final training after the last labeled batch
    eta = _Eta(len(seed_list) * len(strategy_list) * rounds)
    try:
        # seed-major: after each seed every strategy has a comparable curve, so a long run stopped early still
        # gives a (smaller) fair table
        for seed in seed_list:
            for strategy in strategy_list:
                root = out_dir / "runs" / strategy / f"seed{seed}"
                label = f"{strategy} seed {seed}"
                ws = _open_workspace(root, dataset, settings, strategy, seed)
                ws.threads = threads
                try:
                    eta.skip(len([r for r in ws.store.rounds() if r.map50 is not None]))
                    try:
                        _run_workspace(ws, dataset, settings, label, eta)
                    except SimulationError:
                        raise
                    except Exception as exc:
                        raise SimulationError(f"{label} (workspace {root}) failed: {exc.__class__.__name__}: "
                                              f"{exc}") from exc
                    _check_same_initial_set(ws, seed, strategy, initial_sets)
                    rows.extend(_measure(ws, dataset, strategy, seed, rounds))
                finally:
                    ws.store.close()
        # after the strategies: a long run stopped early has its comparable curves first; a finished reference
        # from an earlier run is reported even without --full-pool
        reference = _full_pool(out_dir, dataset, settings, train=full_pool, threads=threads)
    finally:
        console.quiet = quiet_before

    pool_rates = _pool_rates(dataset)
    summary = summarise(rows, strategy_list, seed_list, dataset.rare_classes, pool_rates, full_pool=reference)
    files = write_outputs(out_dir, settings, rows, dataset, summary)
    return SimulationResult(out_dir, settings, rows, dataset.rare_classes, summary, files)


def _pool_rates(dataset: _Dataset) -> dict[str, float | None]:
    """Share of hard and of rare images in the whole pool: what a random pick gets on average."""
    n = len(dataset.images)
    if dataset.scenarios is not None:
        rows = [dataset.scenarios.get(str(p.resolve())) for p in dataset.images]
        known = [r for r in rows if r is not None]
        if known:
            return {"hard": sum(r["hard"] for r in known) / len(known),
                    "rare": sum(r["rare"] for r in known) / len(known)}
    rare_ids = {dataset.classes.index(c) for c in dataset.rare_classes}
    rare = 0
    for p in dataset.images:
        label = label_path_for(p)
        if label.exists():
            ids = [int(line.split()[0]) for line in label.read_text().splitlines() if line.strip()]
            rare += is_rare_image(ids, rare_ids)
    return {"hard": None, "rare": rare / n if n else None}


def read_variants(path: Path) -> dict[str, dict[str, Any]]:
    """A variants file: YAML mapping label -> strategy mapping (optionally starting from `preset: NAME`), e.g.

        default-no-hashes: {preset: default, dedup_hamming: null}
        entropy-sum: {name: hybrid, uncertainty: entropy, aggregation: sum}
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SimulationError(f"cannot read the variants file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise SimulationError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, dict) for k, v in data.items()):
        raise SimulationError(f"{path} must map each label to a strategy mapping, e.g. "
                              "`default-no-hashes: {preset: default, dedup_hamming: null}`")
    return data


def parse_train_args(items: Sequence[str]) -> dict[str, Any]:
    """['freeze=10', 'lr0=0.002'] -> {'freeze': 10, 'lr0': 0.002}; values are read as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--train-arg {item!r} is not KEY=VALUE (e.g. freeze=10)")
        out[key.strip()] = yaml.safe_load(value)
    return out
