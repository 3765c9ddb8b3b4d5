"""Benchmark for issue 10, "Selection from a million" (work in progress: the synthetic data first)."""

from __future__ import annotations

import numpy as np

EMB_DIM = 448  # yolo11n: 64 + 128 + 256 channels feed the Detect head
N_CLASSES = 7


def synthetic_embeddings(n: int, seed: int = 0, d: int = EMB_DIM, rank: int = 32, n_classes: int = N_CLASSES,
                         chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) float16 image embeddings and (n,) the scene class of each image.

    Like pooled ReLU features of a CNN: a few strong directions (a `rank`-dimensional latent with a decaying spectrum,
    around one of `n_classes` scene means) mapped into d dimensions, plus a weak isotropic noise floor, clipped at 0.
    Deterministic per (seed, chunk): any n gives the same first rows.
    """
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(n_classes, rank)) * 2.0
    scale = 2.0 * np.arange(1, rank + 1) ** -0.5
    w = (rng.normal(size=(rank, d)) / np.sqrt(rank)).astype(np.float32)
    out = np.empty((n, d), dtype=np.float16)
    classes = np.empty(n, dtype=np.int64)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        r = np.random.default_rng([seed, start])
        cls = r.integers(0, n_classes, m)
        z = (mu[cls] + r.standard_normal((m, rank)) * scale).astype(np.float32)
        e = z @ w
        e += 0.3 * r.standard_normal((m, d), dtype=np.float32)
        np.maximum(e, 0, out=e)
        out[start:start + m] = e
        classes[start:start + m] = cls
    return out, classes
