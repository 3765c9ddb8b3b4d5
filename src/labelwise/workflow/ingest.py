"""Adding images and labels to a workspace: hash, validate, register; labels from YOLO txt files beside the images."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labelwise.config import (CONFIG_NAME, ConfigError, WorkspaceConfig, config_from_dict, load_config,
                              read_data_yaml, save_config)
from labelwise.pool import Rejected, find_files, inspect_image, is_candidate, label_path_for, read_yolo_label
from labelwise.progress import track
from labelwise.store import STORE_NAME, Store
from labelwise.workflow.context import WorkspaceContext, crash_point


@dataclass
class AddReport:
    added: int = 0
    labeled: int = 0
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (path, path of the same bytes already known)
    quarantined: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    unlabeled_in_labeled_source: int = 0
    reserved_for_val: int = 0  # pool images reserved at init as the validation set (see reserve_validation)


def create(root: Path, images: list[Path], classes: list[str] | None = None, data_yaml: Path | None = None,
           labeled: list[Path] | None = None, val: Path | None = None, **settings: Any) -> Path:
    """Write labelwise.yaml for a new workspace at `root` (the caller opens it, then `ingest_sources` fills it and
    marks it initialised). Returns the absolute root.

    `labelwise init` is resumable: a workspace whose init stopped half-way (killed while hashing a large pool) is
    continued when the same init runs again (the images already registered are not read again); run with other
    settings, it starts over. Only an initialised workspace refuses a second init."""
    root = Path(root).absolute()
    state = init_state(root)
    if state == "done":
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
    data.setdefault("model", default_model())
    config = config_from_dict(data, "labelwise.yaml settings")
    check_model(config.model)  # before anything is written: offline, fail now with what to do, not hours later
    if state == "started" and not _same_settings(root, config):
        _start_over(root)
    root.mkdir(parents=True, exist_ok=True)
    # The store says "init started" before labelwise.yaml exists, and "done" only when ingest_sources has
    # finished: a folder with labelwise.yaml is either a finished workspace or one a rerun continues.
    store = Store(root / STORE_NAME)
    try:
        if store.kv_get(*_INIT_KEY) is None:
            store.kv_set(*_INIT_KEY, "started")
    finally:
        store.close()
    save_config(root, config)
    return root


_INIT_KEY = ("workspace", "init")


def default_model() -> str:
    """The model a new workspace starts from unless told otherwise: the detector's pretrained checkpoint (a YAML
    would train from scratch, which needs far more labels)."""
    from labelwise.detectors.ultralytics import DEFAULT_MODEL

    return DEFAULT_MODEL


def check_model(model: str) -> None:
    """Raise the detector's ModelUnavailableError (what to do, in words) when `model` cannot be loaded now."""
    from labelwise.detectors import ultralytics

    ultralytics.check_model_available(model)


def init_state(root: Path) -> str | None:
    """None: no workspace at `root`. "started": `labelwise init` began there and has not finished (a rerun of it
    continues). "done": a workspace ready to use (also one made before labelwise recorded this)."""
    root = Path(root).absolute()
    if not (root / CONFIG_NAME).exists():
        return None
    if not (root / STORE_NAME).exists():
        return "done"  # an older workspace never opened since: Workspace() makes its store
    store = Store(root / STORE_NAME)
    try:
        return "started" if store.kv_get(*_INIT_KEY) == "started" else "done"
    finally:
        store.close()


def mark_initialised(ctx: WorkspaceContext) -> None:
    if ctx.store.kv_get(*_INIT_KEY) == "started":
        ctx.store.kv_set(*_INIT_KEY, "done")


def _same_settings(root: Path, config: WorkspaceConfig) -> bool:
    try:
        return load_config(root).to_dict() == config.to_dict()
    except ConfigError:
        return False


def _start_over(root: Path) -> None:
    """Forget a half-made workspace made with other settings: its store holds only what its init had registered
    (no round can run before init finishes), all of it read again from the files."""
    for name in (STORE_NAME, f"{STORE_NAME}-wal", f"{STORE_NAME}-shm", CONFIG_NAME):
        (root / name).unlink(missing_ok=True)


def add(ctx: WorkspaceContext, sources: list[Path], *, labeled: bool = False, split: str = "pool",
        progress: bool = True) -> AddReport:
    """Hash, validate and register images. With labeled=True their YOLO labels (images/ -> labels/) come too.

    Idempotent: a file already registered under the same path is skipped without being read again.
    """
    report = AddReport()
    n_classes = len(ctx.config.classes)
    explicit = {Path(s).absolute() for s in sources if Path(s).is_file()}
    files = [p for p in find_files(sources) if is_candidate(p, p in explicit)]
    iterator = track(files, len(files), "Adding images") if progress and files else files
    for path in iterator:
        if ctx.store.known_path(str(path)) is not None:
            continue
        # An image whose label was rejected stays quarantined however often it is seen: a folder given both as
        # labeled and as --images (a supported layout) comes by a second time without its labels, and that pass
        # must not slip it into the pool as unlabeled (it would vanish from the quarantine and go to annotators).
        # Only a labeled pass, which reads the label file again, takes it out (fixed label, or no label file).
        if not labeled and ctx.store.rejected_label(path=str(path)):
            continue
        found = inspect_image(path)
        if isinstance(found, Rejected):
            ctx.store.quarantine(str(path), found.reason)
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
                    ctx.store.quarantine(str(path), reason, sha256=found.sha256, label_rejected=True)
                    report.quarantined.append((str(path), reason))
                    continue
            else:
                report.unlabeled_in_labeled_source += 1
        if boxes is None:  # the same bytes under another name whose label was refused: held back with it
            rejected = ctx.store.rejected_label(sha256=found.sha256, other_than=str(path))
            if rejected:
                reason = (f"{path}: the same image as {rejected}, whose label was rejected; fix or remove that "
                          "label file, then run `labelwise add --labeled` on its folder")
                ctx.store.quarantine(str(path), reason, sha256=found.sha256)
                report.quarantined.append((str(path), reason))
                continue
        image_split = "val" if boxes is not None and split == "pool" and held_out(ctx, found.sha256) else split
        # One transaction per image: its row, its name, its hashes, its split and its label land together or not
        # at all. Written one after the other, a kill between them left the image registered without its label,
        # and the rerun skipped the file by its path: the label was lost for good.
        with ctx.store.transaction():
            existing = ctx.store.image_by_sha(found.sha256)
            image_id, created = ctx.store.add_image(found.sha256, str(path), found.width, found.height,
                                                    image_split, found.phash, found.dhash)
            if created and boxes is not None:
                crash_point("add_before_label")
                ctx.store.put_label(image_id, boxes, round_no=0, source=f"file {label_file}")
        if not created:
            report.duplicates.append((str(path), str(existing.path if existing else "")))
            continue
        report.added += 1
        if boxes is not None:
            report.labeled += 1
    if sources and split == "pool" and not labeled:
        known = set(ctx.config.images)
        new = [str(Path(s).absolute()) for s in sources if str(Path(s).absolute()) not in known]
        if new:
            ctx.config.images.extend(new)
            save_config(ctx.root, ctx.config)
    return report


def held_out(ctx: WorkspaceContext, sha256: str) -> bool:
    """Whether a labeled image belongs to the fixed validation part: decided by its hash, so it never moves
    between rounds and does not depend on the order images arrive. Only without a user-given val split."""
    if ctx.config.val:
        return False
    return int(sha256[:8], 16) / 0xFFFFFFFF < ctx.config.val_fraction


def ingest_sources(ctx: WorkspaceContext, progress: bool = True) -> AddReport:
    """Register every source named in labelwise.yaml (the pool, labeled seeds, the val folder)."""
    total = AddReport()
    # Labeled sources first: a folder named both as pool and as labeled must arrive with its labels.
    jobs = [([Path(p) for p in ctx.config.labeled], True, "pool"),
            ([Path(p) for p in ctx.config.images], False, "pool")]
    if ctx.config.val:
        jobs.append(([Path(ctx.config.val)], True, "val"))
    for sources, labeled, split in jobs:
        if not sources:
            continue
        r = add(ctx, sources, labeled=labeled, split=split, progress=progress)
        total.added += r.added
        total.labeled += r.labeled
        total.duplicates += r.duplicates
        total.quarantined += r.quarantined
        total.unlabeled_in_labeled_source += r.unlabeled_in_labeled_source
    crash_point("init_before_done")
    with ctx.store.transaction():  # the reserve and "initialised": both or neither
        if ctx.store.kv_get(*_INIT_KEY) == "started":
            total.reserved_for_val = reserve_validation(ctx)
        mark_initialised(ctx)
    return total


# -- the validation reserve ------------------------------------------------------------------------------------------
#
# Without a user-given val split, a workspace whose pool starts unlabeled has nothing to validate on: every image
# it labels is picked by a strategy and trained on. So `init` reserves a random sample of the pool as the val split
# (unlabeled, split 'val'), which goes to the annotators with the first batch and is the validation set of every
# round from then on. A validation set drawn from the actively selected images would be biased: the strategy picks
# what the model finds hard (or diverse, or rare), so its mAP would not estimate the mAP on the data the model
# meets, and it would shift from round to round. A random sample, fixed at init, never selected by a strategy and
# never moved between splits, does not.

VAL_RESERVE_KEY = ("validation", "reserve")


def reserve_validation(ctx: WorkspaceContext) -> int:
    """Reserve a seeded random sample of the unlabeled pool as the val split, once (the choice, its seed and its
    size are recorded in the store). Returns how many images were reserved.

    The sample tops up what the labeled sources already hold out (val_fraction) to `budget.val` (default: 10% of
    the first batch, at least 30; `Budget.val_size`). It never takes more than half of the unlabeled pool, nor so
    much that the first batch and one more round could not be selected: a pool that small gets none (give
    `--val`)."""
    import numpy as np

    if ctx.config.val or ctx.store.kv_get(*VAL_RESERVE_KEY) is not None:
        return 0
    budget = ctx.config.budget
    wanted = budget.val_size()
    have = ctx.store.counts()["val_labeled"]
    pool = sorted(ctx.store.images(split="pool", state="unlabeled"), key=lambda image: image.sha256)
    first_rounds = (budget.initial or budget.per_round) + budget.per_round
    n = max(0, min(wanted - have, len(pool) // 2, len(pool) - first_rounds))
    # by content, not by the order files were found: the same pool and seed reserve the same images
    rng = np.random.default_rng(ctx.config.seed)
    chosen = sorted(int(pool[i].id) for i in rng.choice(len(pool), size=n, replace=False)) if n else []
    with ctx.store.transaction() as c:
        c.executemany("UPDATE images SET split='val' WHERE id=? AND split='pool' AND state='unlabeled'",
                      [(i,) for i in chosen])
        ctx.store.kv_set(*VAL_RESERVE_KEY, {"seed": ctx.config.seed, "wanted": wanted, "held_out_labeled": have,
                                            "reserved": n, "pool": len(pool), "image_ids": chosen})
    return n


def reserved_for_batch(ctx: WorkspaceContext, round_no: int) -> list[int]:
    """The reserved validation images that go to the annotators with round `round_no`'s batch: those not labeled
    and not sent with another round's batch (so all of them with the first batch, and none again)."""
    reserve = ctx.store.kv_get(*VAL_RESERVE_KEY)
    if not reserve or not reserve["image_ids"]:
        return []
    rows = ctx.store.conn.execute(
        "SELECT id FROM images WHERE split='val' AND state!='labeled'"
        " AND id NOT IN (SELECT image_id FROM selections WHERE round!=?) ORDER BY id", (round_no,))
    reserved = set(reserve["image_ids"])
    return [int(r[0]) for r in rows if int(r[0]) in reserved]
