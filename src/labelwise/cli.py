"""The `labelwise` command: a thin Typer + Rich layer over `labelwise.loop.Workspace` (the Python API).

Each command is a few lines: parse, call the API, print. Errors that a user can fix are printed as one clear line
with exit code 2; nothing here asks for input. Commands that take labels back (`import`, `annotate pull`, `annotate
wait`, `run`) print every problem on its own line (task, image, region, why, what to do) and exit with code 1 while
the round has rejected annotations (or `annotate wait` timed out): someone has to act before the round can finish.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from labelwise.annotation.base import AnnotationError, RetireReport
from labelwise.config import ConfigError, load_config
from labelwise.detectors import ultralytics as yolo  # DEFAULT_MODEL, check_model_available; imports no ultralytics
from labelwise.detectors.base import DetectorError
from labelwise.engines import ENGINES, EngineError
from labelwise.lock import WorkspaceBusy, workspace_lock
from labelwise.loop import AddReport, ImportReport, LoopError, RoundSummary, Workspace, init_state
from labelwise.presets import resolve as resolve_strategy
from labelwise.simulate import SimulationError

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Active learning for object detection: label the images your detector learns most from.")
annotate_app = typer.Typer(no_args_is_help=True, help="Send the batch to the annotation backend and take labels back.")
app.add_typer(annotate_app, name="annotate")
qa_app = typer.Typer(no_args_is_help=True, help="Label QA: the images of returned batches whose label most likely "
                                                 "holds an error (a missing box, a wrong class, a badly placed box).")
app.add_typer(qa_app, name="qa")
out = Console()
err = Console(stderr=True)

WorkspaceOpt = Annotated[Path, typer.Option("--workspace", "-w", help="The workspace folder.")]
ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", min=1, help="CPU threads for training and scoring (default: `threads:` in labelwise.yaml, else "
                             "$OMP_NUM_THREADS, else the usable cores).")]
NEEDS_SOMEONE = 1  # exit code: the round has rejected annotations to correct (or waiting timed out)


def friendly(func):
    """Turn the errors a user can fix into one red line and exit code 2 (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (ConfigError, LoopError, DetectorError, AnnotationError, SimulationError, WorkspaceBusy,
                EngineError, FileNotFoundError, ValueError) as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def writes(func):
    """The command changes the workspace: it runs holding the workspace's lock (a second writer refuses at once,
    naming the process that holds it; see labelwise.lock), and not on a workspace whose init has not finished."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        root = Path(kwargs.get("workspace") or ".")
        with workspace_lock(root):
            if init_state(root) == "started":
                raise LoopError(f"{root.absolute()} is half-made: its `labelwise init` was stopped before it "
                                "finished (or, from Python, `Workspace.create` was not followed by "
                                "`ingest_sources()`); run the same `labelwise init` again to complete it")
            return func(*args, **kwargs)

    return wrapper


def _print_add(report: AddReport) -> None:
    out.print(f"added {report.added} images ({report.labeled} with labels)")
    if report.duplicates:
        out.print(f"[yellow]{len(report.duplicates)} duplicate file(s)[/yellow] (same bytes as an image already in "
                  "the pool; kept once):")
        for path, first in report.duplicates[:10]:
            out.print(f"  {path}  =  {first}", highlight=False)
    if report.quarantined:
        out.print(f"[yellow]{len(report.quarantined)} file(s) quarantined[/yellow] (see `labelwise status`):")
        for _path, reason in report.quarantined[:10]:
            out.print(f"  {reason}", highlight=False)
    if report.reserved_for_val:
        out.print(f"reserved {report.reserved_for_val} pool images at random as the validation set: they go to the "
                  "annotators with the first batch and are never trained on (give --val to use your own)")
    if report.unlabeled_in_labeled_source:
        out.print(f"{report.unlabeled_in_labeled_source} image(s) in a labeled source had no label file; they joined "
                  "the unlabeled pool")


@app.command()
@friendly
def init(
    directory: Annotated[Path, typer.Argument(help="Folder to create the workspace in.")],
    images: Annotated[list[Path], typer.Option("--images", help="Image files or folders for the pool.")],
    classes: Annotated[Optional[str], typer.Option(help="Class names, comma separated, in id order.")] = None,
    data: Annotated[Optional[Path], typer.Option(help="An Ultralytics data.yaml: class names and val split.")] = None,
    labeled: Annotated[Optional[list[Path]], typer.Option(help="Already labeled images (YOLO labels beside).")] = None,
    val: Annotated[Optional[Path], typer.Option(help="Validation images with YOLO labels beside them.")] = None,
    model: Annotated[str, typer.Option(help="Checkpoint, Ultralytics model name or model YAML to start from (default: "
                                            "the pretrained nano checkpoint, downloaded by Ultralytics when online; "
                                            "a YAML trains from scratch).")] = yolo.DEFAULT_MODEL,
    imgsz: Annotated[int, typer.Option(help="Image size for training and scoring.")] = 320,
    per_round: Annotated[int, typer.Option(help="Images to select per round.")] = 50,
    strategy: Annotated[str, typer.Option(help="Query strategy or preset (default: labelwise's default).")] = "default",
) -> None:
    """Create a workspace: labelwise.yaml and the store, then register the images. A rerun continues an init that
    was stopped half-way."""
    names = [c.strip() for c in classes.split(",")] if classes else None
    yolo.check_model_available(model)  # first: offline, nothing is created (not even the lock file)
    if init_state(directory) == "started":
        out.print(f"continuing the workspace an earlier `labelwise init` left half-made in {directory} (with other "
                  "settings it starts over)", highlight=False)
    # The lock as soon as there is a folder to hold it in: around everything when it exists (a second init must
    # not start over a half-made workspace that a live init is filling), else from its creation on.
    existed = directory.is_dir()
    with workspace_lock(directory):
        ws = Workspace.create(directory, images=list(images), classes=names, data_yaml=data,
                              labeled=labeled or [], val=val, model=model, imgsz=imgsz,
                              budget={"per_round": per_round}, strategy=resolve_strategy(strategy))
        with contextlib.nullcontext() if existed else workspace_lock(ws.root):
            _print_add(ws.ingest_sources())
    out.print(f"workspace ready: {ws.root}\nnext: labelwise status -w {ws.root}", highlight=False)


@app.command()
@friendly
@writes
def add(paths: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
        workspace: WorkspaceOpt = Path("."),
        labeled: Annotated[bool, typer.Option(help="The images come with YOLO labels.")] = False) -> None:
    """Grow the pool with more images."""
    _print_add(Workspace(workspace).add(list(paths), labeled=labeled))


@app.command()
@friendly
def status(workspace: WorkspaceOpt = Path(".")) -> None:
    """Where the loop stands and the command for the next step."""
    s = Workspace(workspace).status()
    c = s.counts
    table = Table(title=f"labelwise workspace {s.workspace}", show_header=False)
    table.add_row("round", str(s.round or 0))
    table.add_row("labeled (pool / val)", f"{c['pool_labeled']} / {c['val_labeled']}")
    table.add_row("unlabeled", str(c["pool_unlabeled"]))
    table.add_row("selected, awaiting labels", str(c["pool_selected"]))
    if s.annotation is not None:
        a = s.annotation
        table.add_row("batch", f"{a.done}/{a.total} done ({a.accepted} labeled, {a.skipped} skipped), "
                               f"{a.rejected} rejected, {a.pending} pending")
    table.add_row("last mAP50", "-" if s.last_map50 is None else f"{s.last_map50:.3f}")
    table.add_row("quarantined", str(c["quarantined"]))
    if s.held:
        table.add_row("held out of training", str(len(s.held)))
    table.add_row("duplicate files", str(c["duplicate_paths"]))
    if s.qa is not None:
        table.add_row("label QA suspects", f"{s.qa['open']} open in round {s.qa['round']}"
                      + (f", {s.qa['held']} held out of training" if s.qa["held"] else ""))
    table.add_row("state", s.message)
    if s.dividend:
        table.add_row("dividend", escape(s.dividend))
    table.add_row("next", f"[bold]{s.next_command}[/bold]")
    out.print(table)
    for advice in s.advice:
        text = advice if isinstance(advice, str) else f"{advice.rule}: {'STOP' if advice.stop else 'continue'} - " \
                                                      f"{advice.reason}"
        out.print(f"  stopping advice  {text}", highlight=False)
    if s.monitor is not None:
        out.print(f"  monitor  {escape(s.monitor.line)}", highlight=False, soft_wrap=True)
        if s.monitor.plot is not None:
            out.print(f"  drift plot  {s.monitor.plot}", highlight=False, soft_wrap=True)
    if s.quarantined:
        out.print("[yellow]quarantined files:[/yellow]")
        for _path, reason in s.quarantined:
            out.print(f"  {reason}", highlight=False)
    if s.problems:
        out.print(f"[yellow]rejected annotations[/yellow] (as of the last pull, {escape(s.last_pull or '?')}):")
        _print_problems(s.problems)
    if s.held:
        out.print("[yellow]held out of training[/yellow] (a valid annotation pulled releases them; a label QA hold: "
                  "labelwise qa confirm, or a changed label):")
        for path, why in s.held:
            err.print(f"  [yellow]held:[/yellow] {escape(path)} ({escape(why)})", highlight=False, soft_wrap=True)
    if s.qa is not None and s.qa["open"]:
        out.print(f"[yellow]label QA suspects[/yellow] of round {s.qa['round']}, worst first (all: "
                  f"{escape(str(s.qa['csv']))}; review: labelwise annotate push --review; keep: labelwise qa confirm):",
                  highlight=False, soft_wrap=True)
        for line in s.qa["lines"]:
            out.print(f"  {escape(line)}", highlight=False, soft_wrap=True)
        if s.qa["open"] > len(s.qa["top"]):
            out.print(f"  ... and {s.qa['open'] - len(s.qa['top'])} more (labelwise qa list)", highlight=False)


@app.command()
@friendly
@writes
def train(workspace: WorkspaceOpt = Path(".")) -> None:
    """Train the round's model on every labeled image."""
    ws = Workspace(workspace)
    ws.train()
    r = ws.store.current_round()
    out.print(f"round {r.round}: trained on {r.n_labeled} labeled images, mAP50 {r.map50:.3f}, "
              f"mAP50-95 {r.map50_95:.3f}")


@app.command()
@friendly
@writes
def score(workspace: WorkspaceOpt = Path("."), threads: ThreadsOpt = None,
          engine: Annotated[Optional[str], typer.Option(
              "--engine", help="local (this process) or ray (a Ray cluster; pip install 'labelwise[ray]'); "
                               "default: score.engine in labelwise.yaml.")] = None,
          address: Annotated[Optional[str], typer.Option(
              "--address", help="The Ray cluster for --engine ray: auto, ray://HOST:10001 or HOST:6379 (default: "
                                "score.ray.address, else a Ray started for this run).")] = None) -> None:
    """Score the pool with the round's model (cached: a second run costs nothing)."""
    if engine is not None and engine not in ENGINES:
        raise typer.BadParameter(f"{engine!r} is not an engine: use one of {', '.join(ENGINES)}",
                                 param_hint="--engine")
    chosen = engine or load_config(workspace).score.engine
    if address is not None and chosen != "ray":
        raise typer.BadParameter("--address is for the Ray engine: add --engine ray (or set score.engine: ray)",
                                 param_hint="--address")
    if chosen == "local":
        _hint_if_cpu_busy()
    report = Workspace(workspace, threads=threads).score_round(engine=engine, address=address)
    if report.needed_inference:
        out.print(f"scored {report.scored} images with the {report.engine} engine in {report.seconds:.1f} s"
                  + (f" ({report.skipped} already scored)" if report.skipped else ""), highlight=False)
    else:
        out.print("every image was already scored by this model (cache)")
    if report.quarantined:
        out.print(f"[yellow]{len(report.quarantined)} image(s) quarantined[/yellow] (see `labelwise status`):")
        for _path, reason in report.quarantined[:10]:
            out.print(f"  {escape(reason)}", highlight=False)


@app.command()
@friendly
@writes
def select(workspace: WorkspaceOpt = Path("."),
           k: Annotated[Optional[int], typer.Option("--k", help="Batch size (default: budget.per_round).")] = None,
           strategy: Annotated[Optional[str], typer.Option(help="Override the round's strategy.")] = None) -> None:
    """Pick the round's batch. Picking again takes the earlier batch's unlabeled tasks back from the annotation tool
    (and says which)."""
    ws = Workspace(workspace)
    retired: list[tuple[str, RetireReport]] = []
    rows = ws.select(k=k, strategy=strategy, on_retire=lambda where, report: retired.append((where, report)))
    table = Table(title=f"selected {len(rows)} images")
    for col in ("rank", "score", "image", "reason"):
        table.add_column(col)
    for r in rows[:15]:
        table.add_row(str(r["rank"]), f"{r['score']:.3f}", Path(r["path"]).name, r["reason"])
    out.print(table)
    for where, report in retired:
        _print_retired(where, report, {r["sha256"] for r in rows})
    out.print(f"next: {escape(ws.status().next_command)}", highlight=False, soft_wrap=True)


def _print_retired(where: str, report: RetireReport, new_batch: set[str]) -> None:
    """What re-selecting took back from the annotators: one line per image of the earlier batch."""
    out.print(f"earlier batch of round {report.round} in {escape(where)}: removed {len(report.removed)} unlabeled "
              f"task(s), kept {len(report.kept)}, {len(report.missing)} not there", highlight=False, soft_wrap=True)
    for line in report.details:
        out.print(f"  {escape(line)}", highlight=False, soft_wrap=True)
    dropped = set(report.kept) - new_batch
    if dropped:
        err.print(f"  [yellow]note:[/yellow] {len(dropped)} image(s) of the earlier batch were annotated in "
                  f"{escape(where)} but are not in the new batch: their work stays there and is not taken (pull "
                  "before selecting again to keep it)", highlight=False, soft_wrap=True)


@app.command()
@friendly
@writes
def export(workspace: WorkspaceOpt = Path(".")) -> None:
    """Stage the batch as a folder of images plus a manifest (JSON and CSV) with every score and rank."""
    folder = Workspace(workspace).export()
    out.print(f"staged in {folder}\nput one YOLO txt per image in {folder / 'labels'}, then: "
              f"labelwise import {folder / 'labels'}", highlight=False)


@app.command("import")
@friendly
@writes
def import_(labels: Annotated[Path, typer.Argument(help="Folder (or .zip / .tar.gz) of YOLO txt files for the batch.")],
            workspace: WorkspaceOpt = Path(".")) -> None:
    """Take labels back for the staged images; partial imports are fine. Exits 1 while a label file is refused."""
    _finish_labels(Workspace(workspace).import_labels(labels), "imported")


@app.command()
@friendly
@writes
def run(workspace: WorkspaceOpt = Path("."),
        oracle: Annotated[Optional[Path], typer.Option(help="YOLO labels standing in for the annotators.")] = None,
        rounds: Annotated[Optional[int], typer.Option(help="Stop after this many completed rounds.")] = None,
        threads: ThreadsOpt = None) -> None:
    """Advance as far as possible (to the budget or the stopping rule with --oracle). Exits 1 when it stops at a
    batch with rejected annotations."""
    _hint_if_cpu_busy()
    ws = Workspace(workspace, threads=threads)
    pulls: list[ImportReport] = []

    def on_labels(report: ImportReport) -> None:
        pulls.append(report)
        if report.imported or report.skipped or report.problems or report.held or report.released or report.notes:
            _print_labels(report, "pulled", next_line=False)

    reason = ws.run(oracle=oracle, rounds=rounds, on_round=_print_round, on_labels=on_labels)
    out.print(reason, highlight=False, soft_wrap=True)
    if pulls and pulls[-1].needs_correction:
        raise typer.Exit(NEEDS_SOMEONE)


@app.command()
@friendly
@writes
def resume(workspace: WorkspaceOpt = Path(".")) -> None:
    """Lift a recorded stop (stopping rule, budget) so that `labelwise run` goes on."""
    out.print(Workspace(workspace).resume(), highlight=False)


@app.command()
@friendly
@writes
def dividend(workspace: WorkspaceOpt = Path("."),
             k: Annotated[Optional[int], typer.Option(
                 "--k", min=1, help="Images in each batch, the strategy's and the random one (default 200; a "
                                    "rerun goes on with the experiment's own).")] = None,
             seeds: Annotated[Optional[int], typer.Option(
                 "--seeds", min=1, help="Trainings per model on different seeds (default 1; 3 measures the "
                                        "seed-to-seed noise). A rerun with more trains only the new seeds.")] = None,
             oracle: Annotated[Optional[Path], typer.Option(
                 help="YOLO labels standing in for the annotators.")] = None,
             threads: ThreadsOpt = None) -> None:
    """The article's first experiment on your data: label the strategy's k images and k random ones, train a model
    on each (same start, same settings), compare mAP50 and the gain per 100 labels on the validation split. Both
    batches stay labeled. Resumable: run it again after labeling, or after a kill."""
    _hint_if_cpu_busy()
    ws = Workspace(workspace, threads=threads)
    retired: list[tuple[str, RetireReport]] = []
    result = ws.dividend(k=k, seeds=seeds, oracle=oracle,
                         on_event=lambda text: out.print(escape(text), highlight=False, soft_wrap=True),
                         on_retire=lambda where, report: retired.append((where, report)))
    for where, report in retired:
        _print_retired(where, report, {r["sha256"] for r in ws.store.selection(result.round)})
    if result.labels is not None and (result.labels.problems or result.labels.held or result.labels.notes):
        _print_labels(result.labels, "pulled", next_line=False)
    if result.state != "done":
        if result.labels is not None and result.labels.push is not None:
            out.print(f"pushed {escape(str(result.labels.push))}", highlight=False, soft_wrap=True)
        out.print(escape(result.line), highlight=False, soft_wrap=True)
        out.print(f"next: {escape(result.next_command)}", highlight=False, soft_wrap=True)
        if result.labels is not None and result.labels.needs_correction:
            raise typer.Exit(NEEDS_SOMEONE)
        return
    _print_dividend(result)


def _print_dividend(result) -> None:
    """The experiment's result: per arm mAP50, gain per 100 labels and AP50 per class, then the noise verdict."""
    s, r = result.arms["strategy"], result.arms["random"]
    seeds = f"{result.seeds} seed{'s' if result.seeds > 1 else ''}"
    table = Table(title=f"dividend, round {result.round}: {escape(result.strategy)} vs random, {seeds}, "
                        f"validation split of {result.n_val} images")
    for col in ("model", "batch", "trained on", "mAP50", "gain / 100 labels", *s.per_class_ap50):
        table.add_column(escape(col))

    def fmt(value, spec=".3f"):
        return "-" if value is None else format(value, spec)

    seeds_text = lambda arm: "" if len(arm.map50) < 2 else " (" + ", ".join(f"{m:.3f}" for m in arm.map50) + ")"  # noqa: E731
    table.add_row("current model", "", "", fmt(result.baseline_map50), "",
                  *(fmt(result.baseline_per_class_ap50.get(c)) for c in s.per_class_ap50))
    for name, arm in ((f"+ strategy batch ({result.strategy})", s), ("+ random batch", r)):
        table.add_row(escape(name), str(arm.batch), str(arm.n_train), fmt(arm.mean_map50) + seeds_text(arm),
                      fmt(arm.gain_per_100, "+.3f"), *(fmt(arm.per_class_ap50.get(c)) for c in s.per_class_ap50))
    out.print(table)
    out.print(f"current model's mAP50: {escape(result.baseline_source)}", highlight=False, soft_wrap=True)
    out.print(escape(result.comparison.text), highlight=False, soft_wrap=True)
    if result.ratio is not None:
        out.print(f"gain per label: the strategy's is {result.ratio:.1f}x random's", highlight=False)
    else:
        out.print("gain per label: no ratio (the random batch did not raise mAP50 over the current model)",
                  highlight=False)
    out.print("both batches stay labeled and join the training set", highlight=False)
    out.print(f"next: {escape(result.next_command)}", highlight=False, soft_wrap=True)


@app.command()
@friendly
def monitor(
    images: Annotated[list[str], typer.Option(
        "--images", help="Production images: files, folders or glob patterns (quoted, e.g. 'cam/**/*.jpg'); "
                         "repeatable.")],
    workspace: WorkspaceOpt = Path("."),
    watch: Annotated[bool, typer.Option(
        "--watch", help="Then keep watching the folders (a glob: its folder) and handle every image written there, "
                        "until Ctrl-C.")] = False,
    model: Annotated[Optional[Path], typer.Option(
        "--model", help="The deployed checkpoint (default: the last round's trained weights).")] = None,
    threads: ThreadsOpt = None,
) -> None:
    """Score new production images with the deployed model and flag the uncertain, novel and rare-class ones into the
    pool for the next `labelwise run` (at most monitor.daily_cap a day, near duplicates left out). Every image is
    recorded once by content: a rerun, or the same image seen again, costs no inference."""
    root = Path(workspace)
    if not watch:
        report, plot = _monitor_once(workspace=workspace, images=images, model=model, threads=threads)
        _print_monitor(report, root, plot)
        if report.interrupted:
            raise typer.Exit(130)
        return
    writes(lambda workspace: None)(workspace=workspace)  # not a half-made workspace, nobody else writing now
    ws = Workspace(workspace, threads=threads)
    err.print(f"watching {', '.join(images)} (Ctrl-C stops)", highlight=False, soft_wrap=True)

    def on_batch(report) -> None:
        import time

        out.print(f"{time.strftime('%H:%M:%S')}  {escape(report.line())}", highlight=False, soft_wrap=True)
        for _path, reason in report.unreadable[:10]:
            err.print(f"  [yellow]unreadable:[/yellow] {escape(reason)}", highlight=False, soft_wrap=True)

    report = ws.watch(images, model=model, on_batch=on_batch,
                      lock=functools.partial(workspace_lock, root, "labelwise monitor --watch"))
    from labelwise.workflow.monitoring import drift_plot

    out.print("stopped watching" + (" (Ctrl-C)" if report.interrupted else ""), highlight=False)
    _print_monitor(report, root, drift_plot(ws.ctx), unreadable=False)


@writes
def _monitor_once(*, workspace: Path, images: list[str], model: Path | None, threads: int | None):
    """One `labelwise monitor` pass, holding the workspace's lock; (report, drift plot)."""
    from labelwise.workflow.monitoring import drift_plot

    ws = Workspace(workspace, threads=threads)
    report = ws.monitor(images, model=model)
    return report, drift_plot(ws.ctx)


def _print_monitor(report, root: Path, plot: Path | None, *, unreadable: bool = True) -> None:
    out.print(escape(report.line()), highlight=False, soft_wrap=True)
    for _path, reason in report.unreadable[:10] if unreadable else []:
        err.print(f"  [yellow]unreadable:[/yellow] {escape(reason)}", highlight=False, soft_wrap=True)
    if plot is not None:
        out.print(f"drift plot: {plot}", highlight=False, soft_wrap=True)
    if report.interrupted:
        out.print("stopped by Ctrl-C: what was recorded stays; run the same command again to go on", highlight=False)
    if report.flagged:
        out.print(f"next: labelwise run -w {root}  (the flagged images are in the pool, unlabeled)", highlight=False,
                  soft_wrap=True)


def _print_problems(problems) -> None:
    """Every problem on its own line, as the backend worded it: task, image, region, why, what to do."""
    for problem in problems:
        err.print(f"  [yellow]rejected:[/yellow] {escape(str(problem))}", highlight=False, soft_wrap=True)


def _print_held(report: ImportReport) -> None:
    """Images held out of training (their pulled label is out of date), and those a valid annotation released."""
    newly = set(report.newly_held)
    for name, why in report.held:
        state = "now held out of training" if name in newly else "still held out of training"
        err.print(f"  [yellow]{state}:[/yellow] image {escape(name)}: {escape(why)}; it trains again once a valid "
                  "annotation is pulled", highlight=False, soft_wrap=True)
    for name in report.released:
        out.print(f"  released: image {escape(name)} has a valid annotation again and is back in training",
                  highlight=False, soft_wrap=True)


def _print_labels(report: ImportReport, what: str, *, next_line: bool = True) -> None:
    """What a pull / import took, where the round stands, every problem, and what to run next."""
    p = report.progress
    took = f"{what} {report.imported} label(s)" + (f", {report.skipped} newly skipped" if report.skipped else "")
    counts = "" if p is None else (f"; {p.done}/{p.total} done ({p.accepted} accepted, {p.skipped} skipped), "
                                   f"{p.rejected} rejected, {p.pending} pending")
    out.print(f"round {report.round}: {took}{counts}", highlight=False, soft_wrap=True)
    if report.problems:
        out.print(f"[yellow]{len(report.problems)} problem(s)[/yellow]: the image(s) stay in the batch until "
                  "corrected")
    _print_problems(report.problems)
    _print_held(report)
    _print_qa(report.qa)
    for note in report.notes:
        err.print(f"  [yellow]note:[/yellow] {escape(note)}", highlight=False, soft_wrap=True)
    if report.complete:
        out.print(f"round complete: every image of round {report.round} is labeled or skipped")
    if next_line:
        out.print(f"next: {escape(report.next_command)}", highlight=False, soft_wrap=True)


def _print_qa(qa_report) -> None:
    """What label QA found in the labels just taken: the suspects, worst first, and what it held or released."""
    if qa_report is None:
        return
    lines = qa_report.lines()
    for i, line in enumerate(lines):
        target = err if i == 0 and qa_report.skipped else out
        target.print(escape(line), highlight=False, soft_wrap=True)


def _finish_labels(report: ImportReport, what: str) -> None:
    """Print a pull / import and exit 1 while the round has rejected work."""
    _print_labels(report, what)
    if report.needs_correction:
        raise typer.Exit(NEEDS_SOMEONE)


def _hint_if_cpu_busy() -> None:
    """One line before long CPU work when other processes already keep every usable core busy: our threads would
    wait for theirs, and fewer threads share the CPU fairly."""
    from labelwise.cores import load_hint, usable_cores

    hint = load_hint(usable_cores())
    if hint:
        err.print(f"[yellow]note:[/yellow] {hint}", highlight=False, soft_wrap=True)


def _print_round(summary: RoundSummary) -> None:
    trained = f"trained on {summary.n_labeled}, mAP50 {summary.map50:.3f}; " if summary.map50 is not None else ""
    out.print(f"round {summary.round}: {trained}selected {len(summary.selected)}")


@annotate_app.command("push")
@friendly
@writes
def annotate_push(workspace: WorkspaceOpt = Path("."),
                  new_project: Annotated[bool, typer.Option(
                      "--new-project", help="Label Studio: forget the remembered project (e.g. it was deleted) "
                                            "and create a new one with the round's unfinished images only.")
                  ] = False,
                  review: Annotated[bool, typer.Option(
                      "--review", help="Send the label QA suspects back for a second look instead: the folder "
                                       "backend stages them in the round folder's review/, Label Studio marks their "
                                       "tasks (tab 'labelwise review'). Take the result with annotate pull --review."
                  )] = False) -> None:
    """Send the batch (with the model's boxes as pre-annotations) to the configured backend; images already labeled
    or skipped are not sent anew."""
    ws = Workspace(workspace)
    if review:
        if new_project:
            raise typer.BadParameter("--review sends the suspects of a pushed round; it does not go with "
                                     "--new-project", param_hint="--review")
        for line in ws.push_review().lines():
            out.print(escape(line), highlight=False, soft_wrap=True)
        out.print(f"next: correct the labels there, then: labelwise annotate pull --review -w {ws.root}",
                  highlight=False, soft_wrap=True)
        return
    report = ws.push(new_project=new_project)
    if report is None:
        out.print(f"pushed round {ws.batch().round} to {ws.backend().name}")
    else:
        out.print(f"pushed {escape(str(report))}", highlight=False, soft_wrap=True)
    out.print(f"next: {escape(ws.status().next_command)}", highlight=False, soft_wrap=True)


@annotate_app.command("status")
@friendly
def annotate_status(workspace: WorkspaceOpt = Path(".")) -> None:
    """How far the batch is on the backend (done = accepted + skipped), and every rejected annotation. Writes
    nothing."""
    report = Workspace(workspace).check_annotations()
    p = report.progress
    out.print(f"round {report.round}: {p.done}/{p.total} done ({p.accepted} accepted, {p.skipped} skipped), "
              f"{p.rejected} rejected, {p.pending} pending", highlight=False)
    _print_problems(report.problems)
    _print_held(report)
    out.print(f"next: {escape(report.next_command)}", highlight=False, soft_wrap=True)


@annotate_app.command("wait")
@friendly
@writes
def annotate_wait(workspace: WorkspaceOpt = Path("."),
                  timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 3600.0,
                  interval: Annotated[float, typer.Option(help="First polling interval, seconds.")] = 2.0) -> None:
    """Wait (polling with back-off) until the batch is done, showing progress; then pull. Stops early when only
    rejected annotations are left (waiting cannot fix them) and exits 1, listing each."""
    report = Workspace(workspace).wait(timeout=timeout, interval=interval)
    _print_labels(report, "pulled")
    if report.timed_out:
        err.print(f"timed out after {timeout:g} s; the labels done so far were pulled. Run it again to keep waiting.")
    if report.needs_correction or report.timed_out:
        raise typer.Exit(NEEDS_SOMEONE)


@annotate_app.command("pull")
@friendly
@writes
def annotate_pull(workspace: WorkspaceOpt = Path("."),
                  review: Annotated[bool, typer.Option(
                      "--review", help="Take what the reviewers did with the label QA suspects sent by annotate "
                                       "push --review: corrected labels go in, labels returned unchanged are "
                                       "confirmed.")] = False) -> None:
    """Take the finished labels into the store (idempotent). Exits 1 while the batch has rejected annotations."""
    if review:
        result = Workspace(workspace).pull_review()
        for line in result.lines():
            out.print(escape(line), highlight=False, soft_wrap=True)
        if result.labels is not None:
            _print_labels(result.labels, "reviewed", next_line=False)
        return
    _finish_labels(Workspace(workspace).pull(), "pulled")


@app.command()
@friendly
def demo(directory: Annotated[Path, typer.Option("--dir", help="Where to put the demo.")] = Path("demo-workspace"),
         rounds: Annotated[int, typer.Option(help="Rounds after the random seed round.")] = 3,
         strategy: Annotated[str, typer.Option(help="Query strategy or preset.")] = "default",
         epochs: Annotated[int, typer.Option(help="Training epochs per round.")] = 20) -> None:
    """Run the loop on a built-in synthetic scenario dataset, with its ground truth as the annotators."""
    from labelwise.demo import run_demo

    run_demo(directory, rounds=rounds, strategy=strategy, epochs=epochs, console=out)


@app.command()
@friendly
def simulate(
    data: Annotated[Path, typer.Option("--data", help="The labeled dataset's data.yaml (train = pool, val = eval).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder; a rerun resumes what is there.")] = Path(
        "simulation"),
    strategies: Annotated[str, typer.Option(help="Strategies to compare, comma separated: strategy names, preset "
                                                 "names (e.g. default, article) or labels from --variants.")
                          ] = "random,default",
    seeds: Annotated[int, typer.Option(help="Number of seeds (0..N-1); each gives every strategy the same "
                                            "initial set.")] = 3,
    initial: Annotated[int, typer.Option(help="Size of the initial labeled set.")] = 50,
    per_round: Annotated[int, typer.Option(help="Images labeled per round after the initial set.")] = 50,
    rounds: Annotated[Optional[int], typer.Option(help="Labeled batches, the initial one included.")] = None,
    budget: Annotated[Optional[int], typer.Option(help="Final labeled images (instead of --rounds).")] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs per round.")] = 10,
    imgsz: Annotated[int, typer.Option(help="Image size for training and scoring.")] = 320,
    model: Annotated[str, typer.Option(help="Checkpoint or model YAML to start every run from.")] = "yolo11n.yaml",
    batch: Annotated[int, typer.Option(help="Training batch size.")] = 16,
    train_arg: Annotated[Optional[list[str]], typer.Option(
        "--train-arg", help="Extra Ultralytics train argument KEY=VALUE (repeatable), e.g. freeze=10.")] = None,
    variants: Annotated[Optional[Path], typer.Option(
        help="YAML file: label -> strategy mapping (may start from `preset: NAME`), for ablations; all run.")] = None,
    cold_start: Annotated[str, typer.Option(
        help="How every strategy's initial set is chosen: typical | kcenter | random (shared by a seed's "
             "strategies).")] = "random",
    full_pool: Annotated[bool, typer.Option(
        "--full-pool", help="Also train once on the whole labeled pool: the reference for 'labels to 90%/95%'.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress output.")] = False,
    threads: ThreadsOpt = None,
) -> None:
    """Replay a labeled dataset with its ground truth as the annotators and compare strategies against random."""
    from labelwise.simulate import parse_train_args, read_variants
    from labelwise.simulate import simulate as run_simulation

    result = run_simulation(data, out_dir, strategies.split(","), seeds, initial=initial, per_round=per_round,
                            rounds=rounds, budget=budget, epochs=epochs, imgsz=imgsz, model=model, batch=batch,
                            train_args=parse_train_args(train_arg or []),
                            variants=read_variants(variants) if variants else None, cold_start=cold_start,
                            full_pool=full_pool, progress=not quiet, threads=threads)
    out.print(result.files["summary"].read_text(), highlight=False, markup=False)
    out.print(f"outputs in {result.out_dir}: " + ", ".join(p.name for p in result.files.values()), highlight=False)


@app.command()
@friendly
def report(
    workspace: Annotated[Path, typer.Option("--workspace", "-w", help="The workspace folder.")] = Path("."),
    output: Annotated[Optional[Path], typer.Option(
        "--out", help="HTML file to write (default: WORKSPACE/report/report.html).")] = None,
) -> None:
    """Write an HTML report of a workspace: learning curve, per-class AP, each round's picks, stopping advice."""
    from labelwise.report import build_report

    ws = Workspace(workspace)
    path = build_report(ws, output or ws.root / "report" / "report.html")
    out.print(f"report written: {path}\nopen it in a browser: file://{path.absolute()}", highlight=False)


@qa_app.command("list")
@friendly
def qa_list(workspace: WorkspaceOpt = Path("."),
            round_no: Annotated[Optional[int], typer.Option("--round", help="Only this round.")] = None) -> None:
    """The open label QA suspects, worst first per round: the kind of error, the score and the box."""
    from labelwise.workflow.qa import csv_path, describe

    ws = Workspace(workspace)
    rows = ws.qa_suspects(round_no)
    if not rows:
        out.print("no open label QA suspects" + (f" in round {round_no}" if round_no is not None else ""))
        return
    held = {image.id for image, *_ in ws.store.held(kind="qa")}
    for r in rows:
        mark = "  [held]" if r["image_id"] in held else ""
        out.print(f"round {r['round']} {escape(describe(r, ws.config.classes))}{mark}", highlight=False,
                  soft_wrap=True)
    for round_ in sorted({r["round"] for r in rows}):
        out.print(f"round {round_}: {escape(str(csv_path(ws.ctx, round_)))}", highlight=False, soft_wrap=True)


@qa_app.command("check")
@friendly
@writes
def qa_check(workspace: WorkspaceOpt = Path("."),
             round_no: Annotated[Optional[int], typer.Option(
                 "--round", help="The round to check (default: the latest with a batch).")] = None) -> None:
    """Check a round's labels against the model's cached predictions now (it runs by itself whenever labels come
    back); writes WORKSPACE/qa/round-NNN-suspects.csv."""
    report = Workspace(workspace).qa_check(round_no)
    for line in report.lines(limit=15):
        out.print(escape(line), highlight=False, soft_wrap=True)


@qa_app.command("confirm")
@friendly
@writes
def qa_confirm(images: Annotated[Optional[list[str]], typer.Argument(
                   help="Suspect images to keep as labeled: path, file name, staged name or sha256 prefix.")] = None,
               workspace: WorkspaceOpt = Path("."),
               every: Annotated[bool, typer.Option("--all", help="Every open suspect (of --round).")] = False,
               round_no: Annotated[Optional[int], typer.Option("--round", help="Only this round.")] = None) -> None:
    """A person checked these suspects and their labels are right: they leave the review, and held ones go back
    into training."""
    names = Workspace(workspace).qa_confirm(list(images or []), every=every, round_no=round_no)
    out.print(f"confirmed {len(names)} label(s): {escape(', '.join(names))}", highlight=False, soft_wrap=True)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
