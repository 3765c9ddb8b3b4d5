"""Scoring a round: one inference pass over the pool (cached by image, model and size), the extra passes some
strategies need (the mirrored image, the committee's members), and the agreement with the previous round's model.

Every pass runs through a scoring engine (`labelwise.engines`): `local` in this process (the default) or `ray` on a
Ray cluster, chosen by `score.engine` in labelwise.yaml or per call."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from labelwise.detectors.base import TrainRequest
from labelwise.engines import ScoreImage, ScoreReport, ScoreRequest, ScoringEngine
from labelwise.engines import engine as make_engine
from labelwise.workflow.context import LoopError, WorkspaceContext, open_round
from labelwise.workflow.training import write_bootstrap


def score(ctx: WorkspaceContext, progress: bool = True, *, engine: str | None = None,
          address: str | None = None) -> int:
    """Score every pool image (unlabeled ones for ranking, labeled ones for their embeddings) with the round's
    model. Returns the number of images that needed inference (0 when all were cached)."""
    return score_round(ctx, progress=progress, engine=engine, address=address).needed_inference


def score_round(ctx: WorkspaceContext, progress: bool = True, *, engine: str | None = None,
                address: str | None = None) -> ScoreReport:
    """`score`, returning what every pass of the round did, added up: scored, already scored, quarantined with the
    reasons. `engine`: "local" or "ray" (None: `score.engine` in labelwise.yaml); `address`: the Ray cluster (None:
    `score.ray.address`)."""
    round_no, step = open_round(ctx)
    if step != "score":
        raise LoopError(f"round {round_no} is at step '{step}', not 'score'")
    current = ctx.store.current_round()
    assert current is not None and current.model_path and current.model_hash
    runner = engine_for(ctx, engine, address=address)
    started = time.perf_counter()
    try:
        report = score_images_report(ctx, Path(current.model_path), current.model_hash, progress=progress,
                                     engine=runner, round_no=round_no)
        report = report.merge(extra_passes_report(ctx, round_no, json.loads(current.strategy or "{}"),
                                                  progress=progress, engine=runner))
    finally:
        runner.close()  # one Ray connection for all the round's passes
    ctx.store.update_round(round_no, step="select", score_seconds=time.perf_counter() - started,
                           agreement=agreement_with_previous(ctx, current))
    return report


def engine_for(ctx: WorkspaceContext, name: str | None = None, *, address: str | None = None) -> ScoringEngine:
    """The scoring engine `name` (None: `score.engine` in labelwise.yaml)."""
    return make_engine(name or ctx.config.score.engine, address=address)


def agreement_with_previous(ctx: WorkspaceContext, current: Any, stop_set_size: int = 200,
                            conf: float = 0.25) -> float | None:
    """Stabilizing predictions: how far this round's model agrees with the previous one on a stop set of the
    pool images not yet labeled with the smallest hashes (fixed by content, not by arrival order; no extra
    inference since both models scored every pool image).

    Only images neither model trained on: a model reproduces the labels it trained on, so labeled images would
    agree because they are labeled, not because the models have settled, and make the loop stop early."""
    from labelwise.stopping import prediction_agreement

    previous = [r for r in ctx.store.rounds() if r.round < current.round and r.model_hash]
    if not previous:
        return None
    prev_hash = previous[-1].model_hash
    shas = sorted(img.sha256 for state in ("unlabeled", "selected")
                  for img in ctx.store.images(split="pool", state=state))[:stop_set_size]
    pairs = []
    before = ctx.store.detections_many(shas, prev_hash, ctx.config.imgsz)  # one pass over each model's shards
    after = ctx.store.detections_many(shas, current.model_hash, ctx.config.imgsz)
    for sha in shas:
        a, b = before.get(sha), after.get(sha)
        if a is None or b is None:
            continue
        pairs.append(tuple((d.boxes[keep], d.class_scores[keep].argmax(axis=1)) for d in (a, b)
                           for keep in [d.class_scores.max(axis=1, initial=0) >= conf]))
    if not pairs:
        return None
    return prediction_agreement([p for p, _ in pairs], [c for _, c in pairs])


def score_images(ctx: WorkspaceContext, weights: Path, model_hash: str, *, flip: bool = False,
                 variant: str | None = None, states: tuple[str, ...] = ("unlabeled", "labeled"),
                 progress: bool = True, engine: ScoringEngine | None = None) -> int:
    """Run the detector on the pool images in `states` not yet cached for (model, size, variant); store results in
    chunks. Returns how many images needed inference."""
    return score_images_report(ctx, weights, model_hash, flip=flip, variant=variant, states=states,
                               progress=progress, engine=engine).needed_inference


def score_images_report(ctx: WorkspaceContext, weights: Path, model_hash: str, *, flip: bool = False,
                        variant: str | None = None, states: tuple[str, ...] = ("unlabeled", "labeled"),
                        progress: bool = True, engine: ScoringEngine | None = None,
                        round_no: int | None = None) -> ScoreReport:
    """`score_images`, returning the engine's report. `engine`: None is the configured one."""
    variant = variant if variant is not None else ("flip" if flip else "")
    cfg = ctx.config
    # The cache is keyed by (image, model, size) only; if the thresholds that decide which boxes are kept have
    # changed since, the cached detections of this model are stale and go.
    settings = {"conf": cfg.score.conf, "iou": cfg.score.iou, "max_det": cfg.score.max_det}
    cached_with = ctx.store.kv_get("score_settings", model_hash)
    if cached_with is not None and cached_with != settings:
        ctx.store.drop_detections(model_hash)
    if cached_with != settings:
        ctx.store.kv_set("score_settings", model_hash, settings)
    if round_no is None:
        current = ctx.store.current_round()
        round_no = current.round if current is not None else None
    request = ScoreRequest(
        weights=Path(weights), model_hash=model_hash, imgsz=cfg.imgsz,
        images=tuple(ScoreImage(img.sha256, str(img.path)) for state in states
                     for img in ctx.store.images(split="pool", state=state)),
        conf=cfg.score.conf, iou=cfg.score.iou, max_det=cfg.score.max_det, batch=cfg.score.batch,
        device=cfg.device, variant=variant, flip=flip, round=round_no)
    if engine is not None:
        return engine.score(ctx, request, progress=progress)
    runner = engine_for(ctx)
    try:
        return runner.score(ctx, request, progress=progress)
    finally:
        runner.close()


def extra_passes(ctx: WorkspaceContext, round_no: int, strategy: dict[str, Any], progress: bool = True,
                 engine: ScoringEngine | None = None) -> int:
    """The inference some strategies need beyond the plain pass: the mirrored image for `consistency`, the
    committee members' passes for `committee`. Cached like the plain pass, so calling it again is free."""
    return extra_passes_report(ctx, round_no, strategy, progress=progress, engine=engine).needed_inference


def extra_passes_report(ctx: WorkspaceContext, round_no: int, strategy: dict[str, Any], progress: bool = True,
                        engine: ScoringEngine | None = None) -> ScoreReport:
    """`extra_passes`, returning the engines' report."""
    current = ctx.store.current_round()
    assert current is not None and current.model_path and current.model_hash
    if strategy.get("name") not in ("consistency", "committee"):
        return ScoreReport(engine=engine.name if engine is not None else ctx.config.score.engine)
    runner = engine if engine is not None else engine_for(ctx)
    try:
        if strategy.get("name") == "consistency":
            return score_images_report(ctx, Path(current.model_path), current.model_hash, flip=True,
                                       states=("unlabeled", "selected"), progress=progress, engine=runner,
                                       round_no=round_no)
        return score_committee(ctx, round_no, strategy, progress=progress, engine=runner)
    finally:
        if engine is None:
            runner.close()


def score_committee(ctx: WorkspaceContext, round_no: int, strategy: dict[str, Any], progress: bool,
                    engine: ScoringEngine | None = None) -> ScoreReport:
    """Query by committee: N members trained on bootstrap resamples of the labeled set, each warm-started from
    the round's model for a few epochs, then each scores the unlabeled pool."""
    current = ctx.store.current_round()
    assert current is not None and current.model_path
    cfg = ctx.config
    members = int(strategy.get("committee_size", 3))
    epochs = int(strategy.get("committee_epochs", max(1, cfg.train.epochs // 3)))
    rng = np.random.default_rng(cfg.seed + round_no)
    labeled = ctx.store.labels("pool")
    if not labeled:
        raise LoopError("query by committee needs labeled images to resample; label a seed batch first")
    # Every member's resample is drawn up front, so member j trains on the same sample whether or not the
    # members before it were already trained (a resumed run must not give member 1 member 0's sample).
    samples = [rng.integers(0, len(labeled), size=len(labeled)) for _ in range(members)]
    runner = engine if engine is not None else engine_for(ctx)  # extra_passes_report passes one and closes it
    report = ScoreReport(engine=runner.name)
    for j in range(members):
        variant = f"member{j}"
        weights_path = ctx.store.kv_get("committee", f"r{round_no}/{variant}")
        if not weights_path or not Path(weights_path).exists():
            picks = samples[j]
            data_yaml = write_bootstrap(ctx, round_no, j, [labeled[i] for i in picks])
            result = ctx.detector.train(TrainRequest(
                data_yaml=data_yaml, start=current.model_path,
                out_dir=ctx.round_dir(round_no) / f"committee{j}", epochs=epochs, imgsz=cfg.imgsz,
                batch=cfg.train.batch, device=cfg.device, seed=cfg.seed + j + 1,
                options={"nbs": cfg.train.nbs, "warmup_epochs": 0},
            ))
            weights_path = str(result.weights)
            ctx.store.kv_set("committee", f"r{round_no}/{variant}", weights_path)
        report = report.merge(score_images_report(ctx, Path(weights_path), current.model_hash, variant=variant,
                                                  states=("unlabeled", "selected"), progress=progress,
                                                  engine=runner, round_no=round_no))
    return report
