"""`labelwise.yaml` <-> a typed configuration.

The YAML file is what a person reads and edits; `WorkspaceConfig` is what the code uses. Unknown keys are errors
(a typo must not silently fall back to a default), and every error names the file and the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from labelwise.fileio import atomic_write_text
from labelwise.presets import resolve as resolve_strategy

CONFIG_NAME = "labelwise.yaml"


class ConfigError(ValueError):
    """labelwise.yaml (or a data.yaml it points to) is not usable; the message names the file and key."""


@dataclass
class TrainSettings:
    epochs: int = 10
    batch: int = 16
    patience: int = 100
    # Small labeled sets: the default nbs=64 accumulates 4 batches, giving a 200-image set ~3 optimiser steps an epoch.
    nbs: int = 16
    warmup_epochs: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)  # any other Ultralytics train argument


@dataclass
class ScoreSettings:
    conf: float = 0.05  # low on purpose: uncertain boxes are exactly the ones the selection needs to see
    iou: float = 0.6
    batch: int = 8
    max_det: int = 100


@dataclass
class Budget:
    per_round: int = 50
    initial: int = 0  # size of the random seed batch when nothing is labeled yet (0: per_round)
    total: int | None = None  # stop when this many pool images are labeled


@dataclass
class StoppingSettings:
    rule: str = "min_gain"  # min_gain | learning_curve | knee | stabilizing_predictions | none
    min_map_gain: float = 0.005
    patience: int = 1
    max_rounds: int | None = None


@dataclass
class ScheduleEntry:
    first_round: int
    last_round: int | None
    strategy: dict[str, Any]


@dataclass
class WorkspaceConfig:
    classes: list[str]
    images: list[str]
    labeled: list[str] = field(default_factory=list)
    val: str | None = None  # a folder of validation images with YOLO labels beside them (images/ -> labels/)
    val_fraction: float = 0.2  # without `val`: this share of labeled images is held out, by hash, forever
    model: str = "yolo11n.yaml"
    imgsz: int = 320
    device: str = "cpu"
    seed: int = 0
    train: TrainSettings = field(default_factory=TrainSettings)
    score: ScoreSettings = field(default_factory=ScoreSettings)
    strategy: dict[str, Any] = field(default_factory=lambda: resolve_strategy("default"))
    schedule: list[ScheduleEntry] = field(default_factory=list)
    budget: Budget = field(default_factory=Budget)
    annotation: dict[str, Any] = field(default_factory=lambda: {"backend": "folder"})
    stopping: StoppingSettings = field(default_factory=StoppingSettings)

    def strategy_for_round(self, round_no: int) -> dict[str, Any]:
        """The strategy of the schedule entry covering `round_no`, else the default `strategy`."""
        for entry in self.schedule:
            if entry.first_round <= round_no and (entry.last_round is None or round_no <= entry.last_round):
                return dict(entry.strategy)
        return dict(self.strategy)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["schedule"] = [
            {"rounds": _format_rounds(e.first_round, e.last_round), "strategy": e.strategy} for e in self.schedule
        ]
        return data


def _format_rounds(first: int, last: int | None) -> str:
    return f"{first}-" if last is None else (str(first) if first == last else f"{first}-{last}")


def _parse_rounds(text: Any, where: str) -> tuple[int, int | None]:
    """'1-3' -> (1, 3); '4-' -> (4, None); '5' -> (5, 5)."""
    s = str(text).strip()
    try:
        if "-" in s:
            a, b = s.split("-", 1)
            return int(a), (int(b) if b.strip() else None)
        return int(s), int(s)
    except ValueError:
        raise ConfigError(f"{where}: rounds {text!r} is not like '1-3', '4-' or '5'") from None


def _build(cls, data: Any, where: str):
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    return cls(**data)


def config_from_dict(data: dict[str, Any], where: str = CONFIG_NAME) -> WorkspaceConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the file must hold a mapping of settings")
    data = dict(data)
    for key in ("classes", "images"):
        if not data.get(key):
            raise ConfigError(f"{where}: '{key}' is required and must not be empty")
    if not all(isinstance(c, str) and c.strip() for c in data["classes"]):
        raise ConfigError(f"{where}: 'classes' must be a list of non-empty names")
    if len(set(data["classes"])) != len(data["classes"]):
        raise ConfigError(f"{where}: 'classes' has a repeated name")
    nested = {
        "train": TrainSettings, "score": ScoreSettings, "budget": Budget, "stopping": StoppingSettings,
    }
    for key, cls in nested.items():
        data[key] = _build(cls, data.get(key), f"{where}: {key}")
    schedule = []
    for i, entry in enumerate(data.get("schedule") or []):
        if not isinstance(entry, dict) or set(entry) != {"rounds", "strategy"}:
            raise ConfigError(f"{where}: schedule[{i}] must have exactly 'rounds' and 'strategy'")
        first, last = _parse_rounds(entry["rounds"], f"{where}: schedule[{i}]")
        strategy = entry["strategy"]
        if isinstance(strategy, str):
            strategy = {"name": strategy}
        schedule.append(ScheduleEntry(first, last, dict(strategy)))
    data["schedule"] = schedule
    if isinstance(data.get("strategy"), str):
        data["strategy"] = {"name": data["strategy"]}
    if isinstance(data.get("annotation"), str):
        data["annotation"] = {"backend": data["annotation"]}
    try:
        config = _build(WorkspaceConfig, data, where)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if config.budget.per_round < 1:
        raise ConfigError(f"{where}: budget.per_round must be at least 1")
    rules = ("min_gain", "learning_curve", "knee", "stabilizing_predictions", "none")
    if config.stopping.rule not in rules:
        raise ConfigError(f"{where}: stopping.rule '{config.stopping.rule}' is unknown; use one of {', '.join(rules)}")
    if not 0 <= config.val_fraction < 1:
        raise ConfigError(f"{where}: val_fraction must be in [0, 1)")
    return config


def load_config(workspace: Path) -> WorkspaceConfig:
    path = Path(workspace) / CONFIG_NAME
    if not path.exists():
        raise ConfigError(f"{path} not found: is {workspace} a labelwise workspace? Create one with `labelwise init`.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return config_from_dict(data, str(path))


def save_config(workspace: Path, config: WorkspaceConfig) -> None:
    header = (
        "# labelwise workspace settings. Edit freely; `labelwise status` checks them.\n"
        "# strategy names: random, random_dedup, detection_and_confusion, detection_entropy, class_confusion,\n"
        "#   article_least_confidence, softmax_least_confidence, softmax_margin, softmax_entropy, coreset, hybrid,\n"
        "#   uncertainty_then_diverse, committee, consistency. annotation backends: folder, label_studio, cvat.\n"
    )
    text = header + yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True)
    atomic_write_text(Path(workspace) / CONFIG_NAME, text)


def read_data_yaml(path: Path) -> tuple[list[str], list[Path], Path | None]:
    """Class names, train image folders and the val image folder of an Ultralytics data.yaml."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read it as a dataset YAML: {exc}") from None
    if not isinstance(data, dict) or "names" not in data:
        raise ConfigError(f"{path}: a dataset YAML needs 'names' (class id -> name)")
    names = data["names"]
    if isinstance(names, dict):
        ids = sorted(int(k) for k in names)
        if ids != list(range(len(ids))):
            raise ConfigError(f"{path}: 'names' ids must be 0..{len(ids) - 1} without gaps")
        names = [str(names[k]) for k in sorted(names, key=int)]
    root = Path(data.get("path") or ".")
    if not root.is_absolute():
        root = (path.parent / root).resolve()

    def folders(value: Any) -> list[Path]:
        if value is None:
            return []
        items = value if isinstance(value, list) else [value]
        return [p if p.is_absolute() else root / p for p in (Path(str(v)) for v in items)]

    train = folders(data.get("train"))
    val = folders(data.get("val"))
    return [str(n) for n in names], train, (val[0] if val else None)
