"""The round state machine: take the next step, or run as far as possible (to the budget, the stopping rule, a
number of rounds, or a batch that waits for annotators). Each step persists its result and the next step in the
store, so a killed process resumes here by running the same command again."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labelwise.workflow import annotating, scoring, selecting, training
from labelwise.workflow.context import (
    LoopError,
    WorkspaceContext,
    clear_stop,
    crash_point,
    finished,
    open_round,
    record_stop,
)
from labelwise.workflow.status import hard_limit, selection_blocked, should_stop

STEPS = ("train", "score", "select", "annotate", "done")


@dataclass
class RoundSummary:
    round: int
    n_labeled: int | None
    map50: float | None
    selected: list[dict[str, Any]]


def step(ctx: WorkspaceContext) -> str | None:
    """Take the next step. Returns the name of the step done, or None when the loop waits or has finished."""
    if finished(ctx):
        return None
    round_no, name = open_round(ctx)
    if name == "train":
        training.train(ctx)
    elif name == "score":
        scoring.score(ctx)
    elif name == "select":
        selecting.select(ctx)
    elif name == "annotate":
        report = annotate(ctx)
        if not report.complete:
            return None
    return name


def annotate(ctx: WorkspaceContext) -> annotating.ImportReport:
    """The annotate step: push the batch to the configured backend (idempotent), then take back what is finished.

    A push is never labeled work: right after the first push of a batch nothing is pulled (nobody can have finished
    anything; a backend that listed the model's pre-annotations as labels would otherwise label the whole batch with
    them), and the report says to wait for the annotators. A later call pulls."""
    backend = annotating.backend(ctx)
    current = annotating.batch(ctx)
    before = annotating.pushed(ctx, current.round, backend.name)
    report = annotating.push(ctx, backend)
    crash_point("after_push")
    # pushed before this version recorded pushes: the backend had everything already
    earlier = before is not None or (report is not None and report.sent == 0 and report.already_there > 0)
    if not earlier:
        return annotating.just_pushed(ctx, current, backend, report)
    return annotating.pull(ctx, backend)


def run(ctx: WorkspaceContext, oracle: Path | None = None, rounds: int | None = None,
        on_round: Callable[[RoundSummary], None] | None = None,
        on_labels: Callable[[annotating.ImportReport], None] | None = None) -> str:
    """Advance as far as possible: through `rounds` completed rounds (default: until the budget or the
    stopping rule), with the labels in `oracle` standing in for the annotators when given.
    `on_labels` gets the report of every pull (its problems, counts and next command). Returns why it stopped."""
    completed = 0
    while True:
        if finished(ctx):
            return finished(ctx)  # type: ignore[return-value]
        round_no, name = open_round(ctx)
        if name == "annotate" and not ctx.store.selection(round_no):
            name = "select"  # an empty batch (saved before empty selections were refused): select it again
        if name == "score":
            reason = should_stop(ctx)
            if reason:
                record_stop(ctx, reason, close_round=round_no)
                return reason
        if name == "select":
            # The stopping rule waits for the next score step; a spent budget or an empty pool stops now, or
            # every round would select nothing, complete at once, and open the next one.
            reason = selection_blocked(ctx)
            if reason:
                record_stop(ctx, reason)
                return reason
            selecting.select(ctx)
        elif name == "annotate" and oracle is not None:
            annotating.export(ctx)
            crash_point("after_push")
            report = annotating.import_labels(ctx, oracle)
            if not report.complete:
                missing = report.pending
                raise LoopError(f"the oracle {oracle} has no labels for {missing} selected images of round "
                                f"{round_no}; {'; '.join(str(p) for p in report.problems[:3])}")
        elif name == "annotate":
            report = annotate(ctx)
            if on_labels is not None:
                on_labels(report)
            if not report.complete:
                return waiting_message(report)
        else:
            step(ctx)
        current = ctx.store.current_round()
        if current is not None and current.step == "done" and current.round == round_no:
            completed += 1
            if on_round:
                on_round(RoundSummary(round_no, current.n_labeled, current.map50,
                                      ctx.store.selection(round_no)))
            if rounds is not None and completed >= rounds:
                return f"{completed} round(s) done"


def waiting_message(report: annotating.ImportReport) -> str:
    """Why `run` stops at an unfinished batch, with the round's counts and the command to run next."""
    p = report.progress
    counts = "" if p is None else (f": {p.done}/{p.total} done ({p.accepted} accepted, {p.skipped} skipped), "
                                   f"{p.rejected} rejected, {p.pending} pending")
    if report.needs_correction:
        return f"round {report.round} has rejected annotations{counts}; next: {report.next_command}"
    pushed = (f"; just pushed ({report.push}), so nothing was pulled yet" if report.push is not None else "")
    return (f"waiting for annotations of round {report.round}{counts}{pushed}; next: {report.next_command}, "
            "then labelwise run")


def resume(ctx: WorkspaceContext) -> str:
    """Lift a recorded stop so that `run` goes on. A stopping rule's verdict is set aside until a model is trained
    on more labels (the next verdict judges new rounds); a hard limit (budget, pool, max_rounds) still holds, and
    the message says which setting to change. Returns what happened, in words."""
    reason = clear_stop(ctx)
    if not reason:
        return "the loop was not stopped; nothing to resume"
    trained = [r.round for r in ctx.store.rounds() if r.map50 is not None]
    ctx.store.kv_set("loop", "resumed_after_round", trained[-1] if trained else 0)
    message = f"resumed: the stop ({reason}) is lifted"
    limit = hard_limit(ctx)
    if limit:
        message += (f"; but {limit}, so `labelwise run` will stop again: change it in "
                    f"{ctx.root / 'labelwise.yaml'} first")
    return message
