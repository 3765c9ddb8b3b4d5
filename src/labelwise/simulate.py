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

Fairness
--------
- Every strategy of a seed starts from the same initial set: the cold-start batch depends only on the workspace
  seed (= the simulation seed) and the order of image ids, and every workspace registers the same files in the
  same sorted order. The simulation checks this after round 1 and stops with an error if it ever differs.
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
results.csv, results.json   one row per strategy, seed and curve point (see `PointRow`)
learning_curves.png        mAP50 against labeled images, mean and min-max band over seeds, one line per strategy
rare_class_ap.png          AP50 per class at the final budget (mean over seeds), rare classes highlighted
summary.md                 per strategy: labels to reach random's final mAP50 and the saving, area under the curve,
                           AP50 of the rare classes at the final budget, hard/rare picks against random, and where
                           each stopping rule would have stopped and the mAP50 it gave up
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from labelwise.config import ConfigError, read_data_yaml, save_config
from labelwise.fileio import atomic_write_text
from labelwise.pool import find_files, is_candidate, label_path_for, parse_yolo_label
from labelwise.progress import console

SIMULATION_FILE = "simulation.json"
KV_NAMESPACE = "simulate"

KNOWN_STRATEGIES = ("random", "least_confidence", "margin", "entropy", "coreset", "hybrid",
                    "uncertainty_then_diverse", "committee", "consistency")

# Settings that change what a finished round means: a rerun into the same folder must not change them.
_FIXED_SETTINGS = ("data_yaml", "initial", "per_round", "epochs", "imgsz", "model", "batch", "train_args")


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

    def final_labels(self) -> int:
        n = self.initial + (self.rounds - 1) * self.per_round
        return min(n, self.budget) if self.budget is not None else n


@dataclass
class PointRow:
    """One point of one learning curve: the model trained on `n_labeled` images, for one strategy and seed.

    point: 0 for the model trained on the initial set, then one per added batch. round: the workspace round whose
    model this is. boxes_labeled: label boxes in the labeled pool (the real annotation cost). batch_*: the batch
    labeled just before this training (point 0: the random initial batch). hard/rare counts are None when the
    dataset records no scenarios (rare then falls back to "holds a box of a rare class"). wall_seconds: the
    workspace round's wall time in the process that ran it (train, score, select, oracle import).
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
        rare_source = "classes with at most 10% of the commonest class's boxes in the pool"
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
        changed = [k for k in _FIXED_SETTINGS if old.get(k) != record[k]]
        if changed:
            diffs = "; ".join(f"{k}: {old.get(k)!r} -> {record[k]!r}" for k in changed)
            raise SimulationError(f"{out_dir} holds a simulation with other settings ({diffs}). Resume it with the "
                                  "same settings, or give another --out folder.")
        # strategies and seeds accumulate, so that a later run can add some without losing the earlier ones
        record["strategies"] = list(dict.fromkeys(old.get("strategies", []) + record["strategies"]))
        record["seeds"] = sorted(set(old.get("seeds", [])) | set(record["seeds"]))
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def _workspace_settings(settings: SimulationSettings, strategy: str, seed: int, budget_total: int) -> dict[str, Any]:
    train: dict[str, Any] = {"epochs": settings.epochs, "batch": settings.batch}
    if settings.train_args:
        train["extra"] = dict(settings.train_args)
    return dict(
        model=settings.model, imgsz=settings.imgsz, seed=seed, train=train,
        budget={"per_round": settings.per_round, "initial": settings.initial, "total": budget_total},
        # random is the baseline: pure chance, without the near-duplicate filter the other strategies apply
        strategy={"name": strategy, **({"dedup_threshold": None} if strategy == "random" else {})},
        # the simulation decides when to stop (rounds/budget); the rules are replayed afterwards, not obeyed
        stopping={"rule": "none"},
    )


def _open_workspace(root: Path, dataset: _Dataset, settings: SimulationSettings, strategy: str, seed: int):
    from labelwise.loop import Workspace

    total = settings.final_labels()
    if (root / "labelwise.yaml").exists():
        ws = Workspace(root)
        # a run killed while registering the pool: `add` skips what is known, and the sorted walk gives the rest
        # the same ids as in every other workspace
        ws.ingest_sources(progress=False)
        if (ws.config.budget.total or 0) < total:
            # more rounds asked for than a previous run: raise the cap and let the loop go on
            ws.config.budget.total = total
            save_config(ws.root, ws.config)
            if ws.finished() and ws.store.counts()["pool_labeled"] < total:
                ws.store.kv_set("loop", "finished", None)
        return ws
    ws = Workspace.create(root, images=[dataset.train_dir], data_yaml=dataset.data_yaml,
                          **_workspace_settings(settings, strategy, seed, total))
    ws.ingest_sources(progress=False)
    counts = ws.store.counts()
    if counts["val_labeled"] == 0:
        raise SimulationError(f"no labeled validation image was registered from {dataset.val_dir}")
    return ws


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


def _image_flags(dataset: _Dataset, path: Path, boxes: Sequence[Sequence[float]]) -> tuple[bool | None, bool]:
    """(hard, rare) of one labeled image: from scenarios.csv when the dataset has it, else rare = holds a box of a
    rare class and hard unknown."""
    if dataset.scenarios is not None:
        row = dataset.scenarios.get(str(Path(path).resolve()))
        if row is not None:
            return bool(row["hard"]), bool(row["rare"])
    rare_ids = {dataset.classes.index(c) for c in dataset.rare_classes}
    return (None if dataset.scenarios is None else False), any(int(b[0]) in rare_ids for b in boxes)


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
        for p in picks:
            label = store.label(p["image_id"]) or []
            is_hard, is_rare = _image_flags(dataset, Path(p["path"]), label)
            size += 1
            boxes += len(label)
            hard = None if is_hard is None or hard is None else hard + int(is_hard)
            rare += int(is_rare)
        batches[r.round] = {"size": size, "boxes": boxes, "hard": hard, "rare": rare}

    rows = []
    trained = [r for r in rounds if r.map50 is not None][:n_points]
    for point, r in enumerate(trained):
        before = [b for s, b in batches.items() if s < r.round]
        last = batches.get(max((s for s in batches if s < r.round), default=-1),
                           {"size": 0, "boxes": 0, "hard": None, "rare": None})
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


def _curves(rows: list[PointRow], strategies: Sequence[str], seeds: Sequence[int]):
    out: dict[str, list[tuple[list[float], list[float]]]] = {}
    for s in strategies:
        seeds_curves = []
        for seed in seeds:
            pts = sorted((r for r in rows if r.strategy == s and r.seed == seed), key=lambda r: r.point)
            if pts:
                seeds_curves.append(([float(p.n_labeled) for p in pts], [p.map50 for p in pts]))
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


def summarise(rows: list[PointRow], strategies: Sequence[str], seeds: Sequence[int],
              rare_classes: Sequence[str], dataset_rates: dict[str, float | None]) -> dict[str, Any]:
    """Every figure of summary.md, as plain data (also written to results.json)."""
    from labelwise.savings import area_under_curve, label_saving, mean_curve, paired_savings
    from labelwise.stopping import replay_stopping

    curves = _curves(rows, strategies, seeds)
    summary: dict[str, Any] = {"strategies": {}, "dataset_rates": dataset_rates, "rare_classes": list(rare_classes)}
    random_curves = curves.get("random")
    random_mean = mean_curve(random_curves) if random_curves else None
    if random_mean is not None:
        summary["random_final_map50"] = float(random_mean.mean[-1])
        summary["random_final_labels"] = float(random_mean.labeled_counts[-1])
    # one label range for every strategy's area, so a strategy with a cut-short curve is not favoured
    ranges = [(c[0][0], c[0][-1]) for seeds_curves in curves.values() for c in seeds_curves]
    common = (max(a for a, _ in ranges), min(b for _, b in ranges)) if ranges else None
    share_random = {k: _picks_share(rows, "random", k) for k in ("batch_hard", "batch_rare")}

    for s, seeds_curves in curves.items():
        mc = mean_curve(seeds_curves)
        entry: dict[str, Any] = {
            "n_seeds": mc.n_seeds,
            "mean_curve": {"labeled": mc.labeled_counts.tolist(), "map50": mc.mean.tolist(), "sd": mc.std.tolist(),
                           "low": mc.low.tolist(), "high": mc.high.tolist()},
            "final_labels": float(mc.labeled_counts[-1]),
            "final_map50": float(mc.mean[-1]), "final_map50_sd": float(mc.std[-1]),
        }
        if random_mean is not None:
            saving = label_saving((mc.labeled_counts, mc.mean), (random_mean.labeled_counts, random_mean.mean))
            entry["labels_to_random_final"] = saving.labels_needed
            entry["saving_percent"] = saving.saving_percent
            run_seeds = [seed for seed in seeds if _final(rows, s, seed) and _final(rows, "random", seed)]
            if run_seeds:
                paired = paired_savings(_curves(rows, [s], run_seeds)[s], _curves(rows, ["random"], run_seeds)["random"])
                entry["paired_saving_percent"] = [p.saving_percent for p in paired]
        if common is not None and common[1] >= common[0]:
            aucs = [area_under_curve(n, m, common) for n, m in seeds_curves]
            entry["auc"], entry["auc_sd"] = _mean_sd(aucs)
            entry["auc_range"] = list(common)
        finals = [f for f in (_final(rows, s, seed) for seed in seeds) if f is not None]
        entry["final_ap50"] = {c: _mean_sd([f.per_class_ap50.get(c, float("nan")) for f in finals])[0]
                               for c in (finals[0].per_class_ap50 if finals else {})}
        entry["rare_ap50"] = {c: entry["final_ap50"].get(c) for c in rare_classes}
        for key, name in (("batch_hard", "hard"), ("batch_rare", "rare")):
            share = _picks_share(rows, s, key)
            entry[f"{name}_share"] = share
            base = share_random[key]
            entry[f"{name}_share_vs_random"] = (share / base) if share is not None and base else None
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


def _fmt(value: float | None, spec: str = ".3f", none: str = "-") -> str:
    return none if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def summary_markdown(summary: dict[str, Any], settings: SimulationSettings, dataset_name: str,
                     rare_source: str, rows: list[PointRow]) -> str:
    from labelwise.stopping import RULES

    strategies = summary["strategies"]
    lines = [f"# labelwise simulation: {dataset_name}", ""]
    seeds_text = ", ".join(str(s) for s in settings.seeds)
    lines += [
        f"- data: `{settings.data_yaml}`",
        f"- strategies: {', '.join(strategies)}; seeds: {seeds_text}",
        f"- initial random batch {settings.initial}, then {settings.per_round} per round, {settings.rounds} labeled "
        f"batches (final budget {settings.final_labels()} images)",
        f"- training: model `{settings.model}`, {settings.epochs} epoch(s) per round (warm start from the previous "
        f"round), imgsz {settings.imgsz}, batch {settings.batch}"
        + (f", extra {settings.train_args}" if settings.train_args else ""),
        "- evaluation: the dataset's fixed val split; each strategy of a seed starts from the same initial set",
        f"- rare classes: {', '.join(summary['rare_classes']) or 'none'} ({rare_source})",
        f"- total wall time: {sum(e['wall_seconds'] for e in strategies.values()) / 60:.1f} min",
        "",
    ]
    rates = summary["dataset_rates"]
    if "random_final_map50" in summary:
        lines.append(f"Random sampling's final mAP50 (mean over seeds): **{summary['random_final_map50']:.3f}** at "
                     f"{summary['random_final_labels']:.0f} labeled images. The saving is "
                     "100 (1 - labels needed to reach it / random's labels); `-` means the strategy never reached "
                     "it within the budget.")
        curve = summary["strategies"]["random"]["mean_curve"]["map50"]
        if len(curve) < 2 or curve[-1] <= curve[0] + 1e-3:
            lines += ["", "**Warning:** random's mean learning curve did not rise (final mAP50 "
                      f"{curve[-1]:.3f}, first {curve[0]:.3f}): every strategy 'reaches' that level at once, so the "
                      "savings below mean nothing. Train longer (--epochs), with more labels, or from a pretrained "
                      "--model."]
    else:
        lines.append("Random sampling was not simulated, so there is no baseline for the label saving.")
    lines += ["", "## Results per strategy", ""]
    rare = summary["rare_classes"]
    head = ["strategy", "seeds", "final mAP50 (± sd)", "labels to reach random's final", "saving % (mean curve)",
            "saving % per seed", f"AUC (mAP50 over {_range(strategies)})"]
    head += [f"AP50 {c}" for c in rare]
    head += ["hard picks (x random)", "rare picks (x random)", "wall min"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s, e in strategies.items():
        paired = e.get("paired_saving_percent")
        paired_text = "-" if not paired else " / ".join(_fmt(p, ".0f") for p in paired)
        saving_text = _fmt(e.get("saving_percent"), ".0f")
        if s == "random":  # measured against itself: the numbers only say how noisy random's own curve is
            saving_text, paired_text = f"baseline ({saving_text})", "baseline"
        cells = [s, str(e["n_seeds"]), f"{e['final_map50']:.3f} ± {e['final_map50_sd']:.3f}",
                 _fmt(e.get("labels_to_random_final"), ".0f"), saving_text, paired_text,
                 f"{_fmt(e.get('auc'))} ± {_fmt(e.get('auc_sd'))}"]
        cells += [_fmt(e["rare_ap50"].get(c)) for c in rare]
        for name in ("hard", "rare"):
            share = e[f"{name}_share"]
            ratio = e[f"{name}_share_vs_random"]
            cells.append("-" if share is None else f"{100 * share:.0f}% ({_fmt(ratio, '.2f')}x)")
        cells.append(f"{e['wall_seconds'] / 60:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    base = [f"{name} {100 * v:.0f}%" for name, v in rates.items() if v is not None]
    lines += ["", "Hard/rare picks: share of the images each strategy chose itself (every batch after the shared "
              "random initial one) that are hard or rare"
              + (f"; in the whole pool: {', '.join(base)}" if base else "") + ". x random: that share divided by "
              "random's.", ""]

    if "random_final_map50" in summary:
        best = max(((s, e) for s, e in strategies.items() if s != "random" and e.get("saving_percent") is not None),
                    key=lambda item: item[1]["saving_percent"], default=None)
        if best is None:
            lines += ["No strategy reached random's final mAP50 with fewer labels than random used.", ""]
        else:
            s, e = best
            lines += [f"Best strategy by label saving: **{s}**, {e['saving_percent']:.0f}% fewer labels than random "
                      f"to reach its final mAP50 (hard picks {_fmt(e['hard_share_vs_random'], '.2f')}x and rare "
                      f"picks {_fmt(e['rare_share_vs_random'], '.2f')}x random's share).", ""]

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
    writer.writerow([*CSV_FIXED, *(f"ap50_{c}" for c in classes)])
    for r in rows:
        d = asdict(r)
        writer.writerow([("" if d[k] is None else d[k]) for k in CSV_FIXED]
                        + [_fmt(r.per_class_ap50.get(c), ".5f", "") for c in classes])
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
    learning_curves(curves, files["learning_curves"], target=summary.get("random_final_map50"),
                    title=f"Learning curves ({len(settings.seeds)} seed(s); band: min-max)")
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
             train_args: dict[str, Any] | None = None, progress: bool = True) -> SimulationResult:
    """Run (or resume) the simulation and write its outputs under `out_dir`. See the module docstring.

    seeds: a list of seeds, or an int N for seeds 0..N-1. rounds: labeled batches including the initial one; or
    budget: the final number of labeled images (rounds follow from it). train_args: extra Ultralytics train
    arguments (e.g. freeze=10), the same in every round.
    """
    out_dir = Path(out_dir).absolute()
    seed_list = tuple(range(seeds)) if isinstance(seeds, int) else tuple(int(s) for s in seeds)
    strategy_list = tuple(dict.fromkeys(s.strip() for s in strategies if s.strip()))
    if not strategy_list:
        raise SimulationError("give at least one strategy (--strategies random,entropy,...)")
    try:
        from labelwise.selection import STRATEGIES as known
    except ImportError:
        known = KNOWN_STRATEGIES
    unknown = [s for s in strategy_list if s not in known]
    if unknown:
        raise SimulationError(f"unknown strategy {', '.join(unknown)}; known: {', '.join(known)}")
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
        train_args=dict(sorted((train_args or {}).items())),
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
    finally:
        console.quiet = quiet_before

    pool_rates = _pool_rates(dataset)
    summary = summarise(rows, strategy_list, seed_list, dataset.rare_classes, pool_rates)
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
            rare += any(int(line.split()[0]) in rare_ids for line in label.read_text().splitlines() if line.strip())
    return {"hard": None, "rare": rare / n if n else None}


def parse_train_args(items: Sequence[str]) -> dict[str, Any]:
    """['freeze=10', 'lr0=0.002'] -> {'freeze': 10, 'lr0': 0.002}; values are read as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--train-arg {item!r} is not KEY=VALUE (e.g. freeze=10)")
        out[key.strip()] = yaml.safe_load(value)
    return out
