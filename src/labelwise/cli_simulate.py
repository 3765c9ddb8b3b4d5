"""`labelwise simulate` and `labelwise report`: Typer-style command functions, registered by `labelwise.cli`.

Kept apart from cli.py so this module imports nothing from it (cli imports this one). Errors a user can fix print
one red line and exit with code 2, like every other labelwise command.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

out = Console()
err = Console(stderr=True)


def _friendly(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from labelwise.config import ConfigError
        from labelwise.detectors.base import DetectorError
        from labelwise.loop import LoopError
        from labelwise.simulate import SimulationError

        try:
            return func(*args, **kwargs)
        except (SimulationError, ConfigError, LoopError, DetectorError, FileNotFoundError, ValueError) as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper


@_friendly
def simulate_command(
    data: Annotated[Path, typer.Option("--data", help="The labeled dataset's data.yaml (train = pool, val = eval).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder; a rerun resumes what is there.")] = Path(
        "simulation"),
    strategies: Annotated[str, typer.Option(help="Strategies to compare, comma separated.")] = "random,entropy",
    seeds: Annotated[int, typer.Option(help="Number of seeds (0..N-1); each gives every strategy the same "
                                            "initial set.")] = 3,
    initial: Annotated[int, typer.Option(help="Size of the random initial labeled set.")] = 50,
    per_round: Annotated[int, typer.Option(help="Images labeled per round after the initial set.")] = 50,
    rounds: Annotated[Optional[int], typer.Option(help="Labeled batches, the initial one included.")] = None,
    budget: Annotated[Optional[int], typer.Option(help="Final labeled images (instead of --rounds).")] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs per round.")] = 10,
    imgsz: Annotated[int, typer.Option(help="Image size for training and scoring.")] = 320,
    model: Annotated[str, typer.Option(help="Checkpoint or model YAML to start every run from.")] = "yolo11n.yaml",
    batch: Annotated[int, typer.Option(help="Training batch size.")] = 16,
    train_arg: Annotated[Optional[list[str]], typer.Option(
        "--train-arg", help="Extra Ultralytics train argument KEY=VALUE (repeatable), e.g. freeze=10.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress output.")] = False,
) -> None:
    """Replay a labeled dataset with its ground truth as the annotators and compare strategies against random."""
    from labelwise.simulate import parse_train_args, simulate

    result = simulate(data, out_dir, [s for s in strategies.split(",")], seeds, initial=initial,
                      per_round=per_round, rounds=rounds, budget=budget, epochs=epochs, imgsz=imgsz, model=model,
                      batch=batch, train_args=parse_train_args(train_arg or []), progress=not quiet)
    out.print(result.files["summary"].read_text(), highlight=False, markup=False)
    out.print(f"outputs in {result.out_dir}: " + ", ".join(p.name for p in result.files.values()), highlight=False)


@_friendly
def report_command(
    workspace: Annotated[Path, typer.Option("--workspace", "-w", help="The workspace folder.")] = Path("."),
    output: Annotated[Optional[Path], typer.Option(
        "--out", help="HTML file to write (default: WORKSPACE/report/report.html).")] = None,
) -> None:
    """Write an HTML report of a workspace: learning curve, per-class AP, each round's picks, stopping advice."""
    from labelwise.loop import Workspace
    from labelwise.report import build_report

    ws = Workspace(workspace)
    path = build_report(ws, output or ws.root / "report" / "report.html")
    out.print(f"report written: {path}\nopen it in a browser: file://{path.absolute()}", highlight=False)
