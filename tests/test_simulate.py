"""`labelwise simulate`: the oracle replay of a labeled dataset, end to end on a real (tiny) YOLO, and its summary.

The slow test trains yolo11n from YAML at imgsz 64 for 1 epoch: 2 strategies x 2 seeds x 2 labeled batches, plus
one full-pool training. It runs the simulation three times into the same folder (1 batch, then 2 with the full-pool
reference, then 2 again) to check that a rerun continues where the last one stopped and never retrains a finished
round. The fast tests check the settings guard, the strategy presets and variants, and the summary's arithmetic
on made-up curves.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelwise.loop import Workspace
from labelwise.pool import label_path_for, read_yolo_label
from labelwise.simulate import (
    PointRow,
    SimulationError,
    SimulationSettings,
    _check_or_save_settings,
    is_rare_image,
    parse_train_args,
    read_variants,
    resolve_strategies,
    simulate,
    summarise,
    summary_markdown,
)
from labelwise.synthetic import CLASS_NAMES, ScenarioSpec, generate, read_scenarios

STRATEGIES = ["random", "coreset"]
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

    result = simulate(scenes, out, STRATEGIES, SEEDS, rounds=2, full_pool=True, **TINY)
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
            # the resolved mapping is what the workspace runs; plain random has no near-duplicate filter
            assert ws.config.strategy == result.settings.strategy_mappings[strategy]
            if strategy == "random":
                assert ws.config.strategy["dedup_threshold"] is None
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
        assert initial["random"] == initial[STRATEGIES[1]]
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

    # the full-pool reference: one model trained on all 40 pool images, its mAP50 in the summary
    full = data["summary"]["full_pool"]
    assert full["n_labeled"] == 40 and 0.0 <= full["map50"] <= 1.0
    pool_ws = Workspace(out / "full_pool")
    trained = [r for r in pool_ws.store.rounds() if r.model_path]
    assert len(trained) == 1 and trained[0].map50 == pytest.approx(full["map50"])
    full_weights = (trained[0].model_path, Path(trained[0].model_path).stat().st_mtime)
    assert pool_ws.config.seed == 0 and pool_ws.config.train.epochs == TINY["epochs"]
    pool_ws.store.close()
    assert "labels to 90% of full pool" in summary and "## Per seed" in summary
    entry = data["summary"]["strategies"][STRATEGIES[1]]
    assert [p["seed"] for p in entry["paired"]["seeds"]] == SEEDS and "full_pool_targets" in entry
    assert data["settings"]["strategy_mappings"] == result.settings.strategy_mappings

    # a rerun with nothing left to do trains nothing and is quick
    started = time.perf_counter()
    again = simulate(scenes, out, STRATEGIES, SEEDS, rounds=2, full_pool=True, **TINY)
    assert time.perf_counter() - started < 30
    assert weights_state(out) == after
    pool_ws = Workspace(out / "full_pool")
    trained = [r for r in pool_ws.store.rounds() if r.model_path]
    assert [(r.model_path, Path(r.model_path).stat().st_mtime) for r in trained] == [full_weights]
    pool_ws.store.close()
    assert again.summary["full_pool"]["map50"] == pytest.approx(full["map50"])
    assert [(r.strategy, r.seed, r.point, r.map50) for r in again.rows] == [
        (r.strategy, r.seed, r.point, r.map50) for r in rows]

    # the report works on a simulation's workspace too
    from labelwise.report import build_report

    ws = Workspace(out / "runs" / STRATEGIES[1] / "seed0")
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


# -- fast: presets, variants, cold start ----------------------------------------------------------------------------


def _knows(key: str) -> bool:
    import dataclasses

    from labelwise.selection import StrategyConfig

    return key in {f.name for f in dataclasses.fields(StrategyConfig)}


@pytest.fixture
def tiny_preset(monkeypatch):
    """A preset made of settings every version of the selection knows, with its own cold start."""
    from labelwise import presets

    monkeypatch.setitem(presets.PRESETS, "tiny", {"name": "hybrid", "alpha": 0.5, "beta": 0.5,
                                                  "dedup_threshold": 0.9, "cold_start": "typical"})
    return "tiny"


def test_plain_names_presets_and_variants_resolve_to_whole_mappings(tiny_preset):
    variants = {"tiny-nodedup": {"preset": "tiny", "dedup_threshold": None}, "hyb": {"name": "hybrid", "beta": 0.2}}
    resolved = resolve_strategies(["random", "tiny"], variants)
    # the listed labels first, then every variant
    assert list(resolved) == ["random", "tiny", "tiny-nodedup", "hyb"]
    assert resolved["random"]["name"] == "random" and resolved["random"]["dedup_threshold"] is None
    assert resolved["tiny"]["alpha"] == 0.5 and resolved["tiny"]["dedup_threshold"] == 0.9
    # the variant starts from the preset and overrides one key
    assert resolved["tiny-nodedup"]["alpha"] == 0.5 and resolved["tiny-nodedup"]["dedup_threshold"] is None
    assert resolved["hyb"]["beta"] == 0.2 and "preset" not in resolved["tiny-nodedup"]
    # the simulation's cold start replaces the preset's own ("typical"), for every strategy
    for mapping in resolved.values():
        assert mapping.get("cold_start", "random") == "random"
        assert ("cold_start" in mapping) == _knows("cold_start")
    if _knows("dedup_hamming"):
        assert resolved["random"]["dedup_hamming"] is None


def test_cold_start_is_the_same_for_every_strategy(tiny_preset):
    if _knows("cold_start"):
        resolved = resolve_strategies(["random", "tiny"], cold_start="kcenter")
        assert {m["cold_start"] for m in resolved.values()} == {"kcenter"}
    else:  # a selection without the setting cannot honour another cold start than its own random one
        with pytest.raises(SimulationError, match="cold_start"):
            resolve_strategies(["random", "tiny"], cold_start="kcenter")
    with pytest.raises(SimulationError, match="unknown cold start"):
        resolve_strategies(["random"], cold_start="best")


def test_bad_strategy_labels_and_mappings_are_refused(tiny_preset):
    with pytest.raises(SimulationError, match="unknown strategy nonsense"):
        resolve_strategies(["random", "nonsense"])
    with pytest.raises(SimulationError, match="names no strategy"):
        resolve_strategies([], {"x": {"alpha": 0.5}})
    with pytest.raises(SimulationError, match="unknown preset"):
        resolve_strategies([], {"x": {"preset": "nope"}})
    with pytest.raises(SimulationError, match="names a folder"):
        resolve_strategies(["../random"])
    with pytest.raises(SimulationError, match="dedup_treshold"):
        resolve_strategies([], {"x": {"preset": "tiny", "dedup_treshold": 0.9}})


def test_variants_file_is_read_and_checked(tmp_path):
    good = tmp_path / "variants.yaml"
    good.write_text("no-hashes: {preset: default, dedup_hamming: null}\nhyb: {name: hybrid}\n")
    assert read_variants(good) == {"no-hashes": {"preset": "default", "dedup_hamming": None},
                                   "hyb": {"name": "hybrid"}}
    bad = tmp_path / "bad.yaml"
    bad.write_text("- hybrid\n")
    with pytest.raises(SimulationError, match="must map each label"):
        read_variants(bad)


def _settings(**changes) -> SimulationSettings:
    base = dict(data_yaml="/d/data.yaml", strategies=("random", "tiny"), seeds=(0,), initial=8, per_round=8,
                rounds=2, budget=None, epochs=1, imgsz=64, model="yolo11n.yaml", batch=8,
                strategy_mappings={"random": {"name": "random"}, "tiny": {"name": "hybrid", "alpha": 0.5}})
    base.update(changes)
    return SimulationSettings(**base)


def test_a_preset_that_changed_since_the_runs_is_detected_on_resume(tmp_path):
    _check_or_save_settings(tmp_path, _settings())
    changed = {"random": {"name": "random"}, "tiny": {"name": "hybrid", "alpha": 0.7}}
    with pytest.raises(SimulationError, match=r"strategy 'tiny'.*alpha: 0.5 -> 0.7"):
        _check_or_save_settings(tmp_path, _settings(strategy_mappings=changed))
    # a new label is added to the record, the old ones kept
    _check_or_save_settings(tmp_path, _settings(strategies=("hyb",), strategy_mappings={"hyb": {"name": "hybrid"}}))
    record = json.loads((tmp_path / "simulation.json").read_text())
    assert record["strategies"] == ["random", "tiny", "hyb"]
    assert record["strategy_mappings"]["tiny"] == {"name": "hybrid", "alpha": 0.5}
    # the cold start is a fixed setting
    with pytest.raises(SimulationError, match="cold_start: 'random' -> 'typical'"):
        _check_or_save_settings(tmp_path, _settings(cold_start="typical"))


def test_a_rare_image_is_one_where_rare_classes_hold_half_the_boxes():
    rare = {5}
    assert is_rare_image([5], rare) and is_rare_image([5, 0], rare) and is_rare_image([5, 5, 0], rare)
    # a dense image with one stray rare box is not rare
    assert not is_rare_image([0, 0, 0, 0, 5], rare)
    assert not is_rare_image([], rare)


# -- fast: the paired statistics in the summary ---------------------------------------------------------------------


def _seed_rows(strategy: str, seed: int, maps: list[float], class_boxes: list[dict[str, int]] | None = None):
    rows = _rows(strategy, seed, maps, [0] * len(maps), [0] * len(maps))
    for r, boxes in zip(rows, class_boxes or [{}] * len(rows)):
        r.batch_class_boxes = dict(boxes)
    return rows


def test_summary_pairs_seeds_censors_misses_and_reports_cis():
    from scipy import stats

    random_maps = {0: [0.30, 0.40, 0.50, 0.50], 1: [0.30, 0.50, 0.52, 0.50], 2: [0.20, 0.30, 0.40, 0.60]}
    hybrid_maps = {0: [0.30, 0.50, 0.55, 0.60], 1: [0.30, 0.45, 0.48, 0.49], 2: [0.20, 0.60, 0.65, 0.70]}
    rows = []
    for seed in (0, 1, 2):
        rows += _seed_rows("random", seed, random_maps[seed], [{"a": 9, "rare": 1}] * 4)
        rows += _seed_rows("hybrid", seed, hybrid_maps[seed], [{"a": 9, "rare": 1}] + [{"a": 6, "rare": 4}] * 3)
    full_pool = {"map50": 0.70, "n_labeled": 1000, "epochs": 1}
    summary = summarise(rows, ["random", "hybrid"], [0, 1, 2], ["rare"], {"hard": None, "rare": 0.1},
                        full_pool=full_pool)
    random, hybrid = summary["strategies"]["random"], summary["strategies"]["hybrid"]

    # random against itself: exactly zero on every seed, also the plateaued seed 1
    assert random["paired_saving_percent"] == [0.0, 0.0, 0.0] and random["paired"]["saving"]["mean"] == 0.0
    # random's own values: seed 0 reaches its final 0.50 at 300 labels, seed 1 its final 0.50 already at 200
    assert [p["labels_to_own_final"] for p in random["per_seed"]] == [300, 200, 400]
    assert [p["final_map50"] for p in random["per_seed"]] == [0.50, 0.50, 0.60]

    # hybrid, by hand: seed 0 reaches 0.50 at 200 (random needed 300); seed 1 never reaches 0.50 -> censored at its
    # final 400 + one round 100 = 500 against random's 200; seed 2 reaches 0.60 at 200 (random needed 400)
    expected = [100 * (1 - 200 / 300), 100 * (1 - 500 / 200), 100 * (1 - 200 / 400)]
    assert hybrid["paired_saving_percent"] == pytest.approx(expected)
    assert hybrid["paired_censored"] == [False, True, False] and hybrid["paired"]["n_censored"] == 1
    low, high = stats.t.interval(0.95, 2, loc=np.mean(expected), scale=stats.sem(expected))
    saving = hybrid["paired"]["saving"]
    assert saving["mean"] == pytest.approx(np.mean(expected)) and saving["n"] == 3
    assert (saving["low"], saving["high"]) == (pytest.approx(low), pytest.approx(high))
    # the AUC difference is paired seed by seed over the common range 100..400
    from labelwise.savings import area_under_curve

    labels = [100, 200, 300, 400]
    diffs = [area_under_curve(labels, hybrid_maps[s]) - area_under_curve(labels, random_maps[s]) for s in range(3)]
    assert hybrid["paired"]["auc_difference"]["mean"] == pytest.approx(np.mean(diffs))
    assert hybrid["auc_ci"]["mean"] == pytest.approx(np.mean([area_under_curve(labels, hybrid_maps[s])
                                                              for s in range(3)]))
    # full pool 0.70: 90% = 0.63 reached by seed 0 never, so no mean; 95% likewise; seed 2 reaches 0.63 at 260
    ninety = hybrid["full_pool_targets"]["0.9"]
    assert ninety["target_map50"] == pytest.approx(0.63)
    assert ninety["per_seed"][0] is None and ninety["per_seed"][2] == pytest.approx(260)
    assert ninety["mean"] is None and ninety["n_reached"] == 1
    # boxes the strategy picked itself (batches after the initial one), mean per seed: 3 batches of 6 a / 4 rare
    assert hybrid["picked_class_boxes"] == {"a": pytest.approx(18), "rare": pytest.approx(12)}

    settings = SimulationSettings(data_yaml="/d/data.yaml", strategies=("random", "hybrid"), seeds=(0, 1, 2),
                                  initial=100, per_round=100, rounds=4, budget=None, epochs=1, imgsz=64,
                                  model="yolo11n.yaml", batch=8)
    text = summary_markdown(summary, settings, "d", "test", rows)
    assert "Full-pool reference" in text and "**0.700**" in text
    assert "not reached (1/3 seeds did)" in text
    assert f"{np.mean(expected):.0f} ({low:.0f} to {high:.0f}), 1 censored" in text
    assert "| hybrid | 1 | 0.490 |" in text and f"{expected[1]:.0f}*" in text
    assert "## Boxes picked per class" in text and "rare (rare)" in text


def test_summary_with_one_seed_gives_no_interval():
    rows = _seed_rows("random", 0, [0.2, 0.3, 0.4]) + _seed_rows("hybrid", 0, [0.2, 0.4, 0.5])
    summary = summarise(rows, ["random", "hybrid"], [0], ["rare"], {"hard": None, "rare": None})
    saving = summary["strategies"]["hybrid"]["paired"]["saving"]
    assert saving["mean"] == pytest.approx(100 * (1 - 200 / 300))
    assert saving["low"] is None and saving["high"] is None
    settings = SimulationSettings(data_yaml="/d/data.yaml", strategies=("random", "hybrid"), seeds=(0,),
                                  initial=100, per_round=100, rounds=3, budget=None, epochs=1, imgsz=64,
                                  model="yolo11n.yaml", batch=8)
    text = summary_markdown(summary, settings, "d", "test", rows)
    assert "1 seed: no CI" in text and "no confidence interval can be given" in text


def test_the_saving_in_boxes_drawn_is_zero_for_random_and_charges_crowded_picks():
    import dataclasses

    rows = []
    for seed in (0, 1, 2):
        rows += _rows("random", seed, [0.20, 0.35, 0.45, 0.50], [20] * 4, [5] * 4)
        # reaches random's final at 200 images (50% fewer) but its batches hold three times the boxes
        crowded = _rows("crowded", seed, [0.20, 0.50, 0.60, 0.602], [20] * 4, [5] * 4)
        rows += [dataclasses.replace(r, boxes_labeled=300 + 900 * r.point) for r in crowded]
    summary = summarise(rows, ["random", "crowded"], [0, 1, 2], ["rare"], {"hard": 0.2, "rare": 0.05})
    crowded = summary["strategies"]["crowded"]
    assert crowded["paired"]["saving"]["mean"] == pytest.approx(50)
    # random needed 1,200 boxes for 0.50; the crowded strategy 1,200 too (300 + 900): no saving in boxes
    assert crowded["paired_boxes"]["saving"]["mean"] == pytest.approx(0.0)
    assert summary["strategies"]["random"]["paired_boxes"]["saving"]["mean"] == 0.0  # the null case
    settings = _settings(strategies=("random", "crowded"), seeds=(0, 1, 2), initial=100, per_round=100, rounds=4,
                         strategy_mappings={"random": {"name": "random"}, "crowded": {"name": "hybrid"}})
    assert "saving % in boxes drawn" in summary_markdown(summary, settings, "d", "test", rows)
