"""The reading paths a selection from a million takes (issue 10): float16 embeddings straight from the shards,
detections without box features, the pool's ids and hashes read in blocks, per-box uncertainty in chunks, and no
torch import where there is no GPU driver."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from labelwise import uncertainty
from labelwise.detections import ImageDetections, ScoredPool


def _det(rng: np.random.Generator, n: int, nc: int = 3, d_box: int = 5, d: int = 7) -> ImageDetections:
    xy = rng.uniform(0, 30, (n, 2))
    return ImageDetections(
        boxes=np.concatenate([xy, xy + rng.uniform(1, 10, (n, 2))], axis=1).astype(np.float32),
        class_scores=rng.uniform(0, 1, (n, nc)).astype(np.float32),
        box_features=rng.normal(size=(n, d_box)).astype(np.float16),
        embedding=rng.normal(size=d).astype(np.float16).astype(np.float32),
        max_candidate_score=float(np.float32(rng.uniform(0.1, 0.9))), width=64, height=48)


def _store(tmp_path, n: int = 40):
    from labelwise.store import Store

    store = Store(tmp_path / "labelwise.db")
    ids = [store.add_image(f"{i:064x}", f"/p/{i}.png", 64, 48, phash=i + 1, dhash=2 * i + 1)[0] for i in range(n)]
    rng = np.random.default_rng(3)
    dets = {f"{i:064x}": _det(rng, i % 4) for i in range(n)}
    items = list(dets.items())
    store.put_detections("m", 64, items[: n // 2])
    store.put_detections("m", 64, items[n // 2:])
    return store, ids, dets


def test_scored_pool_in_float16_holds_the_stored_values(tmp_path, monkeypatch):
    store, ids, _ = _store(tmp_path)
    import labelwise.store

    monkeypatch.setattr(labelwise.store, "_FETCH_ROWS", 7)  # several blocks even in a small store
    order = np.array(ids[::-1] + [999])
    a = store.scored_pool(order, "m", 64)
    b = store.scored_pool(order, "m", 64, embedding_dtype=np.float16)
    assert a.embeddings.dtype == np.float32 and b.embeddings.dtype == np.float16
    assert np.array_equal(a.embeddings, b.embeddings.astype(np.float32))
    assert a.image_ids.tolist() == b.image_ids.tolist() == ids[::-1]
    assert a.hashes.tolist() == [[i + 1, 2 * i + 1] for i in range(len(ids))][::-1]
    for name in ("box_offsets", "class_scores", "boxes", "max_candidate_score"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    many = np.array(ids + list(range(10_000, 31_000)))  # the one-scan path
    assert store.scored_pool(many, "m", 64, embedding_dtype=np.float16).image_ids.tolist() == ids
    store.close()


def test_detections_without_features_keep_everything_else(tmp_path):
    store, _, dets = _store(tmp_path)
    full = store.detections_many(list(dets), "m", 64)
    lean = store.detections_many(list(dets), "m", 64, features=False)
    assert set(full) == set(lean) == set(dets)
    for sha, d in dets.items():
        for name in ("boxes", "class_scores", "embedding"):
            assert np.array_equal(getattr(lean[sha], name), getattr(d, name)), name
        assert np.array_equal(full[sha].box_features, d.box_features)
        assert lean[sha].box_features.shape == (d.n_boxes, 0)
        assert (lean[sha].max_candidate_score, lean[sha].width) == (d.max_candidate_score, d.width)
    store.close()


def test_uncertainty_in_chunks_equals_one_pass(monkeypatch):
    rng = np.random.default_rng(0)
    n = 500
    counts = rng.integers(0, 6, n)
    off = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    b = int(off[-1])
    pool = ScoredPool(np.arange(n), np.zeros((n, 2), np.float32), off, rng.random((b, 5)).astype(np.float32),
                      rng.random((b, 4)).astype(np.float32), rng.random(n).astype(np.float32))
    whole = {m: uncertainty.image_uncertainty(pool, m) for m in uncertainty.MEASURES}
    share = uncertainty.evidence_share(pool)
    monkeypatch.setattr(uncertainty, "_BOX_CHUNK", 17)
    for m in uncertainty.MEASURES:
        assert np.array_equal(uncertainty.image_uncertainty(pool, m), whole[m]), m
    assert uncertainty.evidence_share(pool) == share


def test_no_gpu_driver_means_no_torch_import():
    code = ("import sys; from labelwise import diversity as d; d._GPU_DRIVER_FILES = ('/nonexistent',); "
            "print(d._cuda_available(), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
