"""`labelwise simulate`: the oracle replay of a labeled dataset, end to end on a real (tiny) YOLO, and its summary.

The slow test trains yolo11n from YAML at imgsz 64 for 1 epoch: 2 strategies x 2 seeds x 2 labeled batches. It
runs the simulation three times into the same folder (1 batch, then 2, then 2 again) to check that a rerun
continues where the last one stopped and never retrains a finished round. The fast tests check the settings guard
and the summary's arithmetic on made-up curves.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
from PIL import Image

from labelwise.loop import Workspace
from labelwise.pool import label_path_for, read_yolo_label
from labelwise.simulate import (
    PointRow,
    SimulationError,
    SimulationSettings,
    _check_or_save_settings,
    parse_train_args,
    simulate,
    summarise,
    summary_markdown,
)
from labelwise.synthetic import CLASS_NAMES, ScenarioSpec, generate, read_scenarios

STRATEGIES = ["random", "least_confidence"]
SEEDS = [0, 1]
TINY = dict(initial=8, per_round=8, epochs=1, imgsz=64, batch=8, model="yolo11n.yaml", progress=False)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("sim") / "scenes", ScenarioSpec(n_train=40, n_val=8, image_size=64,
                                                                           seed=11))


def weights_state(out: Path) -> dict[tuple[str, int, int], tuple[str, float]]:
    """(strategy, seed, round) -> (model path, mtime of the weights file) for every trained round."""
    state = {}
    for strategy in STRATEGIES:
        for seed in SEEDS:
            ws = Workspace(out / "runs" / strategy / f"seed{seed}")
            for r in ws.store.rounds():
                if r.model_path:
                    state[(strategy, seed, r.round)] = (r.model_path, Path(r.model_path).stat().st_mtime)
            ws.store.close()
    return state


@pytest.mark.slow
def test_simulation_is_fair_resumable_and_writes_every_output(scenes, tmp_path):
    out = tmp_path / "sim"
    first = simulate(scenes, out, STRATEGIES, SEEDS, rounds=1, **TINY)
    # one labeled batch: the random initial set and the model trained on it
    assert sorted((r.strategy, r.seed, r.n_labeled) for r in first.rows) == sorted(
        (s, seed, 8) for s in STRATEGIES for seed in SEEDS)
    before = weights_state(out)
    assert len(before) == len(STRATEGIES) * len(SEEDS)

    result = simulate(scenes, out, STRATEGIES, SEEDS, rounds=2, **TINY)
    after = weights_state(out)
    # continued, not restarted: the models of the first run were kept (same file, never rewritten) ...
    for key, value in before.items():
        assert after[key] == value
    # ... and each run gained exactly one model, trained on the second batch
    assert len(after) == 2 * len(before)

    rows = result.rows
    assert len(rows) == len(STRATEGIES) * len(SEEDS) * 2
    scenarios = read_scenarios(scenes.parent)
    for seed in SEEDS:
        initial = {}
        for strategy in STRATEGIES:
            ws = Workspace(out / "runs" / strategy / f"seed{seed}")
            assert ws.config.seed == seed and ws.config.strategy["name"] == strategy
            initial[strategy] = {p["sha256"] for p in ws.store.selection(1)}
            later = {p["sha256"] for p in ws.store.selection(2)}
            assert len(initial[strategy]) == 8 and len(later) == 8 and not initial[strategy] & later
            labeled = ws.store.labels("pool")
            points = sorted((r for r in rows if r.strategy == strategy and r.seed == seed), key=lambda r: r.point)
            assert [p.n_labeled for p in points] == [8, 16]
            # boxes labeled, hard and rare picks are counted from the oracle's files and scenarios.csv
            assert points[-1].boxes_labeled == sum(len(read_yolo_label(label_path_for(i.path), 6))
                                                   for i, _ in labeled)
            rel = [str(i.path.relative_to(scenes.parent)) for i, _ in labeled]
            assert points[-1].hard_labeled == sum(scenarios[r]["hard"] for r in rel)
            assert points[-1].rare_labeled == sum(scenarios[r]["rare"] for r in rel)
            assert all(0.0 <= p.map50 <= 1.0 and set(p.per_class_ap50) == set(CLASS_NAMES) for p in points)
            assert points[-1].agreement is not None  # measured for the final model too (stopping replay)
            # evaluation on the fixed val split, never the pool
            assert ws.store.counts()["val_labeled"] == 8
            ws.store.close()
        # every strategy of a seed started from the same initial labeled set
        assert initial["random"] == initial["least_confidence"]
    assert _initial_set(out, "random", 0) != _initial_set(out, "random", 1)
    # Ultralytics wrote its label caches inside the workspaces, never into the dataset
    assert not list(scenes.parent.rglob("*.cache"))

    # outputs exist and parse
    with open(out / "results.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(rows) and {f"ap50_{c}" for c in CLASS_NAMES} <= set(table[0])
    assert {(r["strategy"], r["seed"], r["n_labeled"]) for r in table} == {
        (s, str(seed), n) for s in STRATEGIES for seed in SEEDS for n in ("8", "16")}
    data = json.loads((out / "results.json").read_text())
    assert set(data["summary"]["strategies"]) == set(STRATEGIES)
    assert data["rare_classes"] == ["ring", "diamond"]
    for name in ("learning_curves.png", "rare_class_ap.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size[0] >= 600
    summary = (out / "summary.md").read_text()
    for strategy in STRATEGIES:
        assert f"| {strategy} |" in summary
    assert "Stopping rules" in summary and "AP50 ring" in summary

    # a rerun with nothing left to do trains nothing and is quick
    started = time.perf_counter()
    again = simulate(scenes, out, STRATEGIES, SEEDS, rounds=2, **TINY)
    assert time.perf_counter() - started < 30
    assert weights_state(out) == after
    assert [(r.strategy, r.seed, r.point, r.map50) for r in again.rows] == [
        (r.strategy, r.seed, r.point, r.map50) for r in rows]

    # the report works on a simulation's workspace too
    from labelwise.report import build_report

    ws = Workspace(out / "runs" / "least_confidence" / "seed0")
    html = build_report(ws, tmp_path / "report").read_text()
    assert html.count('class="thumb"') == 16 and 'id="per-class-ap"' in html


def _initial_set(out: Path, strategy: str, seed: int) -> set[str]:
    ws = Workspace(out / "runs" / strategy / f"seed{seed}")
    try:
        return {p["sha256"] for p in ws.store.selection(1)}
    finally:
        ws.store.close()


# -- fast: guards and the summary's arithmetic ----------------------------------------------------------------------


def test_rerun_with_other_settings_is_refused_before_any_work(scenes, tmp_path):
    out = tmp_path / "sim"
    out.mkdir()
    settings = SimulationSettings(data_yaml=str(scenes), strategies=("random",), seeds=(0,), initial=8,
                                  per_round=8, rounds=2, budget=None, epochs=3, imgsz=64, model="yolo11n.yaml",
                                  batch=8)
    _check_or_save_settings(out, settings)
    with pytest.raises(SimulationError, match=r"epochs: 3 -> 1"):
        simulate(scenes, out, ["random"], [0], rounds=2, **TINY)
    assert not (out / "runs").exists()


def test_clear_errors_for_bad_input(scenes, tmp_path):
    with pytest.raises(SimulationError, match="unknown strategy nonsense"):
        simulate(scenes, tmp_path / "a", ["random", "nonsense"], 1, rounds=2, **TINY)
    missing = tmp_path / "nowhere" / "data.yaml"
    with pytest.raises(SimulationError, match=str(missing)):
        simulate(missing, tmp_path / "b", ["random"], 1, rounds=2, **TINY)
    with pytest.raises(SimulationError, match="--rounds"):
        simulate(scenes, tmp_path / "c", ["random"], 1, **TINY)
    assert parse_train_args(["freeze=10", "lr0=0.002", "cos_lr=true"]) == {"freeze": 10, "lr0": 0.002,
                                                                           "cos_lr": True}


def _rows(strategy: str, seed: int, maps: list[float], hard: list[int], rare: list[int]) -> list[PointRow]:
    out = []
    for i, m in enumerate(maps):
        out.append(PointRow(
            strategy=strategy, seed=seed, point=i, round=i + 2, n_labeled=100 * (i + 1), boxes_labeled=300 * (i + 1),
            map50=m, map50_95=m / 2, agreement=None if i == 0 else 0.95, batch_size=100, batch_boxes=300,
            batch_hard=hard[i], batch_rare=rare[i], hard_labeled=sum(hard[: i + 1]), rare_labeled=sum(rare[: i + 1]),
            train_seconds=1.0, score_seconds=1.0, wall_seconds=60.0,
            per_class_ap50={"a": m, "b": m / 2, "rare": m / 4},
        ))
    return out


def test_summary_measures_savings_against_random_and_replays_stopping():
    rows = []
    for seed in (0, 1):
        # random reaches 0.50 with 400 labels; entropy gets there at 200 labels (a 50% saving) and keeps going
        rows += _rows("random", seed, [0.20, 0.35, 0.45, 0.50], [20, 20, 20, 20], [5, 5, 5, 5])
        rows += _rows("entropy", seed, [0.20, 0.50, 0.60, 0.602], [20, 40, 40, 40], [5, 15, 15, 15])
    summary = summarise(rows, ["random", "entropy"], [0, 1], ["rare"], {"hard": 0.2, "rare": 0.05})
    assert summary["random_final_map50"] == pytest.approx(0.50)
    entropy = summary["strategies"]["entropy"]
    assert entropy["labels_to_random_final"] == pytest.approx(200)
    assert entropy["saving_percent"] == pytest.approx(50)
    assert entropy["paired_saving_percent"] == [pytest.approx(50), pytest.approx(50)]
    # picks after the shared initial batch: 40 of 100 hard against random's 20 of 100
    assert entropy["hard_share_vs_random"] == pytest.approx(2.0)
    assert entropy["rare_share_vs_random"] == pytest.approx(3.0)
    assert entropy["rare_ap50"]["rare"] == pytest.approx(0.602 / 4)
    assert entropy["auc"] > summary["strategies"]["random"]["auc"]
    # the article's rule stops entropy at its last round (gain 0.002 < 0.005), giving up nothing
    min_gain = entropy["stopping"][0]["rules"][0]
    assert min_gain["rule"] == "min_gain" and min_gain["labeled_at_stop"] == 400
    assert min_gain["map50_given_up"] == pytest.approx(0.0)
    settings = SimulationSettings(data_yaml="/d/data.yaml", strategies=("random", "entropy"), seeds=(0, 1),
                                  initial=100, per_round=100, rounds=4, budget=None, epochs=1, imgsz=64,
                                  model="yolo11n.yaml", batch=8)
    text = summary_markdown(summary, settings, "d", "test", rows)
    assert "| entropy | 2 | 0.602 ± 0.000 | 200 | 50 | 50 / 50 |" in text
    assert "Best strategy by label saving: **entropy**, 50% fewer labels" in text
    assert "40% (2.00x)" in text
