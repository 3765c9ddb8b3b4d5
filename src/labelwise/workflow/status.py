"""Where the loop stands: the status with the next command, the stopping advice, and the reason to stop before the
next selection."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labelwise.workflow import qa as label_qa
from labelwise.workflow.context import WorkspaceContext, finished
from labelwise.workflow.selecting import cold_start_plan


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
    # While a batch is out for annotation: its images as accepted / rejected / skipped / pending (done = accepted +
    # skipped), and every problem the last pull or import found (one line each: task, image, region, why, fix).
    annotation: Any = None  # AnnotationProgress | None
    problems: list[Any] = field(default_factory=list)  # list[Problem]
    last_pull: str | None = None  # when and how the labels were last taken back
    # Labeled images kept out of training because the annotation that counts now was rejected: (image path, why).
    held: list[tuple[str, str]] = field(default_factory=list)
    # `labelwise monitor`: one line on the production images seen and the drift plot (a MonitorSummary); None if
    # it never ran.
    monitor: Any = None
    # Label QA (labelwise.workflow.qa.summary): the latest checked round's open suspects (count, the worst few), how
    # many are held; None when no round was checked.
    qa: dict[str, Any] | None = None
    # The latest `labelwise dividend` experiment in one line (its result, or where it stands); None if never run.
    dividend: str | None = None


def stop_advice(ctx: WorkspaceContext) -> list[Any]:
    """Every stopping rule's verdict on the trained rounds so far (the configured rule is one of them)."""
    from labelwise.stopping import RoundHistory, advise

    trained = [r for r in ctx.store.rounds() if r.map50 is not None]
    history = RoundHistory(
        labeled_counts=[r.n_labeled or 0 for r in trained], map50=[r.map50 for r in trained],
        agreements=[float('nan') if r.agreement is None else r.agreement for r in trained],
    )
    s = ctx.config.stopping
    return advise(history, min_gain=s.min_map_gain, patience=s.patience)


def selection_blocked(ctx: WorkspaceContext) -> str | None:
    """Why no batch can be selected however the model does: the label budget is spent or nothing is left to label.
    Checked before every selection, not only after training: a round whose batch would be empty would otherwise
    close at once and open the next one, forever."""
    counts = ctx.store.counts()
    total = ctx.config.budget.total
    if total is not None and total <= 0:
        return (f"budget.total is {total} in {ctx.root / 'labelwise.yaml'}, so no image can be labeled; set it to "
                "the number of pool images to label in all (or remove it for no cap), then run again")
    if total is not None and counts["pool_labeled"] >= total:
        return f"label budget reached ({counts['pool_labeled']} of {total} labeled)"
    if counts["pool_unlabeled"] == 0:
        if counts["pool_labeled"] + counts["pool_selected"] == 0:
            return f"the pool has no images; add some with `labelwise add -w {ctx.root} IMAGES`"
        return "every pool image is labeled"
    return None


def hard_limit(ctx: WorkspaceContext) -> str | None:
    """A limit set in labelwise.yaml that stops the loop whatever the models do: the budget, the pool, max_rounds."""
    blocked = selection_blocked(ctx)
    if blocked:
        return blocked
    rounds = ctx.store.rounds()
    if ctx.config.stopping.max_rounds and len(rounds) > ctx.config.stopping.max_rounds:
        return f"max_rounds ({ctx.config.stopping.max_rounds}) reached"
    return None


def should_stop(ctx: WorkspaceContext) -> str | None:
    """A reason to stop before the next selection: budget spent, pool empty, max_rounds, or the stopping rule.
    After `resume`, the rule waits for a model trained after the resume: the rounds it judged are the same."""
    limit = hard_limit(ctx)
    if limit:
        return limit
    rule = ctx.config.stopping.rule
    resumed_after = ctx.store.kv_get("loop", "resumed_after_round")
    trained = [r.round for r in ctx.store.rounds() if r.map50 is not None]
    if resumed_after is not None and (not trained or trained[-1] <= resumed_after):
        return None
    if rule != "none":
        for advice in stop_advice(ctx):
            if advice.rule == rule and advice.stop:
                return f"stopping rule '{rule}': {advice.reason}"
    return None


def status(ctx: WorkspaceContext) -> Status:
    """The workspace's counts, round, step, the command for the next step, and the stopping advice."""
    counts = ctx.store.counts()
    current = ctx.store.current_round()
    stopped = finished(ctx)
    trained = [r for r in ctx.store.rounds() if r.map50 is not None]
    last_map = trained[-1].map50 if trained else None
    recorded = ctx.store.kv_get("loop", "finished")
    if stopped:
        step, cmd, msg = "finished", "labelwise report", (f"the loop has finished: {stopped} (to go on anyway: "
                                                          f"labelwise resume -w {ctx.root})")
    elif recorded:  # a stop whose settings were edited since: the next step lifts it
        step, cmd = "resume", "labelwise run"
        msg = (f"the loop stopped ({recorded}), but the stopping settings in labelwise.yaml changed since; "
               "`labelwise run` goes on")
    elif current is None or current.step == "done":
        nxt = "train" if counts["pool_labeled"] else "select"
        step, cmd = nxt, f"labelwise {nxt}" if nxt == "train" else "labelwise select"
        msg = (f"round {(current.round if current else 0) + 1} starts with "
               + ("training" if nxt == "train" else "the first batch (nothing is labeled yet): "
                  + cold_start_plan(ctx)))
    elif current.step == "annotate":
        annotation, problems, last_pull = annotation_state(ctx, current.round)
        step, cmd = "annotate", annotate_command(ctx, current.round, annotation)
        a = annotation
        msg = (f"round {current.round}: {a.done}/{a.total} selected images done ({a.accepted} labeled, {a.skipped} "
               f"skipped and back in the pool), {a.rejected} rejected, {a.pending} pending")
        if a.rejected:
            msg += " (rejected ones must be corrected in the annotation tool; see below)"
    else:
        step, cmd, msg = current.step, f"labelwise {current.step}", f"round {current.round}: next is {current.step}"
    rounds = [{"round": r.round, "step": r.step, "n_labeled": r.n_labeled, "map50": r.map50,
               "map50_95": r.map50_95, "strategy": json.loads(r.strategy or "{}").get("name")}
              for r in ctx.store.rounds()]
    try:
        advice = stop_advice(ctx)
    except Exception as exc:  # advice must never hide the status itself
        advice = [f"stopping advice unavailable: {exc}"]
    if current is None or current.step != "annotate":
        annotation, problems, last_pull = None, [], None
    held = [(str(image.path), f"round {r}: {reason}") for image, r, reason, _since in ctx.store.held()]
    qa = label_qa.summary(ctx)
    from labelwise.workflow.dividend import status_line  # lazily: dividend stands above this module

    return Status(ctx.root, current.round if current else None, step, counts, last_map, cmd, msg,
                  ctx.store.quarantined(), stopped, rounds, advice, annotation, problems, last_pull, held, qa=qa,
                  dividend=status_line(ctx), monitor=monitor_summary(ctx))


def monitor_summary(ctx: WorkspaceContext) -> Any:
    """`labelwise monitor`'s line and drift plot (redrawn when out of date), None if it never ran; a plot that cannot
    be drawn must not hide the status: the line says why."""
    from labelwise.workflow.monitoring import MonitorSummary, summary

    try:
        return summary(ctx)
    except Exception as exc:  # noqa: BLE001 - the status itself comes first
        return MonitorSummary(f"drift unavailable: {exc}", None)


def annotate_command(ctx: WorkspaceContext, round_no: int, progress: Any) -> str:
    """The next command while a batch is out, for the backend labelwise.yaml configures: the folder backend exports
    and imports files; Label Studio and CVAT push, then wait (which pulls). Rejected work comes first."""
    from labelwise.workflow.annotating import TOOL, configured_backend, pushed

    name = configured_backend(ctx)
    ws = f"-w {ctx.root}"
    tool = TOOL.get(name, name)
    if name == "folder":
        folder = Path(dict(ctx.config.annotation or {}).get("path") or ctx.root / "annotation") / f"round-{round_no:03d}"
        labels = folder / "labels"
        if progress.rejected:
            return f"fix the rejected label files listed below, then: labelwise import {labels} {ws}"
        if staged_batch(folder) == {r["sha256"] for r in ctx.store.selection(round_no)}:
            return f"put one YOLO txt per image in {labels}, then: labelwise import {labels} {ws}"
        return f"labelwise export {ws}  (then label, then)  labelwise import LABELS {ws}"
    if pushed(ctx, round_no) is None:
        return f"labelwise annotate push {ws}  (sends the batch to {tool}; then labelwise annotate wait {ws})"
    if progress.rejected:
        return (f"correct the {progress.rejected} rejected image(s) in {tool} (listed below), then: "
                f"labelwise annotate pull {ws}")
    return f"labelwise annotate wait {ws}  (pulls when {tool} has the batch done; then labelwise run {ws})"


def staged_batch(folder: Path) -> set[str] | None:
    """sha256 of the images a staged round folder holds (its manifest), None when there is none."""
    try:
        return {row["sha256"] for row in json.loads((folder / "manifest.json").read_text())["images"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def annotation_state(ctx: WorkspaceContext, round_no: int) -> tuple[Any, list[Any], str | None]:
    """The round's batch as accepted / rejected / skipped / pending, from the store and the problems the last pull
    (or import) found; those problems; and when that pull was."""
    from labelwise.annotation.base import AnnotationProgress
    from labelwise.workflow.annotating import last_pull

    sel = ctx.store.selection(round_no)
    last = last_pull(ctx, round_no)
    problems = last["problems"] if last else []
    rejected = {p.sha256 for p in problems if p.sha256 is not None} | {
        image.sha256 for image, *_ in ctx.store.held(kind="rejected")}
    counts = {"accepted": 0, "rejected": 0, "skipped": 0, "pending": 0}
    for r in sel:
        status = "rejected" if r["sha256"] in rejected else {"labeled": "accepted"}.get(r["outcome"], r["outcome"])
        counts[status if status in counts else "pending"] += 1
    when = f"{last['at']} ({last['via'] or 'pull'})" if last else None
    return AnnotationProgress(total=len(sel), **counts), problems, when
