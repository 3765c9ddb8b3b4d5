"""Selecting a round's batch: the selection inputs from the store (the scored pool, the labeled context, the cold
start's embeddings, perceptual hashes backfilled for older workspaces), the core's selection, the saved batch."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from labelwise.config import ConfigError
from labelwise.detections import ScoredPool
from labelwise.fileio import sha256_file
from labelwise.workflow.context import LoopError, WorkspaceContext, crash_point, open_round
from labelwise.workflow.ingest import reserved_for_batch
from labelwise.workflow.scoring import extra_passes, score_images

VALIDATION_REASON = ("validation: part of the random sample held out at init to measure every round's model; "
                     "label it like the others (it is never trained on)")


def select(ctx: WorkspaceContext, k: int | None = None, strategy: str | dict[str, Any] | None = None,
           on_retire: Callable[[str, Any], None] | None = None, *,
           with_random: bool = False) -> list[dict[str, Any]]:
    """Pick the round's batch (or pick it again while none of it is labeled) and save it with every score
    component and reason, in one transaction.

    `with_random` (the dividend experiment, `labelwise.workflow.dividend`): a random batch as large as the
    strategy's rides along, drawn (seeded) from the same scored candidates minus the strategy's picks, ranked
    after them and marked with the component RANDOM_ARM; it needs a trained model.

    Picking again: before the new batch is saved, the old batch's unlabeled tasks are taken back wherever the round
    was pushed (`annotating.retire`; images also in the new batch are kept), so nobody labels images that are no
    longer wanted; `on_retire(where, RetireReport)` hears what was removed and kept. When a backend cannot be
    reached nothing changes and the error says so."""
    from labelwise.selection import LabeledContext, StrategyConfig, cold_start_select
    from labelwise.selection import select as core_select

    round_no, step = open_round(ctx)
    if step not in ("select", "annotate"):
        raise LoopError(f"round {round_no} is at step '{step}'; run `labelwise {step}` first")
    if step == "annotate":
        if any(r["outcome"] != "pending" for r in ctx.store.selection(round_no)):
            raise LoopError(f"round {round_no}'s batch already has imported labels; it cannot be re-selected. "
                            "Finish it with `labelwise import` / `labelwise annotate pull`.")
    current = ctx.store.current_round()
    assert current is not None
    # Without an explicit strategy, labelwise.yaml as it is NOW decides (strategy / schedule): the round's
    # record was written when the round opened, before the user may have edited the file for this selection.
    spec = ctx.config.strategy_for_round(round_no) if strategy is None else (
        {"name": strategy} if isinstance(strategy, str) else dict(strategy))
    spec = checked_strategy(ctx, spec)
    budget = ctx.config.budget
    unlabeled = ctx.store.image_ids("pool", "unlabeled")
    if step == "annotate":
        # Re-selecting: the old picks are candidates again. The store changes only when the new batch is saved
        # (one transaction below), so a failed re-selection leaves the old batch exactly as it was.
        old = ctx.store.image_ids("pool", "selected")
        unlabeled = np.unique(np.concatenate([unlabeled, old])).astype(np.int64)
    if k is None:
        k = budget.initial or budget.per_round if not current.model_hash else budget.per_round
        setting = "budget.initial" if not current.model_hash and budget.initial else "budget.per_round"
        if k <= 0:
            raise LoopError(f"nothing to select: {setting} is {k} in {ctx.root / 'labelwise.yaml'}; set it to the "
                            "number of images to label in a round (at least 1)")
        if budget.total is not None:
            labeled = ctx.store.counts()["pool_labeled"]
            k = min(k, budget.total - labeled)
            if k <= 0:
                raise LoopError(f"nothing to select: the label budget is spent ({labeled} labeled, budget.total "
                                f"{budget.total} in {ctx.root / 'labelwise.yaml'}); raise budget.total to label "
                                "more")
    elif k <= 0:
        raise LoopError(f"nothing to select: the batch size k is {k}; give at least 1")
    # An empty batch would complete its round at once (nothing pending) and open the next one: never save one.
    if not len(unlabeled):
        raise LoopError("nothing to select: no unlabeled pool image is left; add images with "
                        f"`labelwise add -w {ctx.root} IMAGES`")
    known = {f.name for f in dataclasses.fields(StrategyConfig)}
    try:
        strategy_config = StrategyConfig.from_dict(
            {key: v for key, v in spec.items() if key in known} | {"seed": ctx.config.seed + round_no})
    except ValueError as exc:  # a bad name or value in labelwise.yaml: the user's words, not a traceback
        raise ConfigError(f"{ctx.root / 'labelwise.yaml'}: {exc}") from None
    unhashable = backfill_missing_hashes(ctx)
    labeled_all = ctx.store.image_ids("pool", "labeled")
    # "labeled hash #J" in a selection's skips is image hash_ids[J]; a labeled file that could not be hashed
    # (unreadable since it was labeled; quarantined by the backfill) is left out
    hash_ids = ctx.store.ids_with_hashes(labeled_all) if unhashable else labeled_all
    start = None if current.model_hash else cold_start_weights(ctx, strategy_config.cold_start)
    if not current.model_hash and start is None:  # nothing to embed with: only chance can choose
        spec = {"name": "random", "cold_start": "random"}  # what the rounds table should say this round used
        rng = np.random.default_rng(ctx.config.seed + round_no)
        rows = rng.permutation(len(unlabeled))[:k]
        why = ("cold start: no labels yet, picked at random" if strategy_config.cold_start == "random" else
               f"cold start: picked at random, because model '{ctx.config.model}' is not a trained checkpoint "
               f"whose embeddings could choose (cold_start: {strategy_config.cold_start} needs one)")
        picks = [(int(unlabeled[r]), rank, 0.0, {"random": 1.0}, why) for rank, r in enumerate(rows, start=1)]
        skipped: list[tuple[int, str, float]] = []
    else:
        cfg = ctx.config
        if current.model_hash:
            model_hash, n_classes = current.model_hash, len(cfg.classes)
        else:  # cold start from a pretrained checkpoint: its embeddings only, its classes may be others
            model_hash, n_classes = sha256_file(start)[:16], None
            spec = {"name": "cold_start", "cold_start": strategy_config.cold_start, "model": str(start)}
            score_images(ctx, start, model_hash, states=("unlabeled", "labeled"), progress=True)
        # float16, as stored: the core normalises a large pool when it reads it (diversity.UnitRows), so a million
        # embeddings take 0.9 GB, not 1.8 GB of float32 plus a normalised copy
        pool = ctx.store.scored_pool(unlabeled, model_hash, cfg.imgsz, n_classes=n_classes,
                                     embedding_dtype=np.float16)
        # The labeled embeddings come with their image ids, in the same order (scored_pool sorts by id), so a
        # "duplicate of labeled #J" names the right image; a labeled image without an embedding is left out.
        labeled_pool = ctx.store.scored_pool(labeled_all, model_hash, cfg.imgsz, n_classes=n_classes)
        labeled_ids = labeled_pool.image_ids
        labeled_ctx = LabeledContext(
            embeddings=labeled_pool.embeddings if len(labeled_ids)
            else np.zeros((0, pool.embeddings.shape[1]), np.float32),
            class_counts=ctx.store.class_box_counts(len(cfg.classes)),
            hashes=ctx.store.image_hashes(hash_ids) if pool.hashes is not None else None,
        )
        # GAP features after SiLU share one large positive component, so raw cosine similarity is near 1 for
        # every pair (worst with a young model) and near-duplicate suppression would reject the whole pool.
        # Centring on the mean of pool and labeled embeddings leaves only what tells images apart.
        # The core subtracts it (`centre=`) as it normalises.
        n_all = len(pool) + len(labeled_ctx.embeddings)
        centre = ((pool.embeddings.sum(axis=0, dtype=np.float64) + labeled_ctx.embeddings.sum(axis=0))
                  / max(n_all, 1)).astype(np.float32)
        if current.model_hash:
            extra: dict[str, Any] = {}
            extra_passes(ctx, round_no, spec)  # a strategy chosen after scoring may still need its passes
            if strategy_config.name == "consistency":
                extra["flipped"] = aligned(ctx, pool, current.model_hash, "flip")
            if strategy_config.name == "committee":
                size = int(spec.get("committee_size", 3))
                extra["members"] = [aligned(ctx, pool, current.model_hash, f"member{j}") for j in range(size)]
            result = core_select(pool, k, strategy_config, labeled=labeled_ctx, centre=centre, **extra)
        else:
            result = cold_start_select(pool, k, strategy_config, labeled=labeled_ctx, centre=centre)
        picks = [(int(pool.image_ids[row]), rank, float(score), comp, why) for rank, (row, score, comp, why)
                 in enumerate(zip(result.rows, result.scores, result.components, result.reasons), start=1)]
        skipped = [(int(pool.image_ids[row]), describe_duplicate(of, pool, labeled_ids, hash_ids), float(sim))
                   for row, of, sim in result.skipped_duplicates]
    if not picks:
        raise LoopError(f"the strategy selected nothing from {len(unlabeled)} unlabeled images "
                        f"({len(skipped)} skipped as near-duplicates); lower or switch off "
                        "strategy.dedup_threshold in labelwise.yaml")
    if with_random:
        if not current.model_hash:
            raise LoopError(f"round {round_no} has no trained model: the random comparison batch needs one")
        picks += random_arm(ctx, round_no, pool.image_ids, picks)
    # The validation reserve (ingest.reserve_validation) rides along with the first batch, ranked after the
    # strategy's picks; no strategy ever sees it (it is split 'val', and candidates are split 'pool').
    picks += [(image_id, rank, 0.0, {"validation": 1.0}, VALIDATION_REASON)
              for rank, image_id in enumerate(reserved_for_batch(ctx, round_no), start=len(picks) + 1)]
    if step == "annotate":
        retire_old_batch(ctx, round_no, {int(p[0]) for p in picks}, on_retire)
    crash_point("before_save_selection")
    with ctx.store.transaction() as c:  # the old batch back to the pool, the new one in, the record: atomic
        if step == "annotate":
            c.execute("UPDATE images SET state='unlabeled' WHERE id IN "
                      "(SELECT image_id FROM selections WHERE round=?) AND state='selected'", (round_no,))
        if json.dumps(spec) != (current.strategy or ""):
            ctx.store.update_round(round_no, strategy=json.dumps(spec))
        ctx.store.save_selection(round_no, picks, skipped, next_step="annotate")
        ctx.store.kv_set("annotation", f"round/{round_no}/last_pull", None)  # the old batch's problems
    return ctx.store.selection(round_no)


RANDOM_ARM = "dividend_random"
RANDOM_ARM_REASON = ("dividend: the random comparison batch, drawn at random from the same candidates as the "
                     "strategy's batch (label it like the others)")


def random_arm(ctx: WorkspaceContext, round_no: int, candidates: np.ndarray,
               picks: list[tuple]) -> list[tuple[int, int, float, dict[str, float], str]]:
    """As many images as `picks` holds, drawn at random (seeded by the workspace seed and the round) from
    `candidates` minus the picks, ranked after them: the dividend's random batch, disjoint from the strategy's."""
    taken = {int(p[0]) for p in picks}
    rest = np.array([int(i) for i in candidates if int(i) not in taken], dtype=np.int64)
    if len(rest) < len(picks):
        raise LoopError(f"the pool has {len(rest)} scored unlabeled images besides the strategy's {len(picks)}, too "
                        f"few for a random batch of {len(picks)}; lower --k to at most {(len(rest) + len(picks)) // 2}"
                        f" or add images with `labelwise add -w {ctx.root} IMAGES`")
    rng = np.random.default_rng([ctx.config.seed, round_no, 0xD1])  # its own stream: not the cold start's draw
    rows = np.sort(rng.permutation(len(rest))[:len(picks)])
    return [(int(rest[r]), rank, 0.0, {"random": 1.0, RANDOM_ARM: 1.0}, RANDOM_ARM_REASON)
            for rank, r in enumerate(rows, start=len(picks) + 1)]


def retire_old_batch(ctx: WorkspaceContext, round_no: int, new_ids: set[int],
                     on_retire: Callable[[str, Any], None] | None) -> None:
    """Take the round's old batch back from where it was pushed before a new one replaces it."""
    from labelwise.annotation.base import AnnotationError
    from labelwise.workflow import annotating

    old = annotating.batch(ctx, round_no)
    keep = {ctx.store.image(i).sha256 for i in new_ids}
    try:
        reports = annotating.retire(ctx, old, keep)
    except AnnotationError as exc:
        raise LoopError(f"round {round_no}'s earlier batch could not be taken back from the annotators: {exc} "
                        "Nothing changed (the earlier batch stands); run `labelwise select` again once the "
                        "annotation tool answers.") from None
    for where, report in reports:
        if on_retire is not None:
            on_retire(where, report)


def backfill_missing_hashes(ctx: WorkspaceContext) -> int:
    """Perceptual hashes for images registered before labelwise computed them at ingest (older workspaces).
    Returns how many images could not be hashed (quarantined with the reason)."""
    from labelwise.pool import backfill_hashes

    failed = backfill_hashes(ctx.store)
    for path, reason in failed:
        ctx.store.quarantine(path, reason)
    return len(failed)


def cold_start_plan(ctx: WorkspaceContext) -> str:
    """How the first batch will be chosen, in words, without loading a model."""
    method = ctx.config.strategy_for_round(1).get("cold_start", "typical")
    if method == "random":
        return "picked at random (cold_start: random)"
    if Path(ctx.config.model).suffix != ".pt":
        return f"picked at random: model '{ctx.config.model}' is not a trained checkpoint to embed the pool with"
    return (f"chosen from the embeddings of {ctx.config.model} "
            f"({'TypiClust' if method == 'typical' else 'k-center greedy'}, near-duplicates removed first)")


def cold_start_weights(ctx: WorkspaceContext, method: str) -> Path | None:
    """The checkpoint whose embeddings choose the first batch: `model:` when it is a trained checkpoint (a local
    .pt, or a name Ultralytics downloads), None for a model YAML (random weights embed nothing) or `random`."""
    if method == "random" or Path(ctx.config.model).suffix != ".pt":
        return None
    local = Path(ctx.config.model)
    if local.exists():
        return local.absolute()
    load = getattr(ctx.detector, "load", None)  # e.g. yolo11n.pt, downloaded by Ultralytics when online
    if load is None:
        return None
    path = getattr(load(ctx.config.model), "ckpt_path", None)
    return Path(path).absolute() if path and Path(path).exists() else None


def checked_strategy(ctx: WorkspaceContext, spec: dict[str, Any]) -> dict[str, Any]:
    """A strategy mapping (from labelwise.yaml, the schedule or --strategy) checked before use: an unknown key is
    an error, not silently dropped (a typo like `dedup_treshold` must not fall back to the default), and
    class_quotas may name classes by name as well as by id."""
    from labelwise.config import LOOP_STRATEGY_KEYS
    from labelwise.selection import StrategyConfig

    allowed = {f.name for f in dataclasses.fields(StrategyConfig)} | set(LOOP_STRATEGY_KEYS)
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError(f"labelwise.yaml: strategy: unknown key(s) {', '.join(unknown)}; allowed: "
                          f"{', '.join(sorted(allowed))}")
    quotas = spec.get("class_quotas")
    if quotas:
        if not isinstance(quotas, dict):
            raise ConfigError("labelwise.yaml: strategy: class_quotas must map a class (name or id) to a minimum")
        names = {n: i for i, n in enumerate(ctx.config.classes)}
        fixed = {}
        for c, minimum in quotas.items():
            if c in names:
                c = names[c]
            try:
                c = int(c)
            except (TypeError, ValueError):
                raise ConfigError(f"labelwise.yaml: strategy: class_quotas names {c!r}, which is neither a class "
                                  f"({', '.join(ctx.config.classes)}) nor a class id") from None
            if not 0 <= c < len(ctx.config.classes):
                raise ConfigError(f"labelwise.yaml: strategy: class_quotas names class id {c}; ids are 0.."
                                  f"{len(ctx.config.classes) - 1}")
            fixed[str(c)] = int(minimum)
        spec = {**spec, "class_quotas": fixed}
    return spec


def aligned(ctx: WorkspaceContext, pool: ScoredPool, model_hash: str, variant: str) -> ScoredPool:
    """The `variant` pass (flip, memberJ) row for row with `pool`: the core compares rows, so a missing image is an
    error here rather than a silent shift of every row after it."""
    other = ctx.store.scored_pool(pool.image_ids, model_hash, ctx.config.imgsz, variant,
                                  n_classes=len(ctx.config.classes))
    if len(other) != len(pool):
        raise LoopError(f"the '{variant}' pass is missing for {len(pool) - len(other)} of {len(pool)} images "
                        "(inference failed on them; see `labelwise status` for quarantined files); run "
                        "`labelwise select` again to retry the pass")
    return other


PERCEPTUAL_HASH = "perceptual hash"


def describe_duplicate(of: Any, pool: ScoredPool, labeled_ids: np.ndarray, hash_ids: np.ndarray) -> str:
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
