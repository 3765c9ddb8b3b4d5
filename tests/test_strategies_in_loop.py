"""Issue 3 in the loop: every query strategy, end to end, on a real Ultralytics YOLO (yolo11n.yaml, imgsz 64, 1 epoch).

One module-scoped workspace does the expensive part once: a random seed round, a model-driven round 2 and the
training + scoring of round 3, all through `Workspace.run` with a `schedule:` in labelwise.yaml (entropy for rounds
1-2, hybrid from round 3). Each test then works on its own copy of that workspace (the store is a file), re-selecting
round 3's batch with the strategy it checks; committee and consistency run their extra passes there.

The model is barely trained, so the batches say nothing about quality (benchmarks/bench_first_batch.py does); the
point here is that every strategy runs in the loop and leaves a complete, explained record. `score.conf` is set very
low so that such a young model still keeps boxes, which the uncertainty, committee, consistency and class-balance
terms need to have something to work on, and the strategies count every box (`box_threshold: 0`,
`min_evidence: 0`): with the defaults such a model sees too little and every uncertainty strategy falls back to
coverage, which `test_a_model_that_sees_nothing_picks_for_coverage` checks.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from labelwise.balance import predicted_classes
from labelwise.committee import committee_disagreement
from labelwise.config import ConfigError, save_config
from labelwise.consistency import consistency_scores
from labelwise.loop import Workspace
from labelwise.selection import STRATEGIES
from labelwise.synthetic import RARE_CLASSES, ScenarioSpec, generate

pytestmark = pytest.mark.slow

K = 8  # budget.per_round
YOUNG = {"box_threshold": 0.0, "min_evidence": 0.0}  # count every box of a barely trained model
SCHEDULE = [{"rounds": "1-2", "strategy": {"name": "detection_and_confusion", **YOUNG}},
            {"rounds": "3-", "strategy": {"name": "hybrid", **YOUNG}}]

# What each strategy's reason says (a fill-up pick after near-duplicate suppression says "fill-up" instead).
REASON = {name: f"{name} ranking" for name in STRATEGIES} | {
    "random": "random", "random_dedup": "random without near-duplicates", "coreset": "k-center greedy",
    "hybrid": "hybrid", "uncertainty_then_diverse": "most uncertain", "committee": "query by committee",
    "consistency": "flip consistency",
}
# Score components each strategy must add to the common ones (uncertainty, rare_weight, n_boxes, score).
COMPONENTS = {
    "coreset": {"distance"}, "hybrid": {"uncertainty_scaled", "diversity"}, "uncertainty_then_diverse": {"distance"},
    "committee": {"disagreement"}, "consistency": {"inconsistency"},
}
# Cheap committee for the test: two bootstrap members, one epoch each (the default is 3 members).
STRATEGY_ARG = {"committee": {"name": "committee", "committee_size": 2, "committee_epochs": 1, **YOUNG}}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("strategy-scenes") / "dataset"
    generate(root, ScenarioSpec(n_train=96, n_val=16, image_size=64, seed=11))
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory, scenes) -> Path:
    """A workspace after two completed rounds (random seed, then entropy by the schedule), with round 3's model
    trained and the pool scored: the batch of round 3 is still to be chosen."""
    root = tmp_path_factory.mktemp("strategy-ws") / "ws"
    ws = Workspace.create(root, images=[scenes / "train" / "images"], data_yaml=scenes / "data.yaml",
                          model="yolo11n.yaml", imgsz=64, train={"epochs": 1, "batch": 8},
                          score={"conf": 0.001, "batch": 16}, budget={"per_round": K, "initial": K},
                          stopping={"rule": "none"}, schedule=SCHEDULE)
    ws.ingest_sources(progress=False)
    assert ws.run(oracle=scenes / "train" / "labels", rounds=2) == "2 round(s) done"
    ws.train()
    ws.score(progress=False)
    assert ws.store.current_round().step == "select"
    ws.store.close()
    return root


@pytest.fixture
def ws_copy(trained, tmp_path):
    """A private copy of the trained workspace; returns a function that opens it (again) as a Workspace."""
    root = tmp_path / "ws"
    shutil.copytree(trained, root, symlinks=True)
    opened: list[Workspace] = []

    def open_ws() -> Workspace:
        ws = Workspace(root)
        opened.append(ws)
        return ws

    yield open_ws
    for ws in opened:
        ws.store.close()


def edit_yaml(ws: Workspace, **changes) -> Workspace:
    """Change labelwise.yaml as a user would, then open the workspace again (as the next CLI command does)."""
    for key, value in changes.items():
        setattr(ws.config, key, value)
    save_config(ws.root, ws.config)
    ws.store.close()
    return Workspace(ws.root)


def unit_embeddings(ws: Workspace) -> dict[int, np.ndarray]:
    """Every pool image's embedding as `select` compares them: centred on the mean of the pool and the labeled
    images, then L2-normalised (cosine similarity = dot product)."""
    current = ws.store.current_round()
    ids = np.asarray([img.id for img in ws.store.images(split="pool")])
    pool = ws.store.scored_pool(ids, current.model_hash, ws.config.imgsz, n_classes=len(ws.config.classes))
    assert len(pool) == len(ids)
    e = pool.embeddings - pool.embeddings.mean(axis=0)
    e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    return {int(i): v for i, v in zip(pool.image_ids, e)}


def passes(ws: Workspace, variant: str):
    """The round's pass `variant` over the images that were unlabeled when round 3 was selected."""
    current = ws.store.current_round()
    ids = np.concatenate([ws.store.image_ids("pool", "unlabeled"), ws.store.image_ids("pool", "selected")])
    return ws.store.scored_pool(np.sort(ids), current.model_hash, 64, variant, n_classes=len(ws.config.classes))


def read_manifest(folder: Path) -> tuple[dict, list[dict]]:
    doc = json.loads((folder / "manifest.json").read_text())
    with open(folder / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return doc, rows


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_selects_explains_and_exports_in_the_loop(ws_copy, name):
    ws = ws_copy()
    current = ws.store.current_round()
    assert current.round == 3
    unlabeled = {int(i) for i in ws.store.image_ids("pool", "unlabeled")}
    shas = {ws.store.image(i).sha256 for i in unlabeled}

    rows = ws.select(strategy=STRATEGY_ARG.get(name, {"name": name, **YOUNG}))

    ids = [r["image_id"] for r in rows]
    assert len(ids) == K and len(set(ids)) == K, "exactly k distinct images"
    assert set(ids) <= unlabeled, "only images that were unlabeled"
    assert [r["rank"] for r in rows] == list(range(1, K + 1))
    stored = ws.store.selection(current.round)
    assert [r["image_id"] for r in stored] == ids
    wanted = {"uncertainty", "rare_weight", "n_boxes", "score"} | COMPONENTS.get(name, set())
    for r in stored:
        assert r["reason"].strip(), f"pick {r['rank']} has no reason"
        assert REASON[name] in r["reason"] or "fill-up" in r["reason"], r["reason"]
        assert wanted <= set(r["components"]), (wanted - set(r["components"]), r["reason"])
        assert all(np.isfinite(v) for v in r["components"].values()), r["components"]
        assert r["components"]["rare_weight"] == 1.0  # rare-class awareness is off unless asked for
    assert ws.status().rounds[-1]["strategy"] == name  # the rounds table says which strategy picked the batch

    # the export manifest shows every score component and the reason of every pick
    folder = ws.export()
    doc, csv_rows = read_manifest(folder)
    assert [row["sha256"] for row in doc["images"]] == [r["sha256"] for r in stored]
    for row, r in zip(doc["images"], stored):
        assert row["reason"] == r["reason"]
        for key, value in r["components"].items():
            assert row[f"score_{key}"] == pytest.approx(value, abs=1e-6)
    assert len(csv_rows) == K and {f"score_{c}" for c in wanted} <= set(csv_rows[0])
    assert len(list((folder / "images").iterdir())) == K

    # the extra passes really ran, and are stored like the plain pass
    model_hash = current.model_hash
    assert shas <= ws.store.scored_shas(model_hash, 64, "")
    if name == "committee":
        for j in range(2):
            assert shas <= ws.store.scored_shas(model_hash, 64, f"member{j}"), f"member{j} did not score the pool"
            weights = ws.store.kv_get("committee", f"r3/member{j}")
            assert weights and Path(weights).exists() and weights != current.model_path
        assert not ws.store.scored_shas(model_hash, 64, "member2")  # committee_size 2 was honoured
        assert not ws.store.scored_shas(model_hash, 64, "flip")
        # members trained on different bootstrap resamples of the 16 labeled images
        samples = [sorted(p.name for p in (ws.root / "rounds" / "r003" / f"committee{j}-data" / "images" / "train")
                          .iterdir()) for j in range(2)]
        assert all(len(s) == 16 for s in samples) and samples[0] != samples[1]
        # the stored component is the disagreement of exactly those member passes (a young committee may well
        # agree everywhere, e.g. that an image is empty, so its value is not asserted to be positive)
        members = [passes(ws, f"member{j}") for j in range(2)]
        expected = committee_disagreement(members, "max", 3)
        row = {int(i): n for n, i in enumerate(members[0].image_ids)}
        for r in stored:
            assert r["components"]["disagreement"] == pytest.approx(expected[row[r["image_id"]]], abs=1e-9)
    elif name == "consistency":
        assert shas <= ws.store.scored_shas(model_hash, 64, "flip")
        assert not ws.store.scored_shas(model_hash, 64, "member0")
        plain, flipped = passes(ws, ""), passes(ws, "flip")
        expected = consistency_scores(plain, flipped, "max", 3)
        row = {int(i): n for n, i in enumerate(plain.image_ids)}
        for r in stored:
            assert r["components"]["inconsistency"] == pytest.approx(expected[row[r["image_id"]]], abs=1e-9)
    else:
        assert not ws.store.scored_shas(model_hash, 64, "flip")
        assert not ws.store.scored_shas(model_hash, 64, "member0")


def test_reselecting_returns_the_old_batch_to_the_pool(ws_copy):
    ws = ws_copy()
    first = {r["image_id"] for r in ws.select(strategy="coreset")}
    second = {r["image_id"] for r in ws.select(strategy={"name": "detection_entropy", **YOUNG})}
    counts = ws.store.counts()
    assert counts["pool_selected"] == K
    assert {int(i) for i in ws.store.image_ids("pool", "selected")} == second
    assert len(first | second) > K or first == second
    assert ws.status().rounds[-1]["strategy"] == "detection_entropy"


def test_schedule_in_labelwise_yaml_is_honoured_by_run(ws_copy, scenes):
    ws = ws_copy()
    # round 2 was chosen inside `run` by the schedule's measure; round 1 is the cold-start random batch and says so
    assert [r["strategy"] for r in ws.status().rounds] == ["random", "detection_and_confusion", "hybrid"]
    assert all("cold start" in r["reason"] for r in ws.store.selection(1))
    assert all(r["reason"].startswith("detection_and_confusion ranking") or "fill-up" in r["reason"]
               for r in ws.store.selection(2))
    # round 3 falls under "3-": hybrid, picked by `run` itself
    assert ws.run(oracle=scenes / "train" / "labels", rounds=1) == "1 round(s) done"
    picks = ws.store.selection(3)
    assert len(picks) == K and all(r["outcome"] == "labeled" for r in picks)
    assert all(r["reason"].startswith("hybrid: ") or "fill-up" in r["reason"] for r in picks)
    assert all({"uncertainty_scaled", "diversity"} <= set(r["components"]) for r in picks)
    assert [r["strategy"] for r in ws.status().rounds] == ["random", "detection_and_confusion", "hybrid"]


def test_near_duplicates_are_never_both_picked_and_the_skips_are_listed(ws_copy, scenes):
    ws = ws_copy()
    emb = unit_embeddings(ws)
    ids = sorted(emb)
    e = np.stack([emb[i] for i in ids])
    sims = e @ e.T
    np.fill_diagonal(sims, -np.inf)
    # A threshold that half of the images have a neighbour above: the synthetic pool's bursts (consecutive frames
    # of one scene) guarantee that some images are that close, so suppression has work to do.
    threshold = float(np.round(np.median(sims.max(axis=1)), 4))
    # the perceptual-hash filter is off here: this test checks the embedding filter and its listing
    ws = edit_yaml(ws, schedule=[], strategy={"name": "detection_and_confusion", "dedup_threshold": threshold,
                                              "dedup_hamming": None, **YOUNG})
    k = 24
    rows = ws.select(k=k)
    picked = [r["image_id"] for r in rows]
    assert 0 < len(picked) <= k and len(set(picked)) == len(picked)
    labeled = [int(i) for i in ws.store.image_ids("pool", "labeled")]
    for a_pos, a in enumerate(picked):
        for b in picked[a_pos + 1:] + labeled:
            assert float(emb[a] @ emb[b]) < threshold + 1e-4, f"images {a} and {b} are near duplicates"
    skipped = ws.store.duplicate_skips(3)
    assert skipped, "nothing was skipped although half the pool has a neighbour above the threshold"
    assert not {i for i, _, _ in skipped} & set(picked)
    assert all(sim >= threshold - 1e-4 for _, _, sim in skipped)

    folder = ws.export()
    with open(folder / "duplicates_skipped.csv", newline="") as fh:
        listed = list(csv.DictReader(fh))
    assert len(listed) == len(skipped)
    picked_paths = {str(ws.store.image(i).path) for i in picked}
    labeled_paths = {str(ws.store.image(i).path) for i in labeled}
    for row in listed:
        assert row["image_path"] not in picked_paths
        # the image it duplicates is named by path: a labeled image or one in this batch
        assert row["duplicate_of_path"] in picked_paths | labeled_paths, row
        assert ("labeled" in row["duplicate_of"]) == (row["duplicate_of_path"] in labeled_paths)
        assert float(row["cosine_similarity"]) >= threshold - 1e-4

    # with suppression off, nothing is listed, and a stale list from the earlier selection is gone
    ws = edit_yaml(ws, strategy={"name": "detection_and_confusion", "dedup_threshold": None, "dedup_hamming": None,
                                 **YOUNG})
    ws.select(k=k)
    assert ws.store.duplicate_skips(3) == []
    assert not (ws.export() / "duplicates_skipped.csv").exists()


def test_rare_class_weight_and_quotas_flow_from_labelwise_yaml(ws_copy):
    ws = ws_copy()
    current = ws.store.current_round()
    pool = ws.store.scored_pool(ws.store.image_ids("pool", "unlabeled"), current.model_hash, 64, n_classes=6)
    present = predicted_classes(pool)
    # a quota the young model can serve: the class it predicts in the fewest (but some) images, plus a rare class
    have = present.sum(axis=0)
    quota_class = int(np.argmin(np.where(have > 0, have, np.inf)))
    names = ws.config.classes
    rare = names[RARE_CLASSES[0]]
    quotas = {names[quota_class]: 2} | ({rare: 1} if quota_class != RARE_CLASSES[0] else {})
    ws = edit_yaml(ws, schedule=[], strategy={"name": "detection_and_confusion", "rare_class_weight": True,
                                              "class_quotas": quotas, **YOUNG})
    rows = ws.select()
    assert len(rows) == K
    spec = json.loads(ws.store.current_round().strategy)
    assert spec["rare_class_weight"] is True and spec["class_quotas"][str(quota_class)] == 2
    # the rare-class weight is in every pick's components and multiplies its score
    weights = [r["components"]["rare_weight"] for r in rows]
    assert all(1.0 <= w <= 2.0 for w in weights) and max(weights) > 1.0
    for r in rows:
        c = r["components"]
        assert c["score"] == pytest.approx(c["rare_weight"] * c["uncertainty"], rel=1e-6)
    # the quota was filled first, by images the model predicts to hold the class
    quota_picks = [r for r in rows if r["reason"].startswith(f"class quota for class {quota_class} ")]
    assert len(quota_picks) == min(2, int(have[quota_class]))
    row_of = {int(i): n for n, i in enumerate(pool.image_ids)}
    assert all(present[row_of[r["image_id"]], quota_class] for r in quota_picks)
    # quotas come first (rarest labeled class first), then the strategy proper
    is_quota = [r["reason"].startswith("class quota for class ") for r in rows]
    assert is_quota == sorted(is_quota, reverse=True)
    doc, _ = read_manifest(ws.export())
    assert all("score_rare_weight" in row for row in doc["images"])

    # a typo in the strategy section is an error that names the key, not a silent default; labelwise.yaml is
    # checked whole when it is loaded, so the next command refuses it before any train, score or select
    path = ws.root / "labelwise.yaml"
    for strategy, word in (({"name": "detection_and_confusion", "dedup_treshold": 0.9}, "dedup_treshold"),
                           ({"name": "detection_and_confusion", "class_quotas": {"unicorn": 1}}, "unicorn")):
        data = yaml.safe_load(path.read_text())
        data["strategy"] = strategy
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(ConfigError, match=word):
            Workspace(ws.root)


def test_cli_select_with_strategy(ws_copy):
    from typer.testing import CliRunner

    from labelwise.cli import app

    ws = ws_copy()
    root = ws.root
    ws.store.close()
    runner = CliRunner()
    result = runner.invoke(app, ["select", "-w", str(root), "--strategy", "softmax_margin"])
    assert result.exit_code == 0, result.output
    assert f"selected {K} images" in result.output
    ws = ws_copy()
    rows = ws.store.selection(3)
    # with the default box threshold this young model sees too little, and says so in every reason
    assert len(rows) == K and all("too young to rank by uncertainty" in r["reason"] for r in rows)
    assert ws.status().rounds[-1]["strategy"] == "softmax_margin"
    ws.store.close()
    bad = runner.invoke(app, ["select", "-w", str(root), "--strategy", "guesswork"])
    assert bad.exit_code == 2 and "guesswork" in bad.output


def test_a_model_that_sees_nothing_picks_for_coverage(ws_copy):
    ws = ws_copy()
    current = ws.store.current_round()
    pool = ws.store.scored_pool(ws.store.image_ids("pool", "unlabeled"), current.model_hash, 64, n_classes=6)
    from labelwise.uncertainty import evidence_share

    assert evidence_share(pool, 0.1) < 0.5  # the premise: a 1-epoch model keeps almost nothing at 0.1
    rows = ws.select(strategy={"name": "hybrid"})
    assert len(rows) == K
    assert all("too young to rank by uncertainty" in r["reason"] and "k-center greedy" in r["reason"] for r in rows)


def test_old_strategy_names_are_refused_with_the_new_ones(ws_copy):
    ws = ws_copy()
    with pytest.raises(ValueError, match="softmax_entropy"):
        ws.select(strategy="entropy")
