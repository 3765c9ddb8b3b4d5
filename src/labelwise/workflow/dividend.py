"""`labelwise dividend`: the article's first experiment ("Your Starting Point"), on the workspace's own data.

One round, with the current model (the round's, trained and scored; the command trains and scores it first when
the round is at those steps):

    select    the strategy's batch of k and a random batch of k, disjoint, the random one drawn (seeded) from the
              same scored candidates (`selecting.select(with_random=True)`): ONE batch of the round, so it goes to
              the annotators like any other (configured backend: push, then wait / pull; or `--oracle`)
    train     two models from the same start (the current model's weights) with the same settings (labelwise.yaml's
              train:, imgsz, device, seed): labeled + the strategy's batch, and labeled + the random batch, each
              once per seed (`--seeds N`: seeds seed, seed + 1, ..., the two arms paired seed by seed)
    measure   mAP50, per-class AP50 and the mAP50 gain per 100 labels of each, all on one fixed validation split
              (the workspace's labeled val split, written once for the experiment); the gain is over the current
              model, validated on that same split
    compare   the paired per-seed difference against the seed-to-seed noise (`labelwise.savings.compare_arms`):
              "within noise" when it is not larger; with one seed the noise is unknown and the text says so

Both batches stay labeled: they are the round's batch, so the next `labelwise run` trains on them too; no label is
wasted. The plan, each finished training and the result are recorded in the store's kv table (namespace
`dividend`), so a killed run resumes by running the same command: nothing labeled is asked again, and no finished
training is redone (a killed training restarts). Running it again later with more `--seeds` trains only the extra
seeds, as long as the loop has not moved on to a newer round; after that a new experiment starts on that round.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labelwise.fileio import atomic_write_text
from labelwise.pool import format_yolo_label
from labelwise.savings import ArmComparison, MeanCI, compare_arms
from labelwise.workflow.context import LoopError, WorkspaceContext, crash_point, finished, open_round

KV = "dividend"  # kv namespace: latest, round/N/plan, round/N/baseline, round/N/train/ARM/S, round/N/result
ARMS = ("strategy", "random")
DEFAULT_K = 200


@dataclass
class ArmResult:
    """One arm: the model(s) trained on the labeled set plus this arm's batch.

    batch: images of the arm's batch that were labeled (skipped ones went back to the pool and are not trained on);
    n_train: labeled pool images the models trained on (the labeled set at the selection + the batch);
    map50, map50_95: per seed, in seed order; per_class_ap50: mean over seeds;
    gain_per_100: 100 (mean mAP50 - the current model's mAP50) / batch.
    """

    name: str
    batch: int
    n_train: int
    map50: list[float] = field(default_factory=list)
    map50_95: list[float] = field(default_factory=list)
    per_class_ap50: dict[str, float] = field(default_factory=dict)
    gain_per_100: float | None = None

    @property
    def mean_map50(self) -> float | None:
        return sum(self.map50) / len(self.map50) if self.map50 else None


@dataclass
class DividendResult:
    """Where the experiment of `round` stands, and once trained its result.

    state: "waiting" (the batches are out for labeling), "training" (some trainings left; rerun to go on) or "done".
    baseline_map50: the current model's mAP50 on the validation split (baseline_source says how it was measured).
    comparison: strategy against random on mAP50 over the paired seeds (verdict "better" / "worse" / "within noise"
    / "noise unknown"); ratio: the strategy's gain per label over random's (the article's "2-4x"), None unless
    random's gain is positive. line: one line for `labelwise status`. labels: the labeling step's report when this
    call took labels (or pushed).
    """

    round: int
    k: int
    seeds: int
    strategy: str
    state: str
    line: str
    next_command: str = ""
    trainings_done: int = 0
    baseline_map50: float | None = None
    baseline_per_class_ap50: dict[str, float] = field(default_factory=dict)
    baseline_source: str = ""
    n_val: int = 0
    arms: dict[str, ArmResult] = field(default_factory=dict)
    comparison: ArmComparison | None = None
    ratio: float | None = None
    labels: Any = None  # annotating.ImportReport | None; not recorded

    def record(self) -> dict[str, Any]:
        """The JSON the store keeps (everything but the labeling report)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "labels"}
        out["arms"] = {name: dataclasses.asdict(arm) for name, arm in self.arms.items()}
        out["comparison"] = None if self.comparison is None else dataclasses.asdict(self.comparison)
        return out

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "DividendResult":
        values = {f.name: record[f.name] for f in dataclasses.fields(cls) if f.name in record}
        values["arms"] = {name: ArmResult(**arm) for name, arm in (record.get("arms") or {}).items()}
        c = record.get("comparison")
        values["comparison"] = None if c is None else ArmComparison(
            difference=MeanCI(**c["difference"]), noise_sd=c["noise_sd"], verdict=c["verdict"], text=c["text"])
        return cls(**values)


# -- the store's records --------------------------------------------------------------------------------------------


def _key(round_no: int, *parts: Any) -> str:
    return "/".join(["round", str(round_no), *(str(p) for p in parts)])


def latest(ctx: WorkspaceContext) -> DividendResult | None:
    """The latest experiment's recorded state, or None when the workspace never ran one."""
    round_no = ctx.store.kv_get(KV, "latest")
    if round_no is None:
        return None
    record = ctx.store.kv_get(KV, _key(round_no, "result"))
    return DividendResult.from_record(record) if record else None


def status_line(ctx: WorkspaceContext) -> str | None:
    """One line for `labelwise status`: the latest experiment's result, or where it stands."""
    found = latest(ctx)
    return None if found is None else found.line


def _save(ctx: WorkspaceContext, result: DividendResult) -> DividendResult:
    ctx.store.kv_set(KV, _key(result.round, "result"), result.record())
    return result


# -- the experiment -------------------------------------------------------------------------------------------------


def run(ctx: WorkspaceContext, k: int | None = None, seeds: int | None = None, oracle: Path | None = None, *,
        on_event: Callable[[str], None] | None = None,
        on_retire: Callable[[str, Any], None] | None = None) -> DividendResult:
    """Run (or resume) the experiment as far as it can go: select the two batches, label them (the configured
    backend, or the labels in `oracle`), train both arms on every seed, compare. Returns the result; its state is
    "waiting" when the annotators have work left (run it again once they are done)."""
    say = on_event or (lambda _text: None)
    if k is not None and k < 1:
        raise LoopError(f"--k is {k}: give the number of images in each batch (at least 1)")
    if seeds is not None and seeds < 1:
        raise LoopError(f"--seeds is {seeds}: give the number of trainings per model (at least 1; 3 measures noise)")
    plan = _plan_to_resume(ctx)
    if plan is None:
        plan = _start(ctx, k or DEFAULT_K, seeds or 1, say, on_retire)
    else:
        if k is not None and k != plan["k"]:
            recorded = ctx.store.kv_get(KV, _key(plan["round"], "result")) or {}
            if recorded.get("state") == "done":
                raise LoopError(f"round {plan['round']}'s dividend experiment (--k {plan['k']}) is done; a new one "
                                f"starts on the next round: `labelwise train -w {ctx.root}` (it trains on both "
                                f"batches), then labelwise dividend --k {k}")
            raise LoopError(f"round {plan['round']}'s dividend experiment was started with --k {plan['k']}; run it "
                            f"again with --k {plan['k']} (or without --k) to go on")
        if seeds is not None and seeds > plan["seeds"]:
            plan["seeds"] = seeds  # more seeds: only the new ones are trained
            ctx.store.kv_set(KV, _key(plan["round"], "plan"), plan)
        say(f"resuming round {plan['round']}'s dividend experiment (k {plan['k']}, {plan['seeds']} seed(s))")
    round_no = plan["round"]
    row = _round(ctx, round_no)
    if row.step == "select":  # killed between the plan and the saved batch
        _select(ctx, plan, on_retire, say)
        row = _round(ctx, round_no)
    report = None
    if row.step == "annotate":
        report = _label(ctx, plan, oracle, say)
        if not report.complete:
            p = report.progress
            counts = "" if p is None else (f" ({p.done}/{p.total} done, {p.rejected} rejected, "
                                           f"{p.pending} pending)")
            nxt = f"{report.next_command}; then labelwise dividend -w {ctx.root}"
            result = DividendResult(round_no, plan["k"], plan["seeds"], plan["strategy"], "waiting",
                                    f"round {round_no}: the strategy's and the random batch are out for "
                                    f"labeling{counts}; then labelwise dividend -w {ctx.root}", nxt)
            result.labels = report
            return _save(ctx, result)
    result = _train_and_compare(ctx, plan, say)
    result.labels = report
    return result


def _plan_to_resume(ctx: WorkspaceContext) -> dict[str, Any] | None:
    """The latest experiment while it is unfinished, or while its round is still the current one (a rerun shows it,
    or adds seeds); None once the loop has moved on to a newer round (a new experiment starts)."""
    round_no = ctx.store.kv_get(KV, "latest")
    if round_no is None:
        return None
    plan = ctx.store.kv_get(KV, _key(round_no, "plan"))
    if plan is None:
        return None
    result = ctx.store.kv_get(KV, _key(round_no, "result")) or {}
    current = ctx.store.current_round()
    if result.get("state") != "done" or (current is not None and current.round == round_no):
        return plan
    return None


def _round(ctx: WorkspaceContext, round_no: int):
    found = next((r for r in ctx.store.rounds() if r.round == round_no), None)
    if found is None:
        raise LoopError(f"round {round_no} of the dividend experiment is not in the store")
    return found


def _start(ctx: WorkspaceContext, k: int, seeds: int, say: Callable[[str], None],
           on_retire: Callable[[str, Any], None] | None) -> dict[str, Any]:
    """Bring the current round to a trained, scored model, then plan the experiment and select its two batches."""
    from labelwise.workflow import scoring, training

    stopped = finished(ctx)
    if stopped:
        raise LoopError(f"the loop has stopped ({stopped}); the dividend labels {2 * k} more images: lift the stop "
                        f"with `labelwise resume -w {ctx.root}` first")
    round_no, step = open_round(ctx)
    if step == "train":
        say(f"round {round_no}: training the current model on {ctx.store.counts()['pool_labeled']} labeled images")
        training.train(ctx)
        step = "score"
    if step == "score":
        say(f"round {round_no}: scoring the pool with the current model")
        scoring.score(ctx)
    current = ctx.store.current_round()
    assert current is not None
    if not current.model_hash or not current.model_path:
        raise LoopError("the dividend compares against the current model, and none is trained yet: label a first "
                        f"batch (`labelwise run -w {ctx.root}`, then label it) so that a round can train, then run "
                        "labelwise dividend again")
    if current.step == "annotate" and any(r["outcome"] != "pending" for r in ctx.store.selection(round_no)):
        raise LoopError(f"round {round_no}'s batch is partly labeled; finish it (`labelwise annotate wait` / "
                        f"`labelwise import`), then `labelwise run -w {ctx.root} --rounds 1` trains on it, and the "
                        "dividend can run on the next round")
    spec = ctx.config.strategy_for_round(round_no)
    name = str(spec.get("name", "?"))
    if name == "random":
        raise LoopError("the round's strategy is random, so both batches would be random: set `strategy:` in "
                        f"{ctx.root / 'labelwise.yaml'} to the strategy to measure")
    counts = ctx.store.counts()
    total = ctx.config.budget.total
    if total is not None and counts["pool_labeled"] + 2 * k > total:
        left = max(total - counts["pool_labeled"], 0)
        raise LoopError(f"the dividend labels 2 x {k} images, and the label budget has {left} left (budget.total "
                        f"{total} in {ctx.root / 'labelwise.yaml'}): lower --k to at most {left // 2} or raise "
                        "budget.total")
    base = [int(i) for i in ctx.store.image_ids("pool", "labeled")]
    plan = {"round": round_no, "k": k, "seeds": seeds, "strategy": name, "start": current.model_path,
            "base": base, "previous": ctx.store.kv_get(KV, "latest"),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with ctx.store.transaction():
        ctx.store.kv_set(KV, _key(round_no, "plan"), plan)
        ctx.store.kv_set(KV, _key(round_no, "result"), None)  # a result of an earlier try of this round's plan
        ctx.store.kv_set(KV, "latest", round_no)
    _select(ctx, plan, on_retire, say)
    return plan


def _select(ctx: WorkspaceContext, plan: dict[str, Any], on_retire: Callable[[str, Any], None] | None,
            say: Callable[[str], None]) -> None:
    """The round's batch: the strategy's k and as many random ones. When it cannot be selected the plan is taken
    back (so that another --k can be tried)."""
    from labelwise.config import ConfigError
    from labelwise.workflow import selecting

    round_no = plan["round"]
    if _round(ctx, round_no).step == "annotate":
        say(f"round {round_no}'s batch is not labeled yet: the dividend's two batches replace it")
    try:
        rows = selecting.select(ctx, k=plan["k"], on_retire=on_retire, with_random=True)
    except (LoopError, ConfigError):
        with ctx.store.transaction():
            ctx.store.kv_set(KV, _key(round_no, "plan"), None)
            ctx.store.kv_set(KV, "latest", plan.get("previous"))
        raise
    arms = split_arms(rows)
    say(f"round {round_no}: selected {len(arms['strategy'])} images by the strategy ({plan['strategy']}) and "
        f"{len(arms['random'])} at random")


def split_arms(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The round's selection rows by arm (the validation reserve, if any rode along, in neither)."""
    from labelwise.workflow.selecting import RANDOM_ARM

    arms: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    for r in rows:
        if RANDOM_ARM in r["components"]:
            arms["random"].append(r)
        elif "validation" not in r["components"]:
            arms["strategy"].append(r)
    return arms


def _label(ctx: WorkspaceContext, plan: dict[str, Any], oracle: Path | None, say: Callable[[str], None]):
    """Both batches to the annotators (one batch of the round) and back, as `labelwise run` does it."""
    from labelwise.workflow import annotating, rounds

    if oracle is not None:
        annotating.export(ctx)
        crash_point("after_push")
        report = annotating.import_labels(ctx, oracle)
        if not report.complete:
            raise LoopError(f"the oracle {oracle} has no labels for {report.pending} selected images of round "
                            f"{plan['round']}; {'; '.join(str(p) for p in report.problems[:3])}")
    else:
        report = rounds.annotate(ctx)
    if report.complete:
        say(f"round {plan['round']}: both batches labeled ({report.progress.accepted if report.progress else '?'} "
            "images); they stay in the training set")
    return report


# -- training and measuring -----------------------------------------------------------------------------------------


def _write_split(root: Path, split: str, rows: list) -> Path:
    """rows (image, boxes) as root/images/SPLIT (symlinks) + root/labels/SPLIT (YOLO txt); returns the images dir.
    Files of images no longer in `rows` (e.g. now held) are removed."""
    img_dir, lbl_dir = root / "images" / split, root / "labels" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    wanted = set()
    for image, boxes in rows:
        stem = image.sha256[:16]
        link = img_dir / f"{stem}{image.path.suffix.lower()}"
        wanted.add(link.name)
        wanted.add(f"{stem}.txt")
        if not link.exists():
            if link.is_symlink():
                link.unlink()
            os.symlink(image.path, link)
        atomic_write_text(lbl_dir / f"{stem}.txt", format_yolo_label(boxes))
    for folder in (img_dir, lbl_dir):
        for stale in folder.iterdir():
            if stale.name not in wanted:
                stale.unlink()
    return img_dir


def _datasets(ctx: WorkspaceContext, plan: dict[str, Any],
              arms: dict[str, list[dict[str, Any]]]) -> tuple[dict[str, Path], dict[str, tuple[int, int]], int]:
    """The fixed validation split and one dataset per arm (the labeled set at the selection + the arm's labeled
    batch). Returns the data.yaml per arm, (batch, n_train) per arm, and the number of validation images."""
    from labelwise.workflow.training import write_data_yaml

    root = ctx.round_dir(plan["round"]) / "dividend"
    val_rows = ctx.store.labels("val")
    if not val_rows:
        raise LoopError("no labeled validation images: the dividend measures both models on the validation split; "
                        "give `val:` in labelwise.yaml or label the validation reserve first")
    val_images = _write_split(root / "val", "val", val_rows)
    labeled = {image.id: (image, boxes) for image, boxes in ctx.store.labels("pool")}
    base = [labeled[i] for i in plan["base"] if i in labeled]
    yamls, sizes = {}, {}
    for arm in ARMS:
        batch = [labeled[r["image_id"]] for r in arms[arm] if r["outcome"] == "labeled" and r["image_id"] in labeled]
        data = root / f"data-{arm}"
        _write_split(data, "train", base + batch)
        yamls[arm] = write_data_yaml(ctx, data, val_images)
        sizes[arm] = (len(batch), len(base) + len(batch))
    return yamls, sizes, len(val_rows)


def _baseline(ctx: WorkspaceContext, plan: dict[str, Any], data_yaml: Path) -> dict[str, Any]:
    """The current model's mAP50 on the experiment's validation split (validated once, then read back)."""
    key = _key(plan["round"], "baseline")
    found = ctx.store.kv_get(KV, key)
    if found is not None:
        return found
    row = _round(ctx, plan["round"])
    validate = getattr(ctx.detector, "validate", None)
    weights = Path(plan["start"])
    if validate is not None and weights.exists():
        cfg = ctx.config
        m = validate(weights, data_yaml, cfg.imgsz, cfg.train.batch, cfg.device,
                     ctx.round_dir(plan["round"]) / "dividend" / "baseline-val")
        found = {"map50": m["map50"], "map50_95": m["map50_95"], "per_class_ap50": m["per_class_ap50"],
                 "source": "the current model validated on the same split"}
    else:  # a detector that cannot validate alone: the round's own record, measured on the val split of its time
        found = {"map50": row.map50, "map50_95": row.map50_95, "per_class_ap50": row.per_class_ap50 or {},
                 "source": f"round {plan['round']}'s training record"}
    ctx.store.kv_set(KV, key, found)
    return found


def _train_and_compare(ctx: WorkspaceContext, plan: dict[str, Any], say: Callable[[str], None]) -> DividendResult:
    from labelwise.workflow.training import train_request

    round_no, seeds = plan["round"], plan["seeds"]
    arms = split_arms(ctx.store.selection(round_no))
    yamls, sizes, n_val = _datasets(ctx, plan, arms)
    start = Path(plan["start"])
    if not start.exists():
        raise LoopError(f"the current model's weights {start}, which every training of the experiment starts from, "
                        "are gone; the experiment cannot go on with the same start")
    baseline = _baseline(ctx, plan, yamls["strategy"])
    jobs = [(s, arm) for s in range(seeds) for arm in ARMS]  # seed by seed: a killed run leaves paired seeds
    done = {(s, arm): ctx.store.kv_get(KV, _key(round_no, "train", arm, s)) for s, arm in jobs}
    for n, (s, arm) in enumerate(jobs, start=1):
        if done[(s, arm)] is not None:
            continue
        seed = ctx.config.seed + s
        say(f"training {n}/{len(jobs)}: labeled + the {arm} batch ({sizes[arm][1]} images), seed {seed}")
        trained = ctx.detector.train(train_request(ctx, yamls[arm], str(start),
                                                   ctx.round_dir(round_no) / "dividend" / f"{arm}-seed{s}",
                                                   seed=seed))
        done[(s, arm)] = {"seed": seed, "map50": trained.map50, "map50_95": trained.map50_95,
                          "per_class_ap50": trained.per_class_ap50, "seconds": trained.seconds,
                          "weights": str(trained.weights)}
        ctx.store.kv_set(KV, _key(round_no, "train", arm, s), done[(s, arm)])
        say(f"  {arm}, seed {seed}: mAP50 {trained.map50:.3f}")
        finished_jobs = sum(v is not None for v in done.values())
        _save(ctx, DividendResult(round_no, plan["k"], seeds, plan["strategy"], "training",
                                  f"round {round_no}: {finished_jobs} of {len(jobs)} trainings done; labelwise "
                                  f"dividend -w {ctx.root} goes on", f"labelwise dividend -w {ctx.root}",
                                  trainings_done=finished_jobs))
        crash_point("dividend_between_trainings")
    return _save(ctx, summarise(plan, sizes, baseline, n_val, [[done[(s, arm)] for s in range(seeds)]
                                                               for arm in ARMS], ctx.root))


def summarise(plan: dict[str, Any], sizes: dict[str, tuple[int, int]], baseline: dict[str, Any], n_val: int,
              per_arm: list[list[dict[str, Any]]], root: Path) -> DividendResult:
    """The result from the finished trainings (per arm, per seed: map50, map50_95, per_class_ap50)."""
    base_map = baseline.get("map50")
    arms: dict[str, ArmResult] = {}
    for arm, runs in zip(ARMS, per_arm):
        batch, n_train = sizes[arm]
        classes: dict[str, list[float]] = {}
        for r in runs:
            for name, ap in (r.get("per_class_ap50") or {}).items():
                classes.setdefault(name, []).append(float(ap))
        result = ArmResult(arm, batch, n_train, [float(r["map50"]) for r in runs],
                           [float(r["map50_95"]) for r in runs],
                           {name: sum(v) / len(v) for name, v in classes.items()})
        if base_map is not None and batch:
            result.gain_per_100 = 100.0 * (result.mean_map50 - float(base_map)) / batch
        arms[arm] = result
    comparison = compare_arms(arms["strategy"].map50, arms["random"].map50,
                              names=(f"the strategy ({plan['strategy']})", "random"))
    gs, gr = arms["strategy"].gain_per_100, arms["random"].gain_per_100
    ratio = gs / gr if gs is not None and gr is not None and gr > 0 else None
    s, r = arms["strategy"], arms["random"]
    gains = ("" if gs is None or gr is None else
             f"; gain per 100 labels {gs:+.3f} vs {gr:+.3f}" + (f" ({ratio:.1f}x)" if ratio is not None else ""))
    line = (f"round {plan['round']}, k {plan['k']}, {len(s.map50)} seed(s): strategy ({plan['strategy']}) mAP50 "
            f"{s.mean_map50:.3f} vs random {r.mean_map50:.3f}{gains}; {comparison.verdict}")
    more = "" if len(s.map50) > 1 else f" --seeds 3 measures the noise: labelwise dividend -w {root} --seeds 3"
    return DividendResult(
        plan["round"], plan["k"], len(s.map50), plan["strategy"], "done", line,
        f"labelwise run -w {root} (both batches are in the training set){';' + more if more else ''}",
        trainings_done=2 * len(s.map50), baseline_map50=base_map,
        baseline_per_class_ap50=dict(baseline.get("per_class_ap50") or {}), baseline_source=baseline["source"],
        n_val=n_val, arms=arms, comparison=comparison, ratio=ratio)
