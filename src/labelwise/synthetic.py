"""Built-in synthetic scenario dataset: small YOLO-format scenes that reproduce what active learning is for.

Deterministic from a seed (same spec -> byte-identical files with the same NumPy/Pillow/zlib), pure NumPy + Pillow,
about 170 images of 128 px per second on one core (500 images in about 3 s).

What it makes
-------------
* Most images are easy **daylight** scenes: a bright, low-saturation background with a gradient and a soft texture,
  and a few (1-4, sometimes none) well separated, saturated objects. A good share of them come as near-duplicate
  **bursts**, like consecutive video frames: the same scene, each object drifting by about a pixel per frame, a
  tiny camera shift and fresh sensor noise.
* A minority are **hard**: ``night`` (the same kind of scene, dimmed to about a quarter, blue-tinted, blurred and noisy),
  ``occluded`` (objects partly covered, 30-55%, by textured neutral patches, plus free distractor patches) and
  ``crowded`` (8-14 small objects in one or two clusters that overlap each other).
* Six classes, told apart by shape and colour. The two rare classes (ring, diamond) make up ``rare_fraction`` of the
  objects each (counted over every image, burst frames included, so the share is what an annotator would meet).
* Boxes are the full extent of an object, also where it is partly covered (as annotators draw them).

Layout (Ultralytics-ready)::

    ROOT/train/images/img_000000.png   ROOT/train/labels/img_000000.txt   (the pool; its labels are the oracle)
    ROOT/val/images/...                ROOT/val/labels/...                (fixed validation split, never pooled)
    ROOT/data.yaml       path (absolute), train, val, names {id: name}
    ROOT/scenarios.csv   file, split, scenario, burst_id, hard, rare, n_objects, classes
    ROOT/spec.json       the spec and generator version; written last, it marks the dataset complete

Image order is shuffled, so file names say nothing about scenario or burst and the first N files are a fair sample.
The validation split has the same scenario mix and rare share as the pool but no bursts: every validation image is an
independent scene, so a small split still measures something.

Generation writes into a hidden sibling directory and renames it into place, so a killed run leaves no half-made
dataset at ``root``; :func:`generate` returns at once when ``root`` already holds a complete dataset of the same spec.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from labelwise.fileio import pid_alive

__all__ = [
    "CLASS_NAMES",
    "COMMON_CLASSES",
    "GENERATOR_VERSION",
    "HARD_SCENARIOS",
    "RARE_CLASSES",
    "SCENARIOS",
    "ScenarioSpec",
    "generate",
    "is_complete",
    "read_scenarios",
]

#: Bumped whenever the drawing changes, so that a dataset made by an older generator is regenerated.
GENERATOR_VERSION = 1

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "diamond")
RARE_CLASSES: tuple[int, ...] = (4, 5)
COMMON_CLASSES: tuple[int, ...] = tuple(c for c in range(len(CLASS_NAMES)) if c not in RARE_CLASSES)
SCENARIOS: tuple[str, ...] = ("daylight", "night", "occluded", "crowded")
HARD_SCENARIOS: tuple[str, ...] = ("night", "occluded", "crowded")

# Saturated base colours (RGB), one per class; each object jitters around its class colour.
_CLASS_RGB = np.array(
    [
        (215, 45, 40),  # circle: red
        (40, 75, 215),  # square: blue
        (35, 165, 60),  # triangle: green
        (235, 185, 25),  # cross: amber
        (195, 45, 195),  # ring: magenta
        (25, 190, 205),  # diamond: cyan
    ],
    dtype=np.float32,
)

CSV_COLUMNS = ("file", "split", "scenario", "burst_id", "hard", "rare", "n_objects", "classes")


@dataclass(frozen=True)
class ScenarioSpec:
    """Everything that decides the dataset; the same spec always gives byte-identical files.

    ``hard_fraction``: share of images (train and val alike) that are night, occluded or crowded, split between them
    by ``hard_mix`` (weights for night, occluded, crowded). ``burst_fraction``: share of *train* images that are frames
    of a daylight burst of ``burst_length`` (min, max) frames. ``rare_fraction``: share of objects of EACH rare class.
    ``empty_fraction``: share of single daylight images that hold no object at all (an empty label file).
    """

    n_train: int = 400
    n_val: int = 100
    image_size: int = 128
    hard_fraction: float = 0.2
    burst_fraction: float = 0.4
    rare_fraction: float = 0.03
    seed: int = 0
    hard_mix: tuple[float, float, float] = (1.0, 1.0, 1.0)
    burst_length: tuple[int, int] = (3, 8)
    empty_fraction: float = 0.05

    def __post_init__(self) -> None:
        if self.n_train < 1 or self.n_val < 0:
            raise ValueError("n_train must be >= 1 and n_val >= 0")
        if not 32 <= self.image_size <= 2048:
            raise ValueError("image_size must be between 32 and 2048 pixels")
        for name in ("hard_fraction", "burst_fraction", "empty_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if not 0.0 <= self.rare_fraction * len(RARE_CLASSES) < 1.0:
            raise ValueError("rare_fraction must be >= 0 and leave room for the common classes")
        if self.hard_fraction + self.burst_fraction > 1.0 + 1e-9:
            raise ValueError("hard_fraction + burst_fraction must not exceed 1 (bursts are daylight scenes)")
        if len(self.hard_mix) != 3 or min(self.hard_mix) < 0 or sum(self.hard_mix) <= 0:
            raise ValueError("hard_mix needs three non-negative weights (night, occluded, crowded) with a positive sum")
        lo, hi = self.burst_length
        if not 2 <= lo <= hi:
            raise ValueError("burst_length must be (min, max) with 2 <= min <= max")


# --------------------------------------------------------------------------------------------------------------------
# Planning: which scenes exist, their scenario, burst membership and classes (cheap, done for a whole split at once)


@dataclass
class _Scene:
    scenario: str
    n_objects: int
    frames: int  # 1 for a single image, else the burst length
    seed: int  # geometry/background seed, shared by every frame of a burst
    burst_id: int | None = None
    classes: list[int] = field(default_factory=list)


def _apportion(total: int, weights: tuple[float, ...]) -> list[int]:
    """Split `total` into integer parts proportional to `weights` (largest remainder), summing to `total` exactly."""
    w = np.asarray(weights, dtype=np.float64)
    raw = total * w / w.sum()
    parts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - parts), kind="stable")[: total - int(parts.sum())]:
        parts[i] += 1
    return [int(p) for p in parts]


def _burst_lengths(n_frames: int, lo: int, hi: int, rng: np.random.Generator) -> list[int]:
    """Burst lengths in [lo, hi] whose sum is `n_frames` or, when no such split exists, as close below it as possible
    (the caller turns what is left into single images)."""
    lengths: list[int] = []
    left = n_frames
    while left >= lo:
        n = min(int(rng.integers(lo, hi + 1)), left)
        if 0 < left - n < lo:  # the remainder would be too short for a burst of its own
            if left <= hi:
                n = left
            elif left - lo >= lo:
                n = left - lo
        lengths.append(n)
        left -= n
    for i in range(len(lengths)):  # spread a short remainder over bursts that can still grow
        grow = min(left, hi - lengths[i])
        lengths[i] += grow
        left -= grow
    return lengths


def _plan_split(n: int, spec: ScenarioSpec, split: str, ss: np.random.SeedSequence) -> list[_Scene]:
    rng = np.random.default_rng(ss)
    n_hard = round(spec.hard_fraction * n)
    n_night, n_occl, n_crowd = _apportion(n_hard, spec.hard_mix)
    n_day = n - n_hard
    burst_frames = 0 if split != "train" else min(n_day, round(spec.burst_fraction * n))
    lengths = _burst_lengths(burst_frames, *spec.burst_length, rng)
    n_single_day = n_day - sum(lengths)
    n_empty = round(spec.empty_fraction * n_single_day)

    def count(scenario: str) -> int:
        lo, hi = {"daylight": (1, 4), "night": (1, 4), "occluded": (2, 4), "crowded": (8, 14)}[scenario]
        return int(rng.integers(lo, hi + 1))

    scenes: list[_Scene] = []
    for bid, length in enumerate(lengths):
        scenes.append(_Scene("daylight", count("daylight"), length, 0, burst_id=bid))
    for i in range(n_single_day):
        scenes.append(_Scene("daylight", 0 if i < n_empty else count("daylight"), 1, 0))
    for scenario, k in (("night", n_night), ("occluded", n_occl), ("crowded", n_crowd)):
        scenes.extend(_Scene(scenario, count(scenario), 1, 0) for _ in range(k))
    for scene, child in zip(scenes, ss.spawn(len(scenes)), strict=True):
        scene.seed = int(child.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))

    # Classes: each rare class gets (as nearly as possible) rare_fraction of all objects, counting burst frames;
    # the remaining slots draw a common class uniformly.
    slots = [(s, j) for s in range(len(scenes)) for j in range(scenes[s].n_objects)]
    for s in scenes:
        s.classes = [-1] * s.n_objects
    total = sum(scenes[s].frames for s, _ in slots)
    order = rng.permutation(len(slots))
    for rare in RARE_CLASSES:
        target = round(spec.rare_fraction * total)
        got = 0
        for k in order:
            if got >= target:
                break
            s, j = slots[k]
            if scenes[s].classes[j] != -1:
                continue
            w = scenes[s].frames
            if got + w <= target:  # never overshoot: single images fill the last few
                scenes[s].classes[j] = rare
                got += w
    commons = np.asarray(COMMON_CLASSES)
    for s, j in slots:
        if scenes[s].classes[j] == -1:
            scenes[s].classes[j] = int(commons[rng.integers(len(commons))])
    return scenes


# --------------------------------------------------------------------------------------------------------------------
# Rendering


@dataclass
class _Object:
    cls: int
    x0: float  # top-left corner in pixels (frame 0)
    y0: float
    w: int
    h: int
    color: tuple[int, int, int]
    variant: int  # triangle orientation etc.
    vx: float = 0.0  # drift in pixels per burst frame
    vy: float = 0.0


def _smooth_field(rng: np.random.Generator, size: int, grid: int) -> np.ndarray:
    """A soft random field in [-1, 1] of shape (size, size): a small random grid upsampled bicubically."""
    g = rng.uniform(-1.0, 1.0, size=(grid, grid)).astype(np.float32)
    img = Image.fromarray(g, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(img, dtype=np.float32), -1.0, 1.0)


def _background(rng: np.random.Generator, size: int, margin: int) -> np.ndarray:
    """Bright, low-saturation background of shape (size + 2*margin, same, 3), float32 0..255."""
    big = size + 2 * margin
    grey = rng.uniform(150, 225)
    base = grey + rng.uniform(-28, 28, size=3)
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32) / big
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy) - 0.5
    grad = ramp[..., None] * rng.uniform(0, 40) * rng.uniform(0.6, 1.0, size=3)
    tex = _smooth_field(rng, big, int(rng.integers(4, 9)))[..., None] * rng.uniform(4, 16)
    return (base + grad + tex).astype(np.float32)


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> tuple[float, float]:
    """(IoU, intersection / area(b)) of two x0 y0 x1 y1 boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area_a + area_b - inter), inter / area_b


def _layout(scene: _Scene, rng: np.random.Generator, size: int) -> list[_Object]:
    """Object sizes, positions and colours of a scene (frame 0)."""
    crowded = scene.scenario == "crowded"
    lo, hi = (0.078, 0.125) if crowded else ((0.14, 0.28) if scene.scenario == "occluded" else (0.11, 0.28))
    gap = 0.0 if crowded else max(2.0, 0.03 * size)
    centres = [rng.uniform(0.3, 0.7, size=2) * size for _ in range(int(rng.integers(1, 3)))]
    placed: list[tuple[float, float, float, float]] = []
    objects: list[_Object] = []
    for cls in scene.classes:
        side = rng.uniform(lo, hi) * size
        for attempt in range(200):
            s = side * (0.985**attempt)  # shrink a little when it will not fit
            w = max(4, int(round(s * rng.uniform(0.87, 1.13))))
            h = max(4, int(round(s * rng.uniform(0.87, 1.13))))
            if crowded:
                c = centres[int(rng.integers(len(centres)))]
                cx, cy = rng.normal(c, 0.14 * size)
                x0, y0 = cx - w / 2, cy - h / 2
                if not (0 <= x0 and 0 <= y0 and x0 + w <= size and y0 + h <= size):
                    continue
            else:
                x0 = rng.uniform(1, size - w - 1)
                y0 = rng.uniform(1, size - h - 1)
            box = (x0, y0, x0 + w, y0 + h)
            if crowded:
                # overlap allowed, but nothing may be more than half hidden or hide half of another
                if any(max(_overlap(box, p)[1], _overlap(p, box)[1]) > 0.5 for p in placed):
                    continue
            elif any(
                not (box[2] + gap <= p[0] or p[2] + gap <= box[0] or box[3] + gap <= p[1] or p[3] + gap <= box[1])
                for p in placed
            ):
                continue
            break
        else:  # pragma: no cover - 200 shrinking tries always find room for at most 14 objects
            raise RuntimeError("could not place an object")
        placed.append(box)
        color = np.clip(_CLASS_RGB[cls] * rng.uniform(0.85, 1.1) + rng.uniform(-22, 22, size=3), 0, 255)
        objects.append(
            _Object(
                cls, x0, y0, w, h, tuple(int(v) for v in color), int(rng.integers(2)),
                vx=float(rng.uniform(-0.5, 0.5)), vy=float(rng.uniform(-0.5, 0.5)),
            )
        )
    return objects


def _draw(draw: ImageDraw.ImageDraw, o: _Object, x0: int, y0: int) -> None:
    x1, y1 = x0 + o.w - 1, y0 + o.h - 1
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    c = o.color
    if o.cls == 0:  # circle
        draw.ellipse((x0, y0, x1, y1), fill=c)
    elif o.cls == 1:  # square
        draw.rectangle((x0, y0, x1, y1), fill=c)
    elif o.cls == 2:  # triangle, pointing up or down
        pts = [(cx, y0), (x1, y1), (x0, y1)] if o.variant == 0 else [(x0, y0), (x1, y0), (cx, y1)]
        draw.polygon(pts, fill=c)
    elif o.cls == 3:  # cross
        tw, th = max(2.0, o.w * 0.34) / 2, max(2.0, o.h * 0.34) / 2
        draw.rectangle((x0, round(cy - th), x1, round(cy + th)), fill=c)
        draw.rectangle((round(cx - tw), y0, round(cx + tw), y1), fill=c)
    elif o.cls == 4:  # ring
        draw.ellipse((x0, y0, x1, y1), outline=c, width=max(2, round(min(o.w, o.h) * 0.2)))
    else:  # diamond
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=c)


def _occluder(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A textured neutral (grey/brown) patch, float32 (h, w, 3)."""
    base = rng.uniform(70, 175) + rng.uniform(-18, 18, size=3)
    noise = rng.normal(0, 10, size=(h, w, 1)).astype(np.float32)
    return np.broadcast_to(base, (h, w, 3)).astype(np.float32) + noise


def _render(scene: _Scene, frame: int, size: int) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]]]:
    """One image (uint8 HxWx3) and its labels (cls, cx, cy, w, h normalised) for frame `frame` of `scene`."""
    rng = np.random.default_rng(scene.seed)  # geometry: the same for every frame of a burst
    frng = np.random.default_rng([scene.seed, frame + 1])  # per-frame noise
    margin = 8
    bg = _background(rng, size, margin)
    objects = _layout(scene, rng, size)
    cam = rng.uniform(-0.25, 0.25, size=2) * frame  # slow camera pan
    ox = int(np.clip(round(margin + cam[0]), 0, 2 * margin))
    oy = int(np.clip(round(margin + cam[1]), 0, 2 * margin))
    arr = bg[oy : oy + size, ox : ox + size]
    arr = arr + frng.uniform(-1.5, 1.5)  # exposure flicker
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(img)
    labels: list[tuple[int, float, float, float, float]] = []
    boxes: list[tuple[int, int, int, int]] = []
    for o in objects:
        x0 = int(np.clip(round(o.x0 + o.vx * frame), 0, size - o.w))
        y0 = int(np.clip(round(o.y0 + o.vy * frame), 0, size - o.h))
        _draw(draw, o, x0, y0)
        boxes.append((x0, y0, o.w, o.h))
        labels.append((o.cls, (x0 + o.w / 2) / size, (y0 + o.h / 2) / size, o.w / size, o.h / size))
    out = np.asarray(img, dtype=np.float32)

    if scene.scenario == "occluded":
        for k, (x0, y0, w, h) in enumerate(boxes):
            if k > 0 and rng.random() < 0.25:  # the first object is always covered, most others too
                continue
            f = rng.uniform(0.3, 0.55)
            side = int(rng.integers(4))
            ext_a, ext_b = (int(rng.uniform(0, 0.3) * d) for d in ((h, h) if side < 2 else (w, w)))
            if side == 0:  # from the left
                px0, px1, py0, py1 = x0 - int(0.3 * w), x0 + int(round(f * w)), y0 - ext_a, y0 + h + ext_b
            elif side == 1:  # from the right
                px0, px1, py0, py1 = x0 + w - int(round(f * w)), x0 + w + int(0.3 * w), y0 - ext_a, y0 + h + ext_b
            elif side == 2:  # from the top
                px0, px1, py0, py1 = x0 - ext_a, x0 + w + ext_b, y0 - int(0.3 * h), y0 + int(round(f * h))
            else:  # from the bottom
                px0, px1, py0, py1 = x0 - ext_a, x0 + w + ext_b, y0 + h - int(round(f * h)), y0 + h + int(0.3 * h)
            px0, py0, px1, py1 = max(0, px0), max(0, py0), min(size, px1), min(size, py1)
            if px1 > px0 and py1 > py0:
                out[py0:py1, px0:px1] = _occluder(rng, px1 - px0, py1 - py0)
        for _ in range(int(rng.integers(0, 3))):  # free distractor patches that hide no object
            w, h = (int(rng.uniform(0.08, 0.2) * size) for _ in range(2))
            px0, py0 = int(rng.uniform(0, size - w)), int(rng.uniform(0, size - h))
            patch = (px0, py0, px0 + w, py0 + h)
            if all(_overlap(patch, (x, y, x + bw, y + bh))[1] < 0.1 for x, y, bw, bh in boxes):
                out[py0 : py0 + h, px0 : px0 + w] = _occluder(rng, w, h)

    if scene.scenario == "night":
        gain = rng.uniform(0.18, 0.32)
        tint = np.array([0.8, 0.9, 1.15], dtype=np.float32) * rng.uniform(0.9, 1.1, size=3)
        out = out * gain * tint + rng.uniform(3, 12)
        out = np.asarray(
            Image.fromarray(np.clip(out, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.7)),
            dtype=np.float32,
        )
        sigma = rng.uniform(5, 10)
    else:
        sigma = rng.uniform(2, 4)
    out = out + frng.normal(0.0, sigma, size=out.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), labels


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode="RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _label_text(labels: list[tuple[int, float, float, float, float]]) -> str:
    return "".join(f"{c} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n" for c, cx, cy, w, h in labels)


# --------------------------------------------------------------------------------------------------------------------
# Writing, completeness, idempotence


def _spec_record(spec: ScenarioSpec) -> dict:
    return json.loads(json.dumps({"generator_version": GENERATOR_VERSION, "spec": asdict(spec)}))


def _data_yaml_text(root: Path) -> str:
    import yaml

    doc = {
        "path": str(root.resolve()),
        "train": "train/images",
        "val": "val/images",
        "nc": len(CLASS_NAMES),
        "names": dict(enumerate(CLASS_NAMES)),
    }
    return yaml.safe_dump(doc, sort_keys=False)


def _label_rel(image_rel: str) -> str:
    split, _, name = image_rel.split("/", 2)
    return f"{split}/labels/{Path(name).with_suffix('.txt')}"


def is_complete(root: Path, spec: ScenarioSpec | None = None) -> bool:
    """True when `root` holds a complete dataset (of `spec`, when given) made by this generator version."""
    root = Path(root)
    try:
        record = json.loads((root / "spec.json").read_text())
    except (OSError, ValueError):
        return False
    if record.get("generator_version") != GENERATOR_VERSION:
        return False
    if spec is not None and record != _spec_record(spec):
        return False
    if not (root / "data.yaml").is_file():
        return False
    try:
        rows = read_scenarios(root)
    except (OSError, ValueError, KeyError):
        return False
    want = record["spec"]["n_train"] + record["spec"]["n_val"]
    if len(rows) != want:
        return False
    return all((root / rel).is_file() and (root / _label_rel(rel)).is_file() for rel in rows)


_OUR_ENTRIES = {"train", "val", "data.yaml", "scenarios.csv", "spec.json"}


def _clean_stale(root: Path) -> None:
    """Remove hidden work/trash siblings of `root` left by generator runs that were killed."""
    for p in root.parent.glob(f".{root.name}.*-*-*"):
        parts = p.name[len(root.name) + 2 :].split("-")
        if len(parts) >= 3 and parts[0] in ("partial", "old") and parts[1].isdigit():
            if int(parts[1]) != os.getpid() and not pid_alive(int(parts[1])):
                shutil.rmtree(p, ignore_errors=True)


def generate(root: Path, spec: ScenarioSpec = ScenarioSpec(), progress: bool = False) -> Path:
    """Generate the dataset at `root` and return the path of its data.yaml.

    Idempotent: when `root` already holds a complete dataset of the same spec and generator version, nothing is
    regenerated (only data.yaml's absolute `path` is refreshed if the folder was moved). The dataset is written into a
    hidden sibling directory and renamed into place, so a killed run never leaves a half-made dataset at `root`. A
    `root` holding an incomplete or different dataset is replaced; a `root` holding anything else raises
    FileExistsError rather than deleting someone's files.
    """
    root = Path(root).absolute()
    root.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(root)
    if is_complete(root, spec):
        _refresh_data_yaml(root)
        return root / "data.yaml"
    if root.exists():
        if not root.is_dir():
            raise FileExistsError(f"{root} exists and is not a directory")
        foreign = sorted(p.name for p in root.iterdir() if p.name not in _OUR_ENTRIES)
        if foreign:
            raise FileExistsError(
                f"{root} exists and holds files that are not a synthetic dataset ({', '.join(foreign[:5])}); "
                "choose another directory"
            )

    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    work = root.parent / f".{root.name}.partial-{token}"
    try:
        _write_dataset(work, root, spec, progress)
        _install(work, root, token, spec)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return root / "data.yaml"


def _refresh_data_yaml(root: Path) -> None:
    text = _data_yaml_text(root)
    path = root / "data.yaml"
    if path.read_text() != text:
        tmp = root / f".data.yaml.{os.getpid()}"
        tmp.write_text(text)
        os.replace(tmp, path)


def _install(work: Path, root: Path, token: str, spec: ScenarioSpec) -> None:
    """Move the finished `work` tree to `root`, replacing an incomplete or different dataset there."""
    trash = None
    if root.exists():
        trash = root.parent / f".{root.name}.old-{token}"
        os.rename(root, trash)
    try:
        os.rename(work, root)
    except OSError:
        # another process installed a dataset meanwhile: fine when it is the one we want
        if trash is not None and not root.exists():
            os.rename(trash, root)
            trash = None
        if not is_complete(root, spec):
            raise
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def _write_dataset(work: Path, root: Path, spec: ScenarioSpec, progress: bool) -> None:
    ss_train, ss_val, ss_order = np.random.SeedSequence([spec.seed, 0x5CE4E]).spawn(3)
    splits = {
        "train": _plan_split(spec.n_train, spec, "train", ss_train),
        "val": _plan_split(spec.n_val, spec, "val", ss_val),
    }
    order_rng = np.random.default_rng(ss_order)
    jobs: list[tuple[str, _Scene, int]] = []
    rows: list[dict] = []
    for split, scenes in splits.items():
        frames = [(scene, f) for scene in scenes for f in range(scene.frames)]
        perm = order_rng.permutation(len(frames))
        width = max(6, len(str(len(frames))))
        for idx, k in enumerate(perm):
            scene, f = frames[k]
            jobs.append((f"{split}/images/img_{idx:0{width}d}.png", scene, f))
        (work / split / "images").mkdir(parents=True)
        (work / split / "labels").mkdir(parents=True)

    iterator = jobs
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("generating synthetic scenes", total=len(jobs))
    try:
        for rel, scene, f in iterator:
            arr, labels = _render(scene, f, spec.image_size)
            (work / rel).write_bytes(_png_bytes(arr))
            (work / _label_rel(rel)).write_text(_label_text(labels))
            classes = sorted(c for c, *_ in labels)
            rows.append(
                {
                    "file": rel,
                    "split": rel.split("/", 1)[0],
                    "scenario": scene.scenario,
                    "burst_id": "" if scene.burst_id is None else str(scene.burst_id),
                    "hard": int(scene.scenario != "daylight"),
                    "rare": int(any(c in RARE_CLASSES for c in classes)),
                    "n_objects": len(labels),
                    "classes": " ".join(str(c) for c in classes),
                }
            )
            if bar is not None:
                bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()

    with open(work / "scenarios.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    (work / "data.yaml").write_text(_data_yaml_text(root))
    # spec.json last: its presence (with matching files) is what marks the dataset complete
    (work / "spec.json").write_text(json.dumps(_spec_record(spec), indent=2, sort_keys=True) + "\n")


def read_scenarios(root: Path) -> dict[str, dict]:
    """Rows of ROOT/scenarios.csv keyed by relative image path (e.g. ``train/images/img_000012.png``).

    Each value: file (str), split (str), scenario (str), burst_id (int | None), hard (bool), rare (bool),
    n_objects (int), classes (tuple[int, ...], one id per object, sorted).
    """
    out: dict[str, dict] = {}
    with open(Path(root) / "scenarios.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            out[row["file"]] = {
                "file": row["file"],
                "split": row["split"],
                "scenario": row["scenario"],
                "burst_id": int(row["burst_id"]) if row["burst_id"] else None,
                "hard": row["hard"] == "1",
                "rare": row["rare"] == "1",
                "n_objects": int(row["n_objects"]),
                "classes": tuple(int(c) for c in row["classes"].split()),
            }
    return out
