"""Issue 8, part 1 (a quick proxy before whole simulations): what each measure and aggregation picks from ONE
trained model. Reads a workspace whose last round has a trained, scored model and whose batch is still to be
chosen (made here with `Workspace.create(..., model=<pretrained>, imgsz=128, train={"epochs": 5, "extra":
{"freeze": 10}}, budget={"initial": 100, "per_round": 50}, strategy={"cold_start": "random"})` and
`ws.run(oracle=..., rounds=2)` on the 2,000-image synthetic set), and for each configuration selects a batch of 50
from the same pool and counts hard / rare / burst images and the scenarios, against the pool's shares.

    .venv/bin/python benchmarks/probe_first_batch.py WORKSPACE DATASET
"""
import sys
import numpy as np, dataclasses
from pathlib import Path
from labelwise.loop import Workspace
from labelwise.selection import StrategyConfig, select, LabeledContext
from labelwise.synthetic import read_scenarios
d = Path(sys.argv[2])
sc = read_scenarios(d)
ws = Workspace(Path(sys.argv[1]))
cur = [r for r in ws.store.rounds() if r.model_hash][-1]
st = ws.store
unl = np.array(sorted(set(st.image_ids("pool","unlabeled")) | set(st.image_ids("pool","selected"))))
pool = st.scored_pool(unl, cur.model_hash, 128, n_classes=len(ws.config.classes))
lab_ids = st.image_ids("pool","labeled")
labp = st.scored_pool(lab_ids, cur.model_hash, 128, n_classes=len(ws.config.classes))
centre = (pool.embeddings.sum(0)+labp.embeddings.sum(0))/(len(pool)+len(labp))
pool = dataclasses.replace(pool, embeddings=pool.embeddings-centre)
ctx = LabeledContext(labp.embeddings-centre, st.class_box_counts(len(ws.config.classes)), hashes=st.image_hashes(lab_ids))
paths = {i: str(Path(st.image(int(i)).path).resolve().relative_to(d.resolve())) for i in pool.image_ids}
hard = np.array([sc[paths[i]]["hard"] for i in pool.image_ids]); rare=np.array([sc[paths[i]]["rare"] for i in pool.image_ids])
burst = np.array([sc[paths[i]]["burst_id"] is not None for i in pool.image_ids])
print("pool", len(pool), "hard %.2f rare %.2f burst %.2f" % (hard.mean(), rare.mean(), burst.mean()))
from labelwise.presets import PRESETS
confs = {
 "random": dict(name="random"),
 "article": PRESETS["article"],
 "softmax_lc_max": dict(name="softmax_least_confidence", aggregation="max"),
 "dc_sum": dict(name="detection_and_confusion", aggregation="sum"),
 "dc_max": dict(name="detection_and_confusion", aggregation="max"),
 "dc_mean_top3": dict(name="detection_and_confusion", aggregation="mean_top_n"),
 "dc_mean": dict(name="detection_and_confusion", aggregation="mean"),
 "de_sum": dict(name="detection_entropy", aggregation="sum"),
 "cc_sum": dict(name="class_confusion", aggregation="sum"),
 "hybrid_dc_sum": dict(name="hybrid", uncertainty="detection_and_confusion", aggregation="sum"),
 "hybrid_dc_max": dict(name="hybrid", uncertainty="detection_and_confusion", aggregation="max"),
 "utd_dc_sum": dict(name="uncertainty_then_diverse", uncertainty="detection_and_confusion", aggregation="sum"),
 "coreset": dict(name="coreset"),
}
for k,c in confs.items():
    c = {kk:v for kk,v in c.items() if kk!="cold_start"}
    cfg = StrategyConfig.from_dict(c | {"seed": 3})
    s = select(pool, 50, cfg, ctx)
    r = s.rows
    print(f"{k:18s} hard {hard[r].mean():.2f} rare {rare[r].mean():.2f} burst {burst[r].mean():.2f} skipped {len(s.skipped_duplicates)}")
scen = np.array([sc[paths[i]]["scenario"] for i in pool.image_ids])
print("pool scenarios", {k: round(float((scen==k).mean()),2) for k in np.unique(scen)})
for k in ["dc_sum","dc_max","dc_mean_top3","hybrid_dc_sum","article","softmax_lc_max"]:
    c = {kk:v for kk,v in confs[k].items() if kk!="cold_start"}
    s = select(pool, 50, StrategyConfig.from_dict(c | {"seed": 3}), ctx)
    print(k, {kk: int((scen[s.rows]==kk).sum()) for kk in np.unique(scen)})
