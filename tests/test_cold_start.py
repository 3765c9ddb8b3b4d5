"""Issue 8, part 2: the first batch from a checkpoint's embeddings (TypiClust, k-center), near-duplicates removed
first, and the loop's cold start from a real Ultralytics checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

from labelwise.detections import ScoredPool
from labelwise.diversity import covering_radius, typical_clusters, typicality
from labelwise.selection import LabeledContext, StrategyConfig, cold_start_select


def clustered(seed=0, sizes=(60, 30, 20, 10, 5), d=8, spread=0.05):
    r = np.random.default_rng(seed)
    centres = r.normal(size=(len(sizes), d)) * 3
    label = np.repeat(np.arange(len(sizes)), sizes)
    x = centres[label] + spread * r.normal(size=(label.size, d))
    return x.astype(np.float32), label, centres


def pool_of(x, hashes=None):
    n = x.shape[0]
    return ScoredPool(np.arange(n, dtype=np.int64) + 1, x, np.zeros(n + 1, np.int64), np.zeros((0, 3), np.float32),
                      np.zeros((0, 4), np.float32), np.zeros(n, np.float32), hashes=hashes)


def test_typicality_is_high_in_dense_regions_and_low_for_outliers():
    x = np.concatenate([np.zeros((20, 2)), [[5.0, 5.0]]]) + np.random.default_rng(0).normal(size=(21, 2)) * 0.01
    t = typicality(x, n_neighbors=5)
    assert np.argmin(t) == 20
    assert typicality(np.zeros((1, 2))).tolist() == [0.0]


def test_typiclust_takes_one_typical_image_from_each_of_the_largest_clusters():
    x, label, centres = clustered()
    picks = typical_clusters(x, 5, seed=0)
    assert sorted(label[picks].tolist()) == [0, 1, 2, 3, 4]  # every cluster once
    assert label[picks[0]] == 0  # the largest first
    # each pick is typical: nearer its cluster's centre than the cluster's median member
    for p in picks:
        members = x[label == label[p]]
        centre = members.mean(axis=0)
        assert np.linalg.norm(x[p] - centre) <= np.median(np.linalg.norm(members - centre, axis=1))


def test_typiclust_skips_clusters_the_labeled_set_already_covers():
    x, label, _ = clustered(1, sizes=(20, 20, 20, 20, 20))
    lab = x[label == 0][:1]  # 1 labeled + 4 to pick = 5 k-means clusters, one per true cluster
    picks = typical_clusters(x, 4, labeled=lab, seed=0)
    assert 0 not in label[picks].tolist()
    assert len(set(picks.tolist())) == 4


@pytest.mark.parametrize("method", ["typical", "kcenter"])
def test_cold_start_never_picks_two_perceptual_hash_duplicates(method):
    x, label, _ = clustered(2)
    n = x.shape[0]
    r = np.random.default_rng(2)
    base = r.integers(0, 2**63, size=(n // 4, 2), dtype=np.int64).astype(np.uint64)
    group = np.arange(n) % (n // 4)
    hashes = base[group] ^ (np.uint64(1) << r.integers(0, 64, size=(n, 2)).astype(np.uint64))
    sel = cold_start_select(pool_of(x, hashes), 20, StrategyConfig(cold_start=method, dedup_threshold=None,
                                                                  dedup_hamming=4))
    assert len(sel.rows) == 20 and len(set(group[sel.rows].tolist())) == 20
    assert all(("TypiClust" if method == "typical" else "k-center") in why for why in sel.reasons)


def test_cold_start_covers_the_pool_better_than_chance():
    x, label, _ = clustered(3, sizes=(200, 100, 50, 25, 12, 6))
    pool = pool_of(x)
    typical = cold_start_select(pool, 6, StrategyConfig(cold_start="typical", dedup_threshold=None))
    kcenter = cold_start_select(pool, 6, StrategyConfig(cold_start="kcenter", dedup_threshold=None))
    assert sorted(label[typical.rows].tolist()) == list(range(6))
    chance = [covering_radius(x, np.random.default_rng(s).permutation(len(x))[:6]) for s in range(20)]
    assert covering_radius(x, kcenter.rows) < np.median(chance)
    assert covering_radius(x, typical.rows) < np.median(chance)


def test_random_cold_start_is_a_plain_draw():
    x, _, _ = clustered(4)
    a = cold_start_select(pool_of(x), 10, StrategyConfig(cold_start="random", seed=1))
    b = cold_start_select(pool_of(x), 10, StrategyConfig(cold_start="random", seed=2))
    assert len(set(a.rows.tolist())) == 10 and set(a.rows.tolist()) != set(b.rows.tolist())
    assert not a.skipped_duplicates


@pytest.mark.slow
def test_the_loop_chooses_the_first_batch_from_a_checkpoints_embeddings(tmp_path):
    from labelwise.detectors.ultralytics import _ultralytics
    from labelwise.loop import Workspace
    from labelwise.synthetic import ScenarioSpec, generate, read_scenarios

    scenes = tmp_path / "scenes"
    generate(scenes, ScenarioSpec(n_train=80, n_val=8, image_size=64, seed=5), progress=False)
    ultralytics = _ultralytics(tmp_path / ".ultralytics")
    checkpoint = tmp_path / "start.pt"
    ultralytics.YOLO("yolov8n.yaml").save(str(checkpoint))  # a real checkpoint file, as a pretrained one would be

    def make(name, cold_start, model):
        ws = Workspace.create(tmp_path / name, images=[scenes / "train" / "images"], data_yaml=scenes / "data.yaml",
                              model=model, imgsz=64, budget={"per_round": 12, "initial": 12},
                              strategy={"name": "hybrid", "cold_start": cold_start}, stopping={"rule": "none"})
        ws.ingest_sources(progress=False)
        return ws

    ws = make("typical", "typical", str(checkpoint))
    rows = ws.select()
    assert len(rows) == 12
    assert all("TypiClust" in r["reason"] for r in rows)
    assert ws.status().rounds[-1]["strategy"] == "cold_start"
    # near-duplicates were removed first: no two picks from one burst of consecutive frames
    scenarios = read_scenarios(scenes)
    bursts = [scenarios[str(r["path"].relative_to(scenes)) if hasattr(r["path"], "relative_to") else
                        str(__import__("pathlib").Path(r["path"]).relative_to(scenes))]["burst_id"] for r in rows]
    bursts = [b for b in bursts if b is not None]
    assert len(bursts) == len(set(bursts))

    # a model YAML has no embeddings worth using: the cold start says so and draws at random
    yaml_ws = make("yaml", "typical", "yolov8n.yaml")
    rows = yaml_ws.select()
    assert len(rows) == 12 and all("not a trained checkpoint" in r["reason"] for r in rows)
