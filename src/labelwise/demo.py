"""`labelwise demo`: the whole loop on the built-in synthetic scenario dataset, annotators simulated by its labels."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from labelwise.loop import RoundSummary, Workspace, init_state
from labelwise.presets import resolve as resolve_strategy
from labelwise.synthetic import ScenarioSpec, generate, read_scenarios


def run_demo(directory: Path, rounds: int = 3, strategy: str = "default", epochs: int = 20,
             per_round: int = 40, initial: int = 80, console: Console | None = None,
             spec: ScenarioSpec = ScenarioSpec(n_train=400, n_val=100, image_size=128, seed=0)) -> Workspace:
    started = time.perf_counter()
    console = console or Console()
    directory = Path(directory).absolute()
    dataset = directory / "dataset"
    console.print(f"[bold]labelwise demo[/bold]: synthetic scenes in {dataset}", highlight=False)
    data_yaml = generate(dataset, spec, progress=True)
    scenarios = read_scenarios(dataset)
    pool = [s for s in scenarios.values() if s["split"] == "train"]
    hard_share = sum(s["hard"] for s in pool) / len(pool)
    rare_share = sum(s["rare"] for s in pool) / len(pool)
    console.print(f"pool: {len(pool)} images, {hard_share:.0%} hard (night/occluded/crowded), "
                  f"{rare_share:.0%} with a rare class", highlight=False)

    ws_dir = directory / "workspace"
    if init_state(ws_dir) == "done":
        ws = Workspace(ws_dir)
    else:
        ws = Workspace.create(
            ws_dir, images=[dataset / "train" / "images"], data_yaml=data_yaml, model="yolo11n.yaml",
            imgsz=spec.image_size,
            train={"epochs": epochs, "batch": 16}, budget={"per_round": per_round, "initial": initial},
            strategy=resolve_strategy(strategy), stopping={"rule": "none"},
        )
        ws.ingest_sources()

    table = Table(title=f"labelwise demo: {strategy}, {per_round} images a round")
    for col in ("round", "trained on", "mAP50", "selected", "hard", "rare", "picked by"):
        table.add_column(col)

    def on_round(summary: RoundSummary) -> None:
        picked = [scenarios.get(str(Path(r["path"]).relative_to(dataset)), {}) for r in summary.selected]
        hard = sum(bool(p.get("hard")) for p in picked)
        rare = sum(bool(p.get("rare")) for p in picked)
        n = max(len(picked), 1)
        how = "random (cold start)" if summary.map50 is None else strategy
        row = (str(summary.round), str(summary.n_labeled or 0),
               "-" if summary.map50 is None else f"{summary.map50:.3f}", str(len(picked)),
               f"{hard} ({hard / n:.0%})", f"{rare} ({rare / n:.0%})", how)
        table.add_row(*row)
        trained = "no model yet" if summary.map50 is None else \
            f"trained on {summary.n_labeled} labeled, mAP50 {summary.map50:.3f}"
        console.print(f"round {summary.round}: {trained}; {how} selected {len(picked)}: {hard} hard ({hard / n:.0%}),"
                      f" {rare} with a rare class ({rare / n:.0%})", highlight=False)

    ws.run(oracle=dataset / "train" / "labels", rounds=rounds + 1, on_round=on_round)
    console.print(table)
    console.print(f"random selection would hold about {hard_share:.0%} hard and {rare_share:.0%} rare images.")
    console.print(f"workspace: {ws.root}\nnext: labelwise status -w {ws.root}", highlight=False)
    # The first command a user runs: say what it cost, so they can judge a real pool's rounds from it.
    console.print(f"demo finished in {format_elapsed(time.perf_counter() - started)}", highlight=False)
    return ws


def format_elapsed(seconds: float) -> str:
    """A duration as a person reads it: '41 s', '2 min 33 s', '1 h 05 min'."""
    total = int(round(seconds))
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
