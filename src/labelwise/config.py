"""`labelwise.yaml` <-> a validated, typed configuration (pydantic v2 models).

The YAML file is what a person reads and edits; `WorkspaceConfig` is what the code uses. The whole file is checked
when it is loaded (`load_config`, which `labelwise status` and every other command run first), not when a setting is
first used: a typo found only by `select`, after a full train and score, costs an hour.

What is checked:

- Unknown keys are errors in every section (a typo must not silently fall back to a default); the error suggests
  the nearest known key.
- Types are strict: YAML already types what it reads, so a quoted number (`per_round: '20'`) is text and is refused
  rather than coerced, as are `epochs: ten`, `imgsz: big` or `alpha: 'high'`. A whole number is accepted where a
  decimal one is expected (`conf: 1`), never the other way round (`epochs: 2.5`), and true/false is never a number.
- Ranges: `score.conf` in [0, 1], `train.epochs` >= 1, `imgsz` a multiple of 32 from 32, `budget.total` >= 1...
- `strategy:` and each `schedule` entry's strategy are checked against `selection.StrategyConfig` itself (its fields,
  its choices, its cross-field rules) plus the keys the loop reads (`LOOP_STRATEGY_KEYS`); `class_quotas` may name
  classes by name or id and both are checked against `classes`.
- `annotation:` is checked against the keys of the chosen backend (folder, label_studio, cvat); secrets are refused.
- `train.extra` keys must be Ultralytics train arguments (from the installed Ultralytics' default.yaml) that
  labelwise does not set itself.

Every problem found is reported at once, one line each: the file, the key as a dotted path
(`schedule[2].strategy.aggregation`), the value, and what is allowed, in a `ConfigError`.

Settings that are not plain values:

- `device`: cpu, cuda, cuda:N, N (a GPU index), several indices like "0,1", mps, or auto / null (the first GPU
  when torch sees one, else cpu). `cfg.device` is the device to use (auto resolved), `cfg.device_setting` what the
  file says.
- `threads`: CPU threads for training and scoring; null (the default) means auto: $OMP_NUM_THREADS when set, else
  the cores this process may run on. `cfg.thread_count()` gives the number.
- `score.engine`: local (the default: this process) or ray (a Ray cluster, `labelwise.engines.ray`), with the Ray
  engine's settings under `score.ray` (address, concurrency, batch_size, num_gpus, num_cpus, paths).
- `budget.val`: validation images to hold out; null (the default) means 10% of the initial batch, at least 30.
  `cfg.budget.val_size()` gives the number.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.util
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import annotated_types
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from labelwise.annotation import BACKENDS
from labelwise.detectors.ultralytics import DEFAULT_MODEL  # a constant: that module imports Ultralytics lazily
from labelwise.engines import ENGINES
from labelwise.fileio import atomic_write_text
from labelwise.neardup import DEFAULT_MAX_HAMMING
from labelwise.presets import PRESETS
from labelwise.presets import resolve as resolve_strategy
from labelwise.selection import COLD_STARTS, DIVERSITY_TERMS, RENAMED, STRATEGIES, StrategyConfig
from labelwise.stopping import DEFAULT_MIN_GAIN, RULES
from labelwise.uncertainty import AGGREGATIONS, EMPTY_POLICIES, MEASURES

CONFIG_NAME = "labelwise.yaml"

#: `stopping.rule`: a rule of `labelwise.stopping`, or none (run until the budget or the pool is spent).
STOPPING_RULES: tuple[str, ...] = (*RULES, "none")
#: Strategy keys the loop reads itself (the committee's size and epochs), beside `StrategyConfig`'s fields.
LOOP_STRATEGY_KEYS: tuple[str, ...] = ("committee_size", "committee_epochs")
#: Validation images held out by default: this share of the initial batch, and at least `VAL_MIN` images.
VAL_SHARE = 0.1
VAL_MIN = 30


class ConfigError(ValueError):
    """labelwise.yaml (or a data.yaml it points to) is not usable; the message names the file and key.

    `problems`: one line per problem (the message is these lines, joined by newlines)."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems) if problems is not None else [message]


def _rule(message: str) -> PydanticCustomError:
    """An error whose message says everything itself (a rule across keys, or one naming the keys at fault): it is
    printed as it is, without the value or the type's allowed values."""
    return PydanticCustomError("rule", "{message}", {"message": message})


def _allowed(text: str) -> dict[str, str]:
    """A field's own wording of what it allows, for error messages (instead of one derived from its type)."""
    return {"allowed": text}


class _Section(BaseModel):
    # strict: YAML types its values already; '20' in quotes is text, and coercing it would hide the mistake.
    model_config = ConfigDict(extra="forbid", strict=True)
    #: key -> why it is refused, for keys that are refused for a reason beyond "unknown" (lower case).
    _refused: ClassVar[dict[str, str]] = {}


# -- train / score / budget / stopping -------------------------------------------------------------------------------

#: Ultralytics train arguments labelwise sets itself: `train.extra` must not set them (-> where to set them instead).
_OWN_TRAIN_ARGS = {
    "data": "labelwise writes each round's dataset", "project": "labelwise chooses each round's folder",
    "name": "labelwise chooses each round's folder", "exist_ok": "labelwise chooses each round's folder",
    "model": "set `model:`", "epochs": "set `train.epochs`", "batch": "set `train.batch`",
    "patience": "set `train.patience`", "nbs": "set `train.nbs`", "warmup_epochs": "set `train.warmup_epochs`",
    "imgsz": "set `imgsz:`", "device": "set `device:`", "seed": "set `seed:`", "mode": "labelwise trains",
}


@functools.lru_cache(maxsize=1)
def ultralytics_train_args() -> frozenset[str] | None:
    """The argument names of the installed Ultralytics (its cfg/default.yaml), None when it is not installed.
    Read as a file: importing Ultralytics to check a config would take seconds."""
    try:
        spec = importlib.util.find_spec("ultralytics")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "cfg" / "default.yaml"
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict):
            return frozenset(str(k) for k in data)
    return None


class TrainSettings(_Section):
    epochs: int = Field(10, ge=1)
    batch: int = Field(16, json_schema_extra=_allowed("a whole number >= 1, or -1 (Ultralytics AutoBatch, GPU only)"))
    patience: int = Field(100, ge=0)  # Ultralytics early stopping: epochs without improvement; 0 never stops early
    # Small labeled sets: the default nbs=64 accumulates 4 batches, giving a 200-image set ~3 optimiser steps an epoch.
    nbs: int = Field(16, ge=1)
    warmup_epochs: float = Field(1.0, ge=0)
    extra: dict[str, Any] = Field(  # any other Ultralytics train argument
        default_factory=dict,
        json_schema_extra=_allowed("a mapping of Ultralytics train arguments (e.g. freeze: 10) that labelwise does "
                                   "not set itself"))

    @field_validator("batch")
    @classmethod
    def _batch(cls, value: int) -> int:
        if value == -1 or value >= 1:
            return value
        raise ValueError("is out of range")

    @field_validator("extra")
    @classmethod
    def _extra(cls, value: dict[str, Any]) -> dict[str, Any]:
        problems = [f"{key!r} is labelwise's own ({why})" for key, why in _OWN_TRAIN_ARGS.items() if key in value]
        known = ultralytics_train_args()
        if known is not None:
            for key in value:
                if key not in known and key not in _OWN_TRAIN_ARGS:
                    close = difflib.get_close_matches(key, sorted(known), 1)
                    problems.append(f"{key!r} is not an Ultralytics train argument"
                                    + (f" (did you mean {close[0]!r}?)" if close else ""))
        if problems:
            raise _rule("; ".join(problems))
        return value


#: `score.ray.address`: a Ray started for this process (null or local), the cluster this machine has joined (auto),
#: a Ray Client address (ray://host:10001) or a head's GCS address (host:6379).
_RAY_ADDRESS = re.compile(r"^(auto|local|ray://[^\s/]+|[^\s/:]+:\d+)$")


def _ray_address(value: str | None) -> str | None:
    if value is not None and not _RAY_ADDRESS.match(value):
        raise ValueError("is not a Ray address")
    return value


def _path_map(value: dict[str, str]) -> dict[str, str]:
    for local, remote in value.items():
        if not local.startswith("/"):
            raise _rule(f"{local!r} is not an absolute path (the pool's folder, as labelwise status shows paths)")
        if "://" not in remote and not remote.startswith("/"):
            raise _rule(f"{local!r} maps to {remote!r}: give a URL (s3://bucket/prefix) or an absolute path")
    return value


class RaySettings(_Section):
    """`score.ray`: the Ray engine's cluster and actors (see `labelwise.engines.ray`)."""

    address: Annotated[str | None, AfterValidator(_ray_address)] = Field(None, json_schema_extra=_allowed(
        "null or local (a Ray started for this run on this machine), auto (the cluster this machine has joined), "
        "ray://HOST:10001 (Ray Client) or HOST:6379 (the head's address)"))
    # scoring actors, each holding the scorer once (null: one per GPU of the cluster, else one per num_cpus CPUs
    # with one CPU left for decoding)
    concurrency: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)  # images per forward pass in an actor (null: score.batch)
    num_gpus: float | None = Field(None, ge=0)  # GPUs per actor (null: 1 where the cluster has GPUs, else 0)
    num_cpus: float = Field(1.0, gt=0)  # CPUs each actor reserves; its torch threads when `threads` is null
    # where the cluster reads the pool's images: a folder as the workspace knows it -> the same files elsewhere, a URL
    # of any filesystem pyarrow or fsspec reads ({/data/fleet: "s3://my-bucket/fleet"}) or another mount point
    paths: Annotated[dict[str, str], AfterValidator(_path_map)] = Field(
        default_factory=dict, json_schema_extra=_allowed(
            "a mapping of a folder of the pool (an absolute path) to where the cluster reads it (a URL such as "
            "s3://bucket/prefix, or an absolute path)"))


class ScoreSettings(_Section):
    conf: float = Field(0.05, ge=0, le=1)  # low on purpose: uncertain boxes are exactly the ones selection needs
    iou: float = Field(0.6, ge=0, le=1)
    batch: int = Field(8, ge=1)
    max_det: int = Field(100, ge=1)
    engine: Literal[ENGINES] = "local"  # type: ignore[valid-type]  # local: this process; ray: a Ray cluster
    ray: RaySettings = Field(default_factory=RaySettings)

    @field_validator("ray", mode="before")
    @classmethod
    def _ray_empty(cls, value: Any) -> Any:
        return {} if value is None else value  # `ray:` with nothing under it: the defaults


class Budget(_Section):
    per_round: int = Field(50, ge=1)
    # size of the random seed batch when nothing is labeled yet (0: per_round)
    initial: int = Field(0, ge=0, json_schema_extra=_allowed("a whole number >= 0 (0: the same as per_round)"))
    total: int | None = Field(None, ge=1)  # stop when this many pool images are labeled (null: no limit)
    # validation images to hold out (null: 10% of the initial batch, at least 30); see `val_size`
    val: int | None = Field(None, ge=1)

    def val_size(self) -> int:
        """Validation images to hold out: `val` when set, else 10% of the initial batch (`initial`, or `per_round`
        when that is 0), rounded up, and at least 30."""
        if self.val is not None:
            return self.val
        return max(VAL_MIN, math.ceil(VAL_SHARE * (self.initial or self.per_round)))


class QaSettings(_Section):
    """`qa:`: label QA of every batch that comes back (labelwise.workflow.qa: ObjectLab, via cleanlab, on the
    predictions cached by scoring; no inference)."""

    enabled: bool = True  # rank each returned batch's images by how likely their label holds an error
    # the suspects: the images cleanlab flags (null), or those whose label quality score is at most this
    threshold: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=1)  # at most this many suspects per batch, the worst first (null: no cap)
    # keep suspects out of training until a person confirms them (labelwise qa confirm) or their label changes
    hold_suspects: bool = False


class StoppingSettings(_Section):
    rule: Literal[STOPPING_RULES] = "min_gain"  # type: ignore[valid-type]
    min_map_gain: float = Field(DEFAULT_MIN_GAIN, ge=0, le=1)
    patience: int = Field(2, ge=1)  # rounds in a row the rule must say stop
    max_rounds: int | None = Field(None, ge=1)


class MonitorSettings(_Section):
    """`monitor:`: which production images `labelwise monitor` flags into the pool (labelwise.workflow.monitoring)."""

    # flag an image whose uncertainty, or whose distance to the nearest labeled image, is above this quantile of
    # what the model shows on its own validation images (0.95: each rule flags one in twenty images like those, the
    # rules together about one in ten)
    quantile: float = Field(0.95, gt=0, lt=1)
    rare_share: float = Field(0.05, ge=0, le=1)  # a class is rare below this share of the labeled boxes
    # a box counts as a detection (rare classes, drift) from this confidence; null: score.conf
    conf: float | None = Field(None, ge=0, le=1)
    daily_cap: int | None = Field(100, ge=1)  # images flagged into the pool per day at most (null: no cap)
    # a flagged image within this Hamming distance (labelwise.neardup) of a workspace image is a near duplicate and
    # stays out (null: off)
    dedup_hamming: int | None = Field(DEFAULT_MAX_HAMMING, ge=0, le=64)


# -- strategy ---------------------------------------------------------------------------------------------------------

#: Types and ranges of `StrategyConfig`'s fields, as labelwise.yaml may write them. A field of `StrategyConfig`
#: missing here is still accepted, checked against its own type; `StrategyConfig` itself then checks the whole.
_STRATEGY_FIELDS: dict[str, tuple[Any, dict[str, Any]]] = {
    "name": (Literal[STRATEGIES], {}),
    "uncertainty": (Literal[MEASURES], {}),
    "aggregation": (Literal[AGGREGATIONS], {}),
    "top_n": (int, {"ge": 1}),
    "box_threshold": (float, {"ge": 0, "le": 1}),
    "empty_policy": (Literal[EMPTY_POLICIES], {}),
    "empty_value": (float, {"ge": 0}),
    "min_evidence": (float, {"ge": 0, "le": 1}),
    "cold_start": (Literal[COLD_STARTS], {}),
    "alpha": (float, {"ge": 0}),
    "beta": (float, {"ge": 0}),
    "diversity": (Literal[DIVERSITY_TERMS], {}),
    "n_clusters": (int, {"ge": 1}),
    "candidate_factor": (int, {"ge": 1}),
    "dedup_threshold": (float | None, {"ge": -1, "le": 1}),
    "dedup_hamming": (int | None, {"ge": 0, "le": 64}),
    "rare_class_weight": (bool, {}),
    "class_quotas": (dict[Any, Any], {"json_schema_extra": _allowed(
        "a mapping of class (name or id) to a minimum number of images, a whole number >= 0")}),
}
#: `StrategyConfig` fields labelwise.yaml must not set (-> why).
_STRATEGY_REFUSED = {
    "seed": "the selection's seed is the workspace's `seed` plus the round number; set `seed:` at the top level",
}
_LOOP_FIELDS: dict[str, tuple[Any, dict[str, Any]]] = {
    "committee_size": (int, {"ge": 2}),  # committee members (default 3)
    "committee_epochs": (int, {"ge": 1}),  # epochs per member (default: a third of train.epochs, at least 1)
}


class _StrategyBase(_Section):
    """Checks shared by every strategy mapping; the fields come from `StrategyConfig` (see `StrategySettings`)."""

    _refused: ClassVar[dict[str, str]] = _STRATEGY_REFUSED

    @field_validator("name", "uncertainty", mode="before", check_fields=False)
    @classmethod
    def _renamed(cls, value: Any) -> Any:
        if isinstance(value, str) and value in RENAMED:
            raise ValueError(
                f"no longer exists: it normalised YOLO's independent sigmoid scores to sum to 1, which ranks faint "
                f"clutter as most uncertain. For YOLO use 'detection_and_confusion' (or 'detection_entropy', "
                f"'class_confusion'); for a detector whose class scores are a softmax, '{RENAMED[value]}'")
        return value

    @field_validator("class_quotas", check_fields=False)
    @classmethod
    def _quotas(cls, value: dict[Any, Any], info: ValidationInfo) -> dict[Any, Any]:
        classes = (info.context or {}).get("classes")
        problems = []
        for key, minimum in value.items():
            if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 0:
                problems.append(f"class {key!r} has minimum {minimum!r}, not a whole number >= 0")
            if classes is None:
                continue
            if isinstance(key, str) and key in classes:
                continue
            try:
                c = key if isinstance(key, int) and not isinstance(key, bool) else int(str(key))
            except ValueError:
                problems.append(f"{key!r} is neither a class ({', '.join(classes)}) nor a class id")
                continue
            if not 0 <= c < len(classes):
                problems.append(f"class id {c} is out of range (ids are 0..{len(classes) - 1})")
        if problems:
            raise _rule("; ".join(problems))
        return value

    @model_validator(mode="after")
    def _as_selection_sees_it(self) -> "_StrategyBase":
        """`StrategyConfig` has the last word (its cross-field rules, e.g. alpha and beta not both 0)."""
        given = {k: getattr(self, k) for k in self.model_fields_set if k not in (*LOOP_STRATEGY_KEYS, "class_quotas")}
        try:
            StrategyConfig(**given)
        except (TypeError, ValueError) as exc:
            raise _rule(str(exc).removeprefix("strategy config: ")) from None
        return self


def _strategy_fields() -> dict[str, Any]:
    hints = typing.get_type_hints(StrategyConfig)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(StrategyConfig):
        if f.name in _STRATEGY_REFUSED:
            continue
        annotation, constraints = _STRATEGY_FIELDS.get(f.name, (hints[f.name], {}))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        fields[f.name] = (annotation, Field(default, **constraints))
    for name, (annotation, constraints) in _LOOP_FIELDS.items():
        fields[name] = (annotation, Field(None, **constraints))
    return fields


#: One strategy mapping (`strategy:` or a schedule entry's): `StrategyConfig`'s fields plus `LOOP_STRATEGY_KEYS`.
StrategySettings = create_model("StrategySettings", __base__=_StrategyBase, **_strategy_fields())


def _strategy_input(value: Any) -> Any:
    # `strategy: hybrid` is `{name: hybrid}`; `strategy: default` is the preset's whole mapping
    return resolve_strategy(value) if isinstance(value, str) else value


def _strategy_mapping(settings: BaseModel) -> dict[str, Any]:
    # the keys the file gave, checked: the code reads a plain mapping, and defaults stay `StrategyConfig`'s
    return settings.model_dump(exclude_unset=True)


StrategyMapping = Annotated[
    StrategySettings,  # type: ignore[valid-type]
    BeforeValidator(_strategy_input),
    AfterValidator(_strategy_mapping),
    PlainSerializer(lambda value: dict(value), return_type=dict),
]

_STRATEGY_ALLOWED = (f"a strategy name, a preset ({', '.join(PRESETS)}) or a mapping of strategy settings "
                     "(name, uncertainty, aggregation, ...)")
_ROUNDS = re.compile(r"^\s*(\d+)\s*(?:(-)\s*(\d*)\s*)?$")
_ROUNDS_ALLOWED = "'N' (one round), 'N-M' (rounds N to M, 1 <= N <= M) or 'N-' (round N on)"


def _parse_rounds(value: Any) -> tuple[int, int | None]:
    """'1-3' -> (1, 3); '4-' -> (4, None); '5' or 5 -> (5, 5)."""
    if isinstance(value, tuple) and len(value) == 2:  # already parsed (a model built in code)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError("is not a round range")
    m = _ROUNDS.match(str(value))
    if not m:
        raise ValueError("is not a round range")
    first = int(m.group(1))
    last = None if m.group(2) and not m.group(3) else int(m.group(3) or first)
    if first < 1:
        raise ValueError("starts before round 1")
    if last is not None and last < first:
        raise ValueError("ends before it starts")
    return first, last


def _format_rounds(rounds: tuple[int, int | None]) -> str:
    first, last = rounds
    return f"{first}-" if last is None else (str(first) if first == last else f"{first}-{last}")


class ScheduleEntry(_Section):
    rounds: Annotated[
        tuple[int, int | None], BeforeValidator(_parse_rounds), PlainSerializer(_format_rounds, return_type=str),
    ] = Field(json_schema_extra=_allowed(_ROUNDS_ALLOWED))
    strategy: StrategyMapping = Field(json_schema_extra=_allowed(_STRATEGY_ALLOWED))

    @property
    def first_round(self) -> int:
        return self.rounds[0]

    @property
    def last_round(self) -> int | None:
        return self.rounds[1]


# -- annotation -------------------------------------------------------------------------------------------------------

def _http_url(value: str | None) -> str | None:
    if value is not None and not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("is not an http(s) URL")
    return value


class FolderAnnotation(_Section):
    backend: Literal["folder"] = "folder"
    path: str | None = None  # where batches are staged (default <workspace>/annotation)


class LabelStudioAnnotation(_Section):
    _refused: ClassVar[dict[str, str]] = {
        k: "must not be in labelwise.yaml: the token is read from $LABEL_STUDIO_API_KEY only (remove it, and rotate "
           "the token if the file was shared)" for k in ("api_key", "token", "api_token", "key", "password")}
    backend: Literal["label_studio"]
    url: Annotated[str | None, AfterValidator(_http_url)] = Field(
        None, json_schema_extra=_allowed("an http(s) URL (default http://127.0.0.1:8080)"))
    document_root: str | None = None  # default $LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT
    project_title: str | None = None
    project_id: int | None = Field(None, ge=1)
    webhook_port: int | None = Field(None, ge=1, le=65535)
    timeout_s: float = Field(30.0, gt=0)
    chunk_size: int = Field(250, ge=1)
    check_hashes: bool = True


class CvatAnnotation(_Section):
    _refused: ClassVar[dict[str, str]] = {
        k: "must not be in labelwise.yaml: set CVAT_USERNAME/CVAT_PASSWORD or CVAT_ACCESS_TOKEN in the environment"
        for k in ("password", "token", "api_key", "access_token")}
    backend: Literal["cvat"]
    url: Annotated[str | None, AfterValidator(_http_url)] = Field(
        None, json_schema_extra=_allowed("an http(s) URL of a CVAT server, or null (exchange files instead)"))
    project_id: int | None = Field(None, ge=1)
    outbox: str | None = None  # default <workspace>/cvat/outbox
    inbox: str | None = None  # default <workspace>/cvat/inbox
    include_images: bool = True
    check_hashes: bool = True


_ANNOTATION_MODELS: tuple[type[_Section], ...] = (FolderAnnotation, LabelStudioAnnotation, CvatAnnotation)


def _annotation_input(value: Any) -> Any:
    if isinstance(value, str):
        return {"backend": value}
    if isinstance(value, dict) and "backend" not in value:
        return {"backend": "folder", **value}
    return value


def _annotation_mapping(settings: BaseModel) -> dict[str, Any]:
    return {"backend": settings.backend, **settings.model_dump(exclude_unset=True)}


AnnotationMapping = Annotated[
    Union[FolderAnnotation, LabelStudioAnnotation, CvatAnnotation],
    Field(discriminator="backend"),
    BeforeValidator(_annotation_input),
    AfterValidator(_annotation_mapping),
    PlainSerializer(lambda value: dict(value), return_type=dict),
]


# -- the workspace ----------------------------------------------------------------------------------------------------

_DEVICE = re.compile(r"^(cpu|mps|cuda|auto|cuda:\d+|\d+(,\d+)*)$")
_DEVICE_ALLOWED = ("cpu, cuda, cuda:N, a GPU index N, several like '0,1', mps, or auto / null (the first GPU when "
                   "there is one, else cpu)")


def _device(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str):
        text = re.sub(r"\s+", "", value.lower())
        if _DEVICE.match(text):
            return text
    raise ValueError("is not a device")


@functools.lru_cache(maxsize=1)
def _auto_device() -> str:
    try:
        import torch
    except ImportError:
        return "cpu"
    return "0" if torch.cuda.is_available() else "cpu"


def _nonblank(names: list[str]) -> list[str]:
    blank = [i for i, n in enumerate(names) if not n.strip()]
    if blank:
        raise ValueError(f"has an empty name at position {blank[0]}")
    return names


class WorkspaceConfig(_Section):
    _refused: ClassVar[dict[str, str]] = {
        "scoring": "the scoring settings are under `score:` (score.engine: local or ray, and score.ray for the "
                   "Ray engine's address, concurrency, batch_size, num_gpus, num_cpus and paths)"}
    classes: Annotated[list[str], AfterValidator(_nonblank)] = Field(
        min_length=1, json_schema_extra=_allowed("a non-empty list of distinct class names, in id order"))
    images: Annotated[list[str], AfterValidator(_nonblank)] = Field(
        min_length=1, json_schema_extra=_allowed("a non-empty list of image files or folders"))
    labeled: list[str] = Field(default_factory=list)
    val: str | None = None  # a folder of validation images with YOLO labels beside them (images/ -> labels/)
    val_fraction: float = Field(0.2, ge=0, lt=1)  # without `val`: this share of labeled images is held out, by hash
    model: str = Field(DEFAULT_MODEL, min_length=1,
                       json_schema_extra=_allowed("a checkpoint (.pt), a model YAML or a model name"))
    imgsz: int = Field(320, ge=32, multiple_of=32)
    device_setting: Annotated[str | None, BeforeValidator(_device)] = Field(
        "cpu", alias="device", json_schema_extra=_allowed(_DEVICE_ALLOWED))
    seed: int = Field(0, ge=0)
    threads: int | None = Field(None, ge=1)  # null: $OMP_NUM_THREADS, else the usable cores (`thread_count`)
    train: TrainSettings = Field(default_factory=TrainSettings)
    score: ScoreSettings = Field(default_factory=ScoreSettings)
    strategy: StrategyMapping = Field(default_factory=lambda: resolve_strategy("default"),
                                      json_schema_extra=_allowed(_STRATEGY_ALLOWED))
    schedule: list[ScheduleEntry] = Field(default_factory=list)
    budget: Budget = Field(default_factory=Budget)
    annotation: AnnotationMapping = Field(default_factory=lambda: {"backend": "folder"})
    stopping: StoppingSettings = Field(default_factory=StoppingSettings)
    qa: QaSettings = Field(default_factory=QaSettings)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        # `train:` with nothing under it is YAML's null: the section's defaults, as if it were left out
        if isinstance(data, dict):
            optional = ("labeled", "train", "score", "strategy", "schedule", "budget", "annotation", "stopping",
                        "monitor")
            data = {k: v for k, v in data.items() if not (k in optional and v is None)}
        return data

    @field_validator("qa", mode="before")
    @classmethod
    def _qa_empty(cls, value: Any) -> Any:
        return {} if value is None else value  # `qa:` with nothing under it: the defaults

    @field_validator("classes")
    @classmethod
    def _distinct(cls, names: list[str]) -> list[str]:
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"repeats {', '.join(map(repr, repeated))}")
        return names

    @field_validator("schedule")
    @classmethod
    def _no_overlap(cls, entries: list[ScheduleEntry]) -> list[ScheduleEntry]:
        for j, b in enumerate(entries):
            for i, a in enumerate(entries[:j]):
                if (a.last_round is None or b.first_round <= a.last_round) and (
                        b.last_round is None or a.first_round <= b.last_round):
                    raise _rule(
                        f"entries {i} (rounds '{_format_rounds(a.rounds)}') and {j} (rounds "
                        f"'{_format_rounds(b.rounds)}') both cover round {max(a.first_round, b.first_round)}; "
                        "each round may have one strategy")
        return entries

    # -- what the code reads ------------------------------------------------------------------------------------

    @property
    def device(self) -> str:
        """The device to train and score on: the setting, with auto / null resolved ("0" with a GPU, else cpu)."""
        setting = self.device_setting
        return _auto_device() if setting in (None, "auto") else setting

    @device.setter
    def device(self, value: Any) -> None:
        self.device_setting = _device(value)

    def thread_count(self) -> int:
        """CPU threads to use: `threads`, or when that is null $OMP_NUM_THREADS, else the usable cores."""
        from labelwise.cores import resolve_threads

        return resolve_threads(self.threads)

    def strategy_for_round(self, round_no: int) -> dict[str, Any]:
        """The strategy of the schedule entry covering `round_no`, else the default `strategy`."""
        for entry in self.schedule:
            if entry.first_round <= round_no and (entry.last_round is None or round_no <= entry.last_round):
                return dict(entry.strategy)
        return dict(self.strategy)

    def to_dict(self) -> dict[str, Any]:
        """The settings as labelwise.yaml writes them. Nulls are kept: they mean something (`total: null` no limit,
        `dedup_threshold: null` off, `threads: null` auto) and show the setting exists."""
        return self.model_dump(mode="json", by_alias=True)


# -- errors in the user's words ----------------------------------------------------------------------------------------

def _show(value: Any) -> str:
    """A value as the YAML file would write it (text quoted), cut short."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float, str)):
        text = repr(value)
    else:
        try:
            text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
        except yaml.YAMLError:
            text = repr(value)
        if text.endswith("\n..."):
            text = text[:-4]
    return text if len(text) <= 80 else text[:77] + "..."


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number with a fraction" if not value.is_integer() else "a decimal number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _unwrap(annotation: Any) -> tuple[Any, list[Any], bool]:
    """(the bare type, the Annotated metadata on the way, whether null is allowed)."""
    metadata: list[Any] = []
    optional = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            metadata.extend(annotation.__metadata__)
            annotation = typing.get_args(annotation)[0]
        elif origin in (Union, types.UnionType) and type(None) in typing.get_args(annotation):
            optional = True
            rest = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = rest[0] if len(rest) == 1 else Union[tuple(rest)]
        else:
            return annotation, metadata, optional


_LIMITS = {annotated_types.Ge: "ge", annotated_types.Gt: "gt", annotated_types.Le: "le", annotated_types.Lt: "lt",
           annotated_types.MultipleOf: "multiple_of", annotated_types.MinLen: "min_length"}


def _constraints(metadata: list[Any]) -> dict[str, Any]:
    """{"ge": 1, "le": 64, ...} from a field's metadata (pydantic keeps Field(ge=1) as annotated_types.Ge(1))."""
    found: dict[str, Any] = {}
    for item in metadata:
        for inner in (item.metadata if isinstance(item, FieldInfo) else [item]):
            name = _LIMITS.get(type(inner))
            if name:
                found[name] = getattr(inner, name)
    return found


def _keys(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _tag(model: Any) -> str | None:
    field = getattr(model, "model_fields", {}).get("backend")
    return typing.get_args(field.annotation)[0] if field is not None else None


def _describe(annotation: Any, metadata: list[Any]) -> str:
    """What a type with constraints allows, in words: "a whole number >= 1, or null"."""
    bare, more, optional = _unwrap(annotation)
    limits = _constraints(metadata + more)
    origin = typing.get_origin(bare)
    if origin is Literal:
        text = "one of " + ", ".join(str(a) for a in typing.get_args(bare))
    elif bare is bool:
        text = "true or false"
    elif bare is int:
        text = "a whole number"
    elif bare is float:
        text = "a number"
    elif bare is str:
        text = "text" if not limits.get("min_length") else "non-empty text"
    elif origin in (list, tuple) or bare in (list, tuple):
        text = "a list" if not limits.get("min_length") else "a non-empty list"
    elif origin is dict or bare is dict:
        text = "a mapping"
    elif isinstance(bare, type) and issubclass(bare, BaseModel):
        text = "a mapping of " + ", ".join(_keys(bare))
    elif origin in (Union, types.UnionType):
        tags = [t for t in map(_tag, typing.get_args(bare)) if t]
        text = f"a mapping with `backend:` one of {', '.join(tags)}" if tags else "one of several types"
    else:
        text = "any value"
    if bare in (int, float):
        lo = ("ge", limits["ge"]) if "ge" in limits else ("gt", limits["gt"]) if "gt" in limits else None
        hi = ("le", limits["le"]) if "le" in limits else ("lt", limits["lt"]) if "lt" in limits else None
        if lo and hi and lo[0] == "ge" and hi[0] == "le":
            text += f" from {lo[1]:g} to {hi[1]:g}"
        else:
            bounds = [f"{'>=' if lo[0] == 'ge' else '>'} {lo[1]:g}"] if lo else []
            bounds += [f"{'<=' if hi[0] == 'le' else '<'} {hi[1]:g}"] if hi else []
            text += (" " + " and ".join(bounds)) if bounds else ""
        if "multiple_of" in limits:
            text += f", a multiple of {limits['multiple_of']:g}"
    return text + (", or null" if optional else "")


@dataclasses.dataclass
class _Spot:
    """Where an error's location points in the models."""

    path: str = ""
    parent: type[BaseModel] | None = None  # the model whose key the location ends at
    key: Any = None
    annotation: Any = None
    metadata: list[Any] = dataclasses.field(default_factory=list)
    allowed: str | None = None


def _locate(loc: tuple[Any, ...]) -> _Spot:
    spot = _Spot(annotation=WorkspaceConfig)
    parts: list[str] = []
    for item in loc:
        bare, _meta, _optional = _unwrap(spot.annotation)
        origin = typing.get_origin(bare)
        if isinstance(bare, type) and issubclass(bare, BaseModel):
            parts.append(f".{item}" if parts else str(item))
            field = next((f for name, f in bare.model_fields.items() if item in (name, f.alias)), None)
            spot.parent, spot.key = bare, item
            if field is None:
                spot.annotation, spot.metadata, spot.allowed = None, [], None
                continue
            spot.annotation, spot.metadata = field.annotation, list(field.metadata)
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            spot.allowed = typing.cast(str | None, extra.get("allowed"))
        elif origin in (Union, types.UnionType):
            members = {_tag(m): m for m in typing.get_args(bare)}
            if item in members:  # a discriminated union's tag: not a key of the file
                spot.annotation, spot.metadata = members[item], []
        elif origin in (list, tuple) or bare in (list, tuple):
            parts.append(f"[{item}]")
            args = typing.get_args(bare)
            spot.annotation, spot.metadata = (args[0] if args else Any), []
        elif origin is dict or bare is dict:
            if item == "[key]":
                parts.append(" (the key)")
            else:
                parts.append(f".{item}")
                args = typing.get_args(bare)
                spot.annotation, spot.metadata = (args[1] if args else Any), []
        else:
            parts.append(f"[{item}]" if isinstance(item, int) else f".{item}")
    spot.path = "".join(parts)
    return spot


def _in_a_section(spot: _Spot) -> list[str]:
    """An unknown key that is a key of one of the model's sections (`epochs:` at the top for `train.epochs`)."""
    if spot.parent is None:
        return []
    for name, field in spot.parent.model_fields.items():
        section, _meta, _optional = _unwrap(field.annotation)
        if isinstance(section, type) and issubclass(section, BaseModel) and spot.key in section.model_fields:
            return [f"{spot.path.rsplit('.', 1)[0] + '.' if '.' in spot.path else ''}{field.alias or name}.{spot.key}"]
    return []


_TYPE_ERRORS = ("_type", "_parsing")
_RANGE_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "multiple_of")


def _problem(error: dict[str, Any]) -> str:
    """One line for one pydantic error: the key, the value, what is wrong, what is allowed."""
    kind = error["type"]
    value = error.get("input")
    spot = _locate(tuple(error["loc"]))
    path = spot.path
    allowed = spot.allowed or (_describe(spot.annotation, spot.metadata) if spot.annotation is not None else None)
    if kind == "extra_forbidden":
        refused = getattr(spot.parent, "_refused", {}).get(str(spot.key).lower()) if spot.parent else None
        if refused:
            return f"{path}: {refused}"
        known = _keys(spot.parent) if spot.parent else []
        close = difflib.get_close_matches(str(spot.key), known, 1) or _in_a_section(spot)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return f"{path}: unknown key, set to {_show(value)}{hint}; allowed keys: {', '.join(known)}"
    if kind == "union_tag_invalid":
        ctx = error.get("ctx") or {}
        key = str(ctx.get("discriminator", "backend")).strip("'")
        return f"{path}.{key}: {_show(ctx.get('tag'))} is not a backend; allowed: one of {', '.join(BACKENDS)}"
    if kind == "rule":
        return f"{path}: {(error.get('ctx') or {}).get('message', error.get('msg'))}"
    if kind == "missing":
        problem = "required but missing"
    elif kind == "literal_error":
        problem = f"{_show(value)} is not one of the choices"
    elif kind.endswith(_TYPE_ERRORS):
        problem = f"{_show(value)} is {_kind(value)}"
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*", value):
            problem += f" (quotes make it text: write {value.strip()} without them)"
        elif kind == "int_type" and isinstance(value, float):
            problem = f"{_show(value)} is not a whole number"
    elif kind in _RANGE_ERRORS:
        problem = f"{_show(value)} is out of range"
    elif kind == "too_short":
        problem = f"{_show(value)} is empty"
    elif kind == "value_error":
        problem = f"{_show(value)} {str(error.get('msg', '')).removeprefix('Value error, ')}"
    else:
        problem = f"{_show(value)}: {error.get('msg', kind)}"
    if not path:
        return f"{problem}" + (f"; allowed: {allowed}" if allowed else "")
    return f"{path}: {problem}" + (f"; allowed: {allowed}" if allowed else "")


def problems(exc: ValidationError) -> list[str]:
    """Every problem of a failed validation of `WorkspaceConfig`, one line each (without the file)."""
    return [_problem(e) for e in exc.errors(include_url=False)]


# -- reading and writing -----------------------------------------------------------------------------------------------

def config_from_dict(data: Any, where: str = CONFIG_NAME) -> WorkspaceConfig:
    """Check every setting of a labelwise.yaml mapping; ConfigError lists every problem, one line each."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the file must hold a mapping of settings (key: value lines), not "
                          f"{_kind(data)}")
    classes = data.get("classes")
    context = {"classes": classes if isinstance(classes, list) and all(isinstance(c, str) for c in classes)
               else None}
    try:
        return WorkspaceConfig.model_validate(data, context=context)
    except ValidationError as exc:
        lines = [f"{where}: {line}" for line in problems(exc)]
        raise ConfigError("\n".join(lines), lines) from None


def load_config(workspace: Path) -> WorkspaceConfig:
    path = Path(workspace) / CONFIG_NAME
    if not path.exists():
        raise ConfigError(f"{path} not found: is {workspace} a labelwise workspace? Create one with `labelwise init`.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return config_from_dict(data, str(path))


def _header() -> str:
    def wrap(label: str, names: tuple[str, ...] | list[str]) -> str:
        lines, line = [], f"# {label}:"
        for n in names:
            if len(line) + len(n) + 2 > 118:
                lines.append(line + ",")
                line = "#  "
            line += ("" if line.endswith(":") or line == "#  " else ",") + " " + n
        return "\n".join(lines + [line]) + "\n"

    return ("# labelwise workspace settings. Edit freely; `labelwise status` checks them all.\n"
            + wrap("strategy names", STRATEGIES) + wrap("strategy presets (strategy: NAME)", list(PRESETS))
            + wrap("annotation backends", BACKENDS) + wrap("stopping rules", STOPPING_RULES)
            + "# device: cpu, cuda, cuda:N, a GPU index N, several like '0,1', mps, or auto / null (a GPU if any).\n"
            "# threads: null = $OMP_NUM_THREADS when set, else every usable core. budget.val: null = 10% of the\n"
            "#   initial batch, at least 30 images.\n"
            "# score.engine: local (this process) or ray (a Ray cluster: score.ray.address, pip install "
            "'labelwise[ray]').\n")


def save_config(workspace: Path, config: WorkspaceConfig) -> None:
    """Write labelwise.yaml atomically. The settings are checked first: a file that would not load is not written
    (ConfigError, as for loading)."""
    path = Path(workspace) / CONFIG_NAME
    data = config.to_dict()
    config_from_dict(data, f"{path} (not saved)")
    text = _header() + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    atomic_write_text(path, text)


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
