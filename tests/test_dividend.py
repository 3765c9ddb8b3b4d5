"""`labelwise dividend`: the article's first experiment (label the strategy's k and k random images, train on each,
compare the mAP gain per label). The noise decision on numbers here; end to end on the synthetic set with the oracle
(yolo11n.yaml at imgsz 64, 1 epoch) in the slow tests below."""

from __future__ import annotations

from pathlib import Path

import pytest

from labelwise.savings import NOISE_UNKNOWN, WITHIN_NOISE, compare_arms


# -- the noise decision ---------------------------------------------------------------------------------------------


def test_a_difference_inside_the_seed_spread_is_within_noise():
    # the strategy's seeds spread over 0.10 mAP50; it beats random by 0.007 on average
    c = compare_arms([0.50, 0.55, 0.60], [0.52, 0.53, 0.58])
    assert c.verdict == WITHIN_NOISE
    assert c.noise_sd == pytest.approx(0.05)
    assert c.difference.mean == pytest.approx(0.02 / 3)
    assert c.text.startswith("within noise") and "sd 0.050" in c.text


def test_a_difference_beyond_the_spread_with_a_ci_off_zero_is_a_verdict():
    better = compare_arms([0.60, 0.61, 0.62], [0.50, 0.505, 0.51])
    assert better.verdict == "better" and better.difference.low > 0
    assert "better than random by 0.105" in better.text
    worse = compare_arms([0.50, 0.505, 0.51], [0.60, 0.61, 0.62])
    assert worse.verdict == "worse" and worse.difference.high < 0


def test_a_difference_larger_than_the_sd_but_with_a_ci_across_zero_is_within_noise():
    # two seeds: each arm moves little with the seed, but two paired differences give a wide t interval
    c = compare_arms([0.60, 0.62], [0.50, 0.54])  # differences +0.10 and +0.08; noise sd 0.028
    assert abs(c.difference.mean) > c.noise_sd
    assert c.difference.low < 0 < c.difference.high
    assert c.verdict == WITHIN_NOISE and "includes 0" in c.text


def test_one_seed_says_the_noise_is_unknown_and_suggests_three_seeds():
    c = compare_arms([0.61], [0.52])
    assert c.verdict == NOISE_UNKNOWN and c.noise_sd is None
    assert c.difference.mean == pytest.approx(0.09) and c.difference.low is None
    assert "--seeds 3" in c.text


def test_seed_counts_must_match():
    with pytest.raises(ValueError):
        compare_arms([0.5, 0.6], [0.5])
    with pytest.raises(ValueError):
        compare_arms([], [])


# -- the result record ----------------------------------------------------------------------------------------------


def test_the_result_round_trips_through_its_record_and_gains_are_per_100_labels(tmp_path):
    from labelwise.workflow.dividend import DividendResult, summarise

    plan = {"round": 3, "k": 20, "strategy": "hybrid"}
    runs = [[{"map50": 0.40, "map50_95": 0.2, "per_class_ap50": {"a": 0.5, "b": 0.3}},
             {"map50": 0.44, "map50_95": 0.2, "per_class_ap50": {"a": 0.6, "b": 0.3}}],
            [{"map50": 0.34, "map50_95": 0.1, "per_class_ap50": {"a": 0.4, "b": 0.2}},
             {"map50": 0.35, "map50_95": 0.1, "per_class_ap50": {"a": 0.4, "b": 0.3}}]]
    result = summarise(plan, {"strategy": (20, 120), "random": (20, 120)},
                       {"map50": 0.30, "per_class_ap50": {"a": 0.4}, "source": "test"}, 16, runs, tmp_path)
    s, r = result.arms["strategy"], result.arms["random"]
    assert s.mean_map50 == pytest.approx(0.42) and s.per_class_ap50 == pytest.approx({"a": 0.55, "b": 0.3})
    assert s.gain_per_100 == pytest.approx(100 * 0.12 / 20) and r.gain_per_100 == pytest.approx(100 * 0.045 / 20)
    assert result.ratio == pytest.approx(0.12 / 0.045)
    assert result.comparison.verdict in ("better", WITHIN_NOISE) and result.state == "done"
    assert "strategy (hybrid) mAP50 0.420 vs random 0.345" in result.line
    again = DividendResult.from_record(result.record())
    assert again.record() == result.record() and again.comparison == result.comparison


# -- end to end on the synthetic set, the oracle labeling (slow) -------------------------------------------------


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from labelwise.synthetic import ScenarioSpec, generate

    root = tmp_path_factory.mktemp("dividend-scenes") / "dataset"
    generate(root, ScenarioSpec(n_train=96, n_val=16, image_size=64, seed=3))
    return root


def _workspace(root, scenes):
    from labelwise.loop import Workspace

    ws = Workspace.create(root, images=[scenes / "train" / "images"], data_yaml=scenes / "data.yaml",
                          model="yolo11n.yaml", imgsz=64, train={"epochs": 1, "batch": 8},
                          budget={"per_round": 8, "initial": 8}, stopping={"rule": "none"})
    ws.ingest_sources(progress=False)
    assert ws.run(oracle=scenes / "train" / "labels", rounds=1) == "1 round(s) done"  # the first 8 labels
    return ws


def _cli(*args, crash_at=None):
    import os
    import subprocess
    import sys

    env = {**os.environ, "LABELWISE_CRASH_AT": crash_at or "", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "labelwise", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.slow
def test_dividend_end_to_end_killed_between_trainings_resumes_without_relabeling_or_retraining(tmp_path, scenes):
    from labelwise.loop import Workspace
    from labelwise.workflow.dividend import KV, split_arms

    oracle = scenes / "train" / "labels"
    ws = _workspace(tmp_path / "ws", scenes)
    ws.store.close()
    killed = _cli("dividend", "-w", tmp_path / "ws", "--k", 4, "--oracle", oracle,
                  crash_at="dividend_between_trainings")
    assert killed.returncode == -9, killed.stderr
    assert "training 1/2" in killed.stdout and "training 2/2" not in killed.stdout
    ws = Workspace(tmp_path / "ws")
    labels_after_kill = ws.store.label_history_count()
    first = ws.store.kv_get(KV, "round/2/train/strategy/0")
    assert first is not None and ws.store.kv_get(KV, "round/2/train/random/0") is None
    weights_mtime = Path(first["weights"]).stat().st_mtime_ns
    ws.store.close()

    done = _cli("dividend", "-w", tmp_path / "ws", "--oracle", oracle)  # the rerun, with no --k: the plan's
    assert done.returncode == 0, done.stderr + done.stdout
    assert "resuming round 2" in done.stdout
    assert "training 1/2" not in done.stdout and "training 2/2" in done.stdout  # the finished one is kept
    assert "noise unknown" in done.stdout and "--seeds 3" in done.stdout
    assert "+ strategy batch" in done.stdout and "+ random batch" in done.stdout

    ws = Workspace(tmp_path / "ws")
    assert ws.store.label_history_count() == labels_after_kill  # nothing relabeled
    assert Path(first["weights"]).stat().st_mtime_ns == weights_mtime  # nor retrained
    # both batches labeled, disjoint, of k each, and in the training set from now on
    arms = split_arms(ws.store.selection(2))
    ids = {arm: {r["image_id"] for r in rows} for arm, rows in arms.items()}
    assert len(ids["strategy"]) == len(ids["random"]) == 4 and not ids["strategy"] & ids["random"]
    assert all(r["outcome"] == "labeled" for rows in arms.values() for r in rows)
    assert ws.store.counts()["pool_labeled"] == 16 and ws.store.current_round().step == "done"
    result = ws.dividend()  # a rerun shows the recorded result, trains nothing
    assert result.state == "done" and result.seeds == 1 and result.comparison.verdict == NOISE_UNKNOWN
    for arm in result.arms.values():
        assert arm.batch == 4 and arm.n_train == 12 and len(arm.map50) == 1 and 0.0 <= arm.map50[0] <= 1.0
        assert set(arm.per_class_ap50) == set(ws.config.classes) and arm.gain_per_100 is not None
    assert result.baseline_map50 is not None and result.n_val == 16
    assert ws.status().dividend == result.line
    ws.store.close()

    status = _cli("status", "-w", tmp_path / "ws")
    assert status.returncode == 0 and "dividend" in status.stdout and "noise unknown" in status.stdout
    report = _cli("report", "-w", tmp_path / "ws")
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "ws" / "report" / "report.html").read_text()
    assert 'id="dividend-plot"' in page and "noise unknown" in page and 'id="dividend-table"' in page

    # the next round trains on both batches
    ws = Workspace(tmp_path / "ws")
    ws.train()
    assert ws.store.current_round().round == 3 and ws.store.current_round().n_labeled == 16


@pytest.mark.slow
def test_dividend_through_the_folder_backend_on_two_seeds_gives_a_mean_and_a_ci(tmp_path, scenes):
    import shutil

    from labelwise.pool import label_path_for

    ws = _workspace(tmp_path / "ws", scenes)
    events = []
    waiting = ws.dividend(k=4, seeds=2, on_event=events.append)  # the configured backend: the folder one
    assert waiting.state == "waiting" and not any(e.startswith("training ") for e in events)
    assert waiting.labels.push is not None and "labelwise dividend" in waiting.next_command
    assert "out for labeling" in ws.status().dividend
    batch = ws.batch()
    assert len(batch.items) == 8
    labels = tmp_path / "ws" / "annotation" / f"round-{batch.round:03d}" / "labels"  # the annotators' work
    labels.mkdir(parents=True, exist_ok=True)
    for item in batch.items:
        target = labels / f"{Path(item.staged_name).stem}.txt"
        source = label_path_for(item.path)
        shutil.copy(source, target) if source.exists() else target.write_text("")

    result = ws.dividend(on_event=events.append)  # pulls, then trains: two models, two seeds each
    assert sum(e.startswith("training ") for e in events) == 4
    assert result.state == "done" and result.seeds == 2 and ws.store.counts()["pool_labeled"] == 16
    c = result.comparison
    assert c.difference.n == 2 and c.noise_sd is not None
    assert c.difference.low is not None and c.difference.low <= c.difference.mean <= c.difference.high
    assert c.verdict in ("better", "worse", WITHIN_NOISE) and c.verdict in c.text
    if c.verdict == WITHIN_NOISE:
        assert c.text.startswith("within noise")
    assert all(len(arm.map50) == 2 for arm in result.arms.values())
    assert result.line.endswith(c.verdict)


def test_a_rerun_with_another_k_says_how_to_start_a_new_experiment(tmp_path):
    """On a fake store state (no training): the latest experiment is done and its round is the current one."""
    from labelwise.loop import Workspace
    from labelwise.workflow.context import LoopError
    from labelwise.workflow.dividend import KV

    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    for i in range(4):
        Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(images / f"{i}.png")
    ws = Workspace.create(tmp_path / "ws", images=[images], classes=["a"], model="yolo11n.yaml")
    ws.ingest_sources(progress=False)
    ws.store.start_round(1, "done")
    ws.store.kv_set(KV, "round/1/plan", {"round": 1, "k": 4, "seeds": 1, "strategy": "hybrid", "base": []})
    ws.store.kv_set(KV, "round/1/result", {"round": 1, "k": 4, "seeds": 1, "strategy": "hybrid", "state": "done",
                                           "line": "round 1: done"})
    ws.store.kv_set(KV, "latest", 1)
    with pytest.raises(LoopError, match="is done; a new one starts on the next round"):
        ws.dividend(k=8)
    assert ws.status().dividend == "round 1: done"


def test_an_arm_against_itself_differs_by_exactly_zero_and_is_within_noise():
    same = [0.50, 0.52, 0.49]
    c = compare_arms(same, same)
    assert c.difference.mean == 0.0 and c.difference.low == 0.0 and c.difference.high == 0.0
    assert c.verdict == "within noise"
