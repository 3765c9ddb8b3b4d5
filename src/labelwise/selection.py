"""Query strategies: which pool images to label next, with every score component and a reason for each pick.

Pure NumPy core; `select` is the single entry point the loop calls. Higher score = more informative.

Order of work in `select`:
1. per-image scores (uncertainty by the configured measure/aggregation/empty policy; committee disagreement or
   flip inconsistency when those strategies run), multiplied by the rare-class weight when `rare_class_weight` is on;
2. class quotas (if any), rarest labeled class first: the best images by the strategy's static score that are
   predicted to hold the class, until the batch holds `quota` images of it;
3. the strategy proper for the rest of the batch, treating quota picks as already in the batch;
4. if near-duplicate suppression left the batch short, it is filled by the strategy's static score.
Near-duplicate suppression applies in every step: an image whose cosine similarity to a labeled image or to one
already in the batch is >= `dedup_threshold` is skipped and recorded in `Selection.skipped_duplicates`.

Ties are broken by `tie_order` (a seeded hash of the image id), so the picked set does not depend on the order of the
pool's rows, and a young model whose scores all tie does not simply take the first files (consecutive video frames).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from labelwise.balance import class_presence, predicted_classes, quota_order, rare_class_weights
from labelwise.committee import committee_disagreement
from labelwise.consistency import consistency_scores
from labelwise.detections import ScoredPool
from labelwise.diversity import (
    CappedDistance,
    central_point,
    centroid_diversity,
    cosine_to_distance,
    farthest_first,
    unit_rows,
)
from labelwise.neardup import DEFAULT_MAX_HAMMING, HashIndex
from labelwise.scaling import minmax
from labelwise.uncertainty import (
    AGGREGATIONS,
    DEFAULT_BOX_THRESHOLD,
    EMPTY_POLICIES,
    MEASURES,
    evidence_share,
    image_uncertainty,
)

#: A strategy named after an uncertainty measure ranks the pool by that measure.
STRATEGIES: tuple[str, ...] = (
    "random", "random_dedup", *MEASURES, "coreset", "hybrid", "uncertainty_then_diverse", "committee", "consistency",
)
DIVERSITY_TERMS = ("nearest", "centroid")
COLD_STARTS = ("typical", "kcenter", "random")
#: labelwise 0.1 names that normalised sigmoid scores; they are refused with the names to use instead.
RENAMED = {
    "least_confidence": "softmax_least_confidence", "margin": "softmax_margin", "entropy": "softmax_entropy",
    "binary_entropy": "detection_entropy",
}
#: Strategies whose ranking needs a model that sees something; with too little evidence they fall back to coverage.
_NEEDS_EVIDENCE = (*MEASURES, "hybrid", "uncertainty_then_diverse", "committee", "consistency")

#: Candidates checked against the labeled set and the batch per step of a ranked walk.
_WALK_BLOCK = 4096
#: Candidates judged together against the picks of their own walk block: a sub-block's similarity matrix is
#: _DEDUP_SUB^2 floats (4 MB), whatever the batch size.
_DEDUP_SUB = 1024
#: Reference rows per chunk of a nearest-neighbour search (`best_match`): the temporary is at most
#: _DEDUP_SUB x _MATCH_CHUNK floats.
_MATCH_CHUNK = 4096


def best_match(q: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of `q`, the row of `ref` with the largest inner product and that product: ``argmax_j q_i.ref_j``
    (on L2-normalised rows the cosine similarity; ties to the smallest j). Exhaustive, chunked over both `q` and
    `ref`, so memory stays O((|q| + |ref|) * d) and never |q| x |ref|. Without any `ref` row: index 0, -inf."""
    n = q.shape[0]
    best = np.zeros(n, dtype=np.int64)
    best_sim = np.full(n, -np.inf, dtype=np.float32)
    for a in range(0, n, _DEDUP_SUB):
        b = min(n, a + _DEDUP_SUB)
        for c in range(0, ref.shape[0], _MATCH_CHUNK):
            sims = q[a:b] @ ref[c:c + _MATCH_CHUNK].T
            j = np.argmax(sims, axis=1)
            s = sims[np.arange(b - a), j]
            better = s > best_sim[a:b]  # strictly: an earlier chunk keeps a tie
            best[a:b][better] = c + j[better]
            best_sim[a:b][better] = s[better]
    return best, best_sim


@dataclass(frozen=True)
class StrategyConfig:
    """How to pick a batch. See `select` and the module docstring.

    name: one of STRATEGIES. uncertainty: the measure (one of uncertainty.MEASURES) used by hybrid,
    uncertainty_then_diverse, coreset/committee/consistency quota and fill order; a strategy named after a measure
    uses that measure. aggregation/top_n: per-image aggregation of per-box scores. box_threshold: a box counts towards
    uncertainty when its top score is at least this (apart from score.conf, the detector's candidate threshold).
    empty_policy/empty_value: score of images with no counted box (uncertainty.empty_image_scores).
    min_evidence: below this share of pool images holding a counted box, the model is too young for its
    uncertainty to mean anything and uncertainty-driven strategies pick by coverage (k-center greedy) instead.
    cold_start: how the first batch is chosen when no round model exists (typical | kcenter | random; the loop reads
    it, see `cold_start_select`). alpha/beta: hybrid weights. diversity: hybrid's diversity term, "nearest"
    (ranked batch-mode) or "centroid" (the article's).
    n_clusters: MiniBatchKMeans k for "centroid". candidate_factor: M = factor * k for uncertainty_then_diverse.
    dedup_threshold: cosine similarity at or above which two images are near duplicates (None: off). 0.995 on
    centred, L2-normalised embeddings by default. Measured on the synthetic scenario data with a trained yolo11n:
    consecutive burst frames have median similarity 0.998-0.999, while 1-1.7% of pairs of DIFFERENT scenes exceed
    0.98; against a labeled set of 150 images, 0.98 would wrongly reject most candidates, 0.995 (0.1-0.2% of
    unrelated pairs) rejects few. dedup_hamming: perceptual-hash near-duplicates (`labelwise.neardup`): an image
    within this Hamming distance of a labeled or picked image is skipped, whatever the model (None: off). Plain
    `random` applies neither filter: it is the baseline; `random_dedup` applies both. rare_class_weight: multiply
    scores by balance.rare_class_weights. class_quotas: {class id: minimum images predicted to hold it}. seed: random and
    k-means seed.
    """

    name: str = "hybrid"
    uncertainty: str = "detection_and_confusion"
    aggregation: str = "sum"
    top_n: int = 3
    box_threshold: float = DEFAULT_BOX_THRESHOLD
    empty_policy: str = "near_miss"
    empty_value: float = 1.0
    min_evidence: float = 0.5
    cold_start: str = "typical"
    alpha: float = 0.7
    beta: float = 0.3
    diversity: str = "nearest"
    n_clusters: int = 50
    candidate_factor: int = 4
    dedup_threshold: float | None = 0.995
    dedup_hamming: int | None = DEFAULT_MAX_HAMMING
    rare_class_weight: bool = False
    class_quotas: dict[int, int] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("name", "uncertainty"):
            old = getattr(self, key)
            if old in RENAMED:
                raise ValueError(
                    f"strategy config: {key} {old!r} no longer exists: it normalised YOLO's independent sigmoid "
                    f"scores to sum to 1, which ranks faint clutter as most uncertain. For YOLO use "
                    f"'detection_and_confusion' (or 'detection_entropy', 'class_confusion'); for a detector whose "
                    f"class scores are a softmax, '{RENAMED[old]}'.")
        choices = {"name": STRATEGIES, "uncertainty": MEASURES, "aggregation": AGGREGATIONS,
                   "empty_policy": EMPTY_POLICIES, "diversity": DIVERSITY_TERMS, "cold_start": COLD_STARTS}
        for key, allowed in choices.items():
            value = getattr(self, key)
            if value not in allowed:
                raise ValueError(f"strategy config: unknown {key} {value!r}; expected one of {', '.join(allowed)}")
        if self.top_n < 1:
            raise ValueError(f"strategy config: top_n must be >= 1, got {self.top_n}")
        if self.alpha < 0 or self.beta < 0 or self.alpha + self.beta == 0:
            raise ValueError(f"strategy config: alpha and beta must be >= 0 and not both 0, got {self.alpha}, {self.beta}")
        if self.n_clusters < 1 or self.candidate_factor < 1:
            raise ValueError("strategy config: n_clusters and candidate_factor must be >= 1")
        if not 0.0 <= self.box_threshold <= 1.0 or not 0.0 <= self.min_evidence <= 1.0:
            raise ValueError(f"strategy config: box_threshold and min_evidence must be in [0, 1], got "
                             f"{self.box_threshold}, {self.min_evidence}")
        if self.dedup_hamming is not None and not 0 <= self.dedup_hamming <= 64:
            raise ValueError(f"strategy config: dedup_hamming must be 0..64 bits or null, got {self.dedup_hamming}")
        if self.dedup_threshold is not None and not -1.0 <= self.dedup_threshold <= 1.0:
            raise ValueError(f"strategy config: dedup_threshold must be in [-1, 1] or null, got {self.dedup_threshold}")
        quotas = {int(c): int(m) for c, m in dict(self.class_quotas).items()}
        if any(m < 0 for m in quotas.values()):
            raise ValueError(f"strategy config: class_quotas must be >= 0, got {quotas}")
        object.__setattr__(self, "class_quotas", quotas)

    @classmethod
    def from_dict(cls, d: dict) -> "StrategyConfig":
        """Config from a plain mapping (e.g. a `labelwise.yaml` section); ValueError names any unknown key or value."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"strategy config: unknown key(s) {', '.join(map(repr, unknown))}; "
                             f"known keys are {', '.join(sorted(known))}")
        return cls(**dict(d))


@dataclass(frozen=True)
class LabeledContext:
    """What is already labeled: embeddings (M, d), M may be 0; class_counts (n_classes,) labeled box counts;
    hashes (M', 2) uint64 perceptual hashes of the labeled images (pHash, dHash), None when unknown. M' may differ
    from M: an image has a hash from ingest on, an embedding only once a model scored it."""

    embeddings: np.ndarray
    class_counts: np.ndarray
    hashes: np.ndarray | None = None


@dataclass(frozen=True)
class Selection:
    """A picked batch. rows: pool positions in pick order, distinct. scores: per pick, the score it was ranked by.
    components: per pick, every score component. reasons: per pick, why it was picked. skipped_duplicates: (pool
    row skipped, what it duplicates, how near): "pool row R" or "labeled #J" (J: row of the labeled embeddings) with
    the cosine similarity, or "hash of pool row R" or "labeled hash #J" (J: row of the labeled hashes) with the
    Hamming distance."""

    rows: np.ndarray
    scores: np.ndarray
    components: list[dict[str, float]]
    reasons: list[str]
    skipped_duplicates: list[tuple[int, str, float]]


def tie_order(image_ids: np.ndarray, seed: int) -> np.ndarray:
    """A tie-break key per image: the SplitMix64 mix of (image id, seed), as uint64.

    Depends on the image and the seed only, so selection stays invariant to the pool's row order, yet tied images
    are taken in a scrambled order rather than by file order. That matters with a young model, whose scores all
    tie: file order would take consecutive video frames, the near-duplicates active learning is meant to avoid.
    """
    with np.errstate(over="ignore"):
        z = np.asarray(image_ids, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15) * np.uint64(seed + 1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class _Batch:
    """The batch under construction and the near-duplicate bookkeeping shared by every step of `select`."""

    def __init__(self, x: np.ndarray, lab: np.ndarray, tie_key: np.ndarray, threshold: float | None,
                 hashes: np.ndarray | None = None, lab_hashes: np.ndarray | None = None,
                 max_hamming: int | None = None):
        self.x, self.lab, self.tie_key, self.threshold = x, lab, tie_key, threshold
        self.rows: list[int] = []
        self.scores: list[float] = []
        self.components: list[dict[str, float]] = []
        self.reasons: list[str] = []
        self.skipped: list[tuple[int, str, float]] = []
        self.excluded = np.zeros(x.shape[0], dtype=bool)  # picked or skipped
        # Perceptual-hash near-duplicates need no model: images near a labeled one never become candidates, and
        # each pick removes its own near-duplicates from the pool as it is taken.
        self.hashes = hashes if max_hamming is not None and hashes is not None else None
        self.max_hamming = max_hamming
        self._hash_done: set[int] = set()
        # Indexed (multi-index hashing): each pick's neighbours are found without a pass over the whole pool.
        self._hash_index = HashIndex(self.hashes, max_hamming) if self.hashes is not None else None
        if self.hashes is not None and lab_hashes is not None and len(lab_hashes):
            of, dist = self._hash_index.nearest(np.asarray(lab_hashes, dtype=np.uint64))
            for r in np.flatnonzero(of >= 0):
                self.skip(int(r), f"labeled hash #{int(of[r])}", float(dist[r]))

    def add(self, row: int, score: float, comps: dict[str, float], reason: str) -> None:
        self.rows.append(int(row))
        self.scores.append(float(score))
        self.components.append({k: float(v) for k, v in comps.items()})
        self.reasons.append(reason)
        self.excluded[row] = True
        self.exclude_hash_neighbours(int(row))

    def exclude_hash_neighbours(self, row: int) -> None:
        """Skips every candidate within `max_hamming` of `row`'s perceptual hashes (once per row)."""
        if self.hashes is None or row in self._hash_done:
            return
        self._hash_done.add(row)
        near, dist = self._hash_index.within(self.hashes[row])
        keep = ~self.excluded[near] & (near != row)  # the representative stays a candidate (the cold start keeps it)
        for r, d in zip(near[keep], dist[keep]):
            self.skip(int(r), f"hash of pool row {row}", float(d))

    def skip(self, row: int, of: str, similarity: float) -> None:
        """Records a near-duplicate: `similarity` is the cosine, or the Hamming distance when `of` says "hash"."""
        self.skipped.append((int(row), of, float(similarity)))
        self.excluded[row] = True

    def centres(self) -> np.ndarray:
        """Labeled embeddings followed by the batch's: centre j < M is labeled #j, else pool row rows[j - M]."""
        if not self.rows:
            return self.lab
        return np.concatenate([self.lab, self.x[np.asarray(self.rows)]])

    def centre_name(self, j: int, batch_rows: list[int]) -> str:
        m = self.lab.shape[0]
        return f"labeled #{j}" if j < m else f"pool row {batch_rows[j - m]}"

    def ranked(self, key: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Rows (default: all not excluded) by key descending, ties to the smaller tie key."""
        rows = np.flatnonzero(~self.excluded) if rows is None else rows[~self.excluded[rows]]
        return rows[np.lexsort((self.tie_key[rows], -key[rows]))]

    def walk(self, order: np.ndarray, need: int, score: np.ndarray, comps, reason) -> int:
        """Takes rows from `order` until `need` are picked, skipping near duplicates of labeled or batch images.
        Returns how many were picked. `comps(row)` and `reason(row, rank)` describe each pick."""
        picked = 0
        pos = 0
        thr = self.threshold
        order = order[~self.excluded[order]]
        while picked < need and pos < order.size:
            blk = order[pos:pos + max(_WALK_BLOCK, 2 * need)]
            pos += blk.size
            blk = blk[~self.excluded[blk]]
            if thr is None:
                for r in blk:
                    if picked >= need:
                        break
                    if self.excluded[r]:  # a hash near-duplicate of a pick made earlier in this block
                        continue
                    self.add(r, score[r], comps(r), reason(r, len(self.rows) + 1))
                    picked += 1
                continue
            xb = self.x[blk]
            before = list(self.rows)
            # Each candidate's most similar labeled-or-batch image: a nearest-neighbour search by inner product
            # (cosine, the rows being unit vectors), chunked, never a block-by-centres matrix.
            best, best_sim = best_match(xb, self.centres())
            taken_here: list[int] = []  # block positions picked in this block, in pick order
            for a in range(0, blk.size, _DEDUP_SUB):
                # Candidates are judged one by one against what this block picked before them: those of earlier
                # sub-blocks by a search, those of this sub-block by a sub-block-sized similarity matrix.
                b = min(blk.size, a + _DEDUP_SUB)
                n_prior = len(taken_here)
                p_best, p_sim = best_match(xb[a:b], xb[np.asarray(taken_here, dtype=np.int64)])
                sub_sims = xb[a:b] @ xb[a:b].T
                for i in range(a, b):
                    r = blk[i]
                    if self.excluded[r]:
                        continue
                    if best_sim[i] >= thr:
                        self.skip(r, self.centre_name(int(best[i]), before), best_sim[i])
                        continue
                    j, s = int(p_best[i - a]), p_sim[i - a]
                    if len(taken_here) > n_prior:  # this sub-block's picks come after the earlier ones
                        mine = sub_sims[i - a, np.asarray(taken_here[n_prior:]) - a]
                        jj = int(np.argmax(mine))
                        if mine[jj] > s:
                            j, s = n_prior + jj, mine[jj]
                    if s >= thr:
                        self.skip(r, f"pool row {int(blk[taken_here[j]])}", s)
                        continue
                    self.add(r, score[r], comps(r), reason(r, len(self.rows) + 1))
                    taken_here.append(i)
                    picked += 1
                    if picked >= need:
                        break
                if picked >= need:
                    break
        return picked

    def greedy(self, rows: np.ndarray, need: int, base: np.ndarray, gain: np.ndarray, transform,
               first_key: np.ndarray | None):
        """Runs diversity.farthest_first on pool `rows` (not excluded) with labeled + batch as centres; returns the
        picks as (pool row, value, distance) and records skipped duplicates. Without any centre, the first pick is
        the row with the largest `first_key` (None: diversity.central_point). A pick that turns out to be a
        perceptual-hash near-duplicate of an earlier pick of the same run is dropped, and the greedy runs again
        for the shortfall, with the picks so far as centres."""
        picks: list[tuple[int, float, float]] = []
        while len(picks) < need:
            got, dropped = self._greedy_pass(rows, need - len(picks), base, gain, transform, first_key,
                                             [p[0] for p in picks])
            picks += got
            if not got or not dropped:
                break
        return picks

    def _greedy_pass(self, rows, need, base, gain, transform, first_key, pending: list[int]):
        rows = np.sort(rows[~self.excluded[rows]])  # sorted: then all rows means x itself, no copy
        if rows.size == 0 or need <= 0:
            return [], False
        n = self.x.shape[0]
        # Most of the pool: the greedy runs on x itself with the rest masked out (`candidates`), no copy of x (which
        # may be a lazy diversity.UnitRows of a million rows); a small part is gathered.
        masked = rows.size * 2 > n
        xs, at = (self.x, np.arange(n)) if masked else (self.x[rows], rows)
        candidates = None if (not masked or rows.size == n) else rows
        cen = self.centres()
        if pending:
            cen = np.concatenate([cen, self.x[np.asarray(pending)]])
        before = list(self.rows) + pending
        first = None
        if cen.shape[0] == 0:
            if first_key is None:
                first = central_point(xs) if candidates is None else central_point(xs, candidates)
            else:
                key = first_key[rows]
                tied = np.flatnonzero(key == key.max())
                best = int(tied[np.argmin(self.tie_key[rows][tied])])
                first = int(rows[best]) if masked else best
        dup = None if self.threshold is None else cosine_to_distance(self.threshold)
        res = farthest_first(xs, need, labeled=cen if cen.shape[0] else None, base=base[at], gain=gain[at],
                             transform=transform, first=first, dup_distance=dup, tie_key=self.tie_key[at],
                             **({} if candidates is None else {"candidates": candidates}))
        for local, centre, dist in res.skipped:
            if centre >= 0:
                of = f"pool row {int(at[centre])}"
            else:
                of = self.centre_name(-1 - centre, before)
            self.skip(int(at[local]), of, 1.0 - dist * dist / 2.0)
        picks, dropped = [], False
        for p, v, d in zip(res.picks, res.values, res.distances):
            row = int(at[p])
            if self.excluded[row]:  # a hash near-duplicate of an earlier pick of this same greedy run
                dropped = True
                continue
            self.excluded[row] = True  # taken: `add` follows in the caller
            self.exclude_hash_neighbours(row)
            picks.append((row, float(v), float(d)))
        return picks, dropped


def select(pool: ScoredPool, k: int, config: StrategyConfig, labeled: LabeledContext | None = None,
           members: list[ScoredPool] | None = None, flipped: ScoredPool | None = None, *,
           centre: np.ndarray | None = None) -> Selection:
    """Picks min(k, selectable) distinct pool rows with `config.name` (one of STRATEGIES).

    Strategies (u = per-image uncertainty, w = rare-class weight, 1 when off):
    - random: uniform without replacement (weighted by w when on: Efraimidis & Spirakis 2006, key ``r^(1/w)``).
    - least_confidence | margin | entropy: rank by ``w * u`` with that measure (Settles 2009).
    - coreset: k-center greedy on image embeddings, labeled images as first centres (Sener & Savarese 2018); the
      greedy maximises ``w * D(x)``, D the distance to the nearest labeled-or-picked image.
    - hybrid: ``w * (alpha * u' + beta * d)``. u' = u min-max scaled over the pool. diversity "nearest":
      ``d = min(D(x) / D0, 1)``, updated after every pick (ranked batch-mode, Cardoso et al. 2017), D0 the largest
      distance from a pool image to the initial centres (the labeled set, or the first pick when nothing is
      labeled; the first pick is then the most uncertain image). diversity "centroid": the article's term,
      `diversity.centroid_diversity`, static.
    - uncertainty_then_diverse: the top ``M = candidate_factor * k`` by ``w * u``, then k-center greedy among them
      (maximising ``w * D``), PPAL-style (Yang et al. 2022); without labeled images it starts at the most uncertain.
    - committee: rank by ``w * disagreement`` (committee.committee_disagreement over `members`).
    - consistency: rank by ``w * inconsistency`` (consistency.consistency_scores of `pool` vs `flipped`).
    Raises ValueError when `members` / `flipped` are needed and missing, or k < 0.

    Embeddings: `centre` (default none) is subtracted from the pool's and the labeled embeddings before they are
    L2-normalised. The pool's may be float16 (as the vector store keeps them); from diversity.LAZY_MIN_VALUES
    values on they are normalised when read (diversity.UnitRows), so no float32 copy of a large pool is made.
    """
    if not isinstance(config, StrategyConfig):
        raise TypeError("config must be a StrategyConfig (use StrategyConfig.from_dict for a mapping)")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    n, nc = len(pool), pool.n_classes
    if labeled is None:
        labeled = LabeledContext(np.zeros((0, pool.embeddings.shape[1]), np.float32), np.zeros(nc))
    counts = np.asarray(labeled.class_counts, dtype=np.float64).reshape(-1)
    if counts.shape[0] != nc:
        raise ValueError(f"labeled.class_counts has {counts.shape[0]} classes, the pool has {nc}")
    name = config.name
    if name == "committee" and not members:
        raise ValueError("strategy 'committee' needs `members`: the committee's scored pools (same rows as the pool)")
    if name == "consistency" and flipped is None:
        raise ValueError("strategy 'consistency' needs `flipped`: the pool scored on horizontally flipped images")

    x = unit_rows(pool.embeddings, centre)
    lab = unit_rows(np.asarray(labeled.embeddings, dtype=np.float32).reshape(-1, x.shape[1]), centre)
    lab = np.asarray(lab)  # the labeled set is small
    ids = np.asarray(pool.image_ids)
    pure = name == "random"  # the baseline: no filter of any kind
    batch = _Batch(x, lab, tie_order(ids, config.seed), None if pure else config.dedup_threshold,
                   hashes=pool.hashes, lab_hashes=labeled.hashes, max_hamming=None if pure else config.dedup_hamming)
    k = min(int(k), n)
    if k == 0:
        return Selection(np.zeros(0, np.int64), np.zeros(0), [], [], [])

    measure = name if name in MEASURES else config.uncertainty
    unc = image_uncertainty(pool, measure, config.aggregation, config.top_n, config.empty_policy, config.empty_value,
                            config.box_threshold)
    fallback_note = ""
    if name in _NEEDS_EVIDENCE:
        seen = evidence_share(pool, config.box_threshold)
        if seen < config.min_evidence:
            # A model that sees almost nothing scores almost every image the same: its ranking would be noise.
            fallback_note = (f"; the model is still too young to rank by uncertainty (only {100 * seen:.0f}% of "
                             f"images hold a box at >= {config.box_threshold:g}, under min_evidence "
                             f"{100 * config.min_evidence:.0f}%), so this batch covers the pool instead")
            name = "coreset"
    n_boxes = pool.boxes_per_image
    weight = rare_class_weights(class_presence(pool), counts) if config.rare_class_weight else np.ones(n)
    extra: dict[str, np.ndarray] = {}
    if name == "committee":
        for m in members:
            if not np.array_equal(m.image_ids, ids):
                raise ValueError("committee members must score the same images, in the same order, as the pool")
        extra["disagreement"] = committee_disagreement(members, config.aggregation, config.top_n)
    if name == "consistency":
        extra["inconsistency"] = consistency_scores(pool, flipped, config.aggregation, config.top_n)

    # The strategy's static per-image score: quota picks and fill-up follow it.
    if name in ("random", "random_dedup"):
        rng = np.random.default_rng(config.seed)
        static = rng.random(n) ** (1.0 / weight)
        static_label = "random draw"
    elif name in ("committee", "consistency"):
        static = weight * extra["disagreement" if name == "committee" else "inconsistency"]
        static_label = "committee disagreement" if name == "committee" else "flip inconsistency"
    else:
        static = weight * unc
        static_label = f"{measure} uncertainty ({config.aggregation})"

    def base_components(r: int) -> dict[str, float]:
        c = {"uncertainty": unc[r], "rare_weight": weight[r], "n_boxes": float(n_boxes[r])}
        for key, v in extra.items():
            c[key] = v[r]
        if n_boxes[r] == 0:
            c["max_candidate_score"] = float(pool.max_candidate_score[r])
        return c

    def describe(r: int) -> str:
        parts = []
        if n_boxes[r] == 0:
            parts.append(f"no box kept; {config.empty_policy} score from top candidate "
                         f"{float(pool.max_candidate_score[r]):.3f}" if config.empty_policy == "near_miss"
                         else f"no box kept; fixed empty-image score {config.empty_value:g}")
        if weight[r] > 1.0:
            parts.append(f"rare-class weight {weight[r]:.2f}")
        return (("; " + "; ".join(parts)) if parts else "") + fallback_note

    def static_comps(r: int) -> dict[str, float]:
        c = base_components(r)
        c["score"] = static[r]
        return c

    def static_reason(prefix: str):
        return lambda r, rank: f"{prefix}: {static_label} {static[r]:.3f} (pick {rank}){describe(r)}"

    # Class quotas: rarest labeled class first.
    if config.class_quotas:
        present = predicted_classes(pool)
        for c, minimum in quota_order(counts, config.class_quotas):
            have = int(present[np.asarray(batch.rows, dtype=np.int64), c].sum()) if batch.rows else 0
            need = min(minimum - have, k - len(batch.rows))
            if need <= 0:
                continue
            order = batch.ranked(static, np.flatnonzero(present[:, c]))
            batch.walk(order, need, static, static_comps,
                       static_reason(f"class quota for class {c} (predicted present; {minimum} wanted)"))

    need = k - len(batch.rows)
    all_rows = np.arange(n)
    if need > 0 and name in ("random", "random_dedup", *MEASURES, "committee", "consistency"):
        label = {"random": "random", "random_dedup": "random without near-duplicates",
                 "committee": "query by committee", "consistency": "flip consistency"}.get(name, f"{name} ranking")
        batch.walk(batch.ranked(static), need, static, static_comps, static_reason(label))
    elif need > 0 and name == "coreset":
        picks = batch.greedy(all_rows, need, np.zeros(n), weight, np.sqrt, None)
        for r, value, dist in picks:
            c = base_components(r)
            c["score"] = value if np.isfinite(value) else 0.0
            if np.isfinite(dist):
                c["distance"] = dist
            why = ("first centre: the image nearest the pool's mean embedding (nothing labeled yet)"
                   if not np.isfinite(dist) else
                   f"k-center greedy: farthest from every labeled and picked image (distance {dist:.3f})")
            batch.add(r, c["score"], c, why + describe(r))
    elif need > 0 and name == "hybrid":
        u_scaled = minmax(unc)
        if config.diversity == "centroid":
            # k-means draws mini-batches by row position: fit in image-id order so row order cannot matter.
            canonical = np.argsort(ids, kind="stable")
            d = np.empty(n)
            d[canonical] = centroid_diversity(x[canonical], config.n_clusters, config.seed)
            hybrid = weight * (config.alpha * u_scaled + config.beta * d)

            def comps(r: int) -> dict[str, float]:
                c = base_components(r)
                c.update(uncertainty_scaled=u_scaled[r], diversity=d[r], score=hybrid[r])
                return c

            batch.walk(batch.ranked(hybrid), need, hybrid, comps, lambda r, rank: (
                f"hybrid (centroid): {config.alpha:g}*uncertainty {u_scaled[r]:.3f} + {config.beta:g}*distance "
                f"to its k-means centroid {d[r]:.3f} = {hybrid[r]:.3f}{describe(r)}"))
        else:
            _hybrid_nearest(batch, need, unc, u_scaled, weight, config, base_components, describe)
    elif need > 0 and name == "uncertainty_then_diverse":
        m = min(n, config.candidate_factor * need)
        cand = batch.ranked(static)[:m]
        picks = batch.greedy(cand, need, np.zeros(n), weight, np.sqrt, static)
        for r, value, dist in picks:
            c = base_components(r)
            c["score"] = value if np.isfinite(value) else static[r]
            if np.isfinite(dist):
                c["distance"] = dist
            why = (f"among the {m} most uncertain, " + (
                "the most uncertain starts the k-center greedy" if not np.isfinite(dist) else
                f"farthest from every labeled and picked image (distance {dist:.3f})"))
            batch.add(r, c["score"], c, f"{why}; {static_label} {static[r]:.3f}{describe(r)}")

    short = k - len(batch.rows)
    if short > 0:
        batch.walk(batch.ranked(static), short, static, static_comps,
                   static_reason("fill-up after near-duplicate suppression"))

    return Selection(
        rows=np.asarray(batch.rows, dtype=np.int64),
        scores=np.asarray(batch.scores, dtype=np.float64),
        components=batch.components,
        reasons=batch.reasons,
        skipped_duplicates=batch.skipped,
    )


def _hybrid_nearest(batch: _Batch, need: int, unc, u_scaled, weight, config: StrategyConfig,
                    base_components, describe) -> None:
    """Ranked batch-mode hybrid: ``w * (alpha * u' + beta * min(D / D0, 1))`` with D updated after every pick."""
    n = u_scaled.shape[0]
    rows = np.flatnonzero(~batch.excluded)
    if rows.size == 0:
        return
    # Nothing to be far from yet: every image is maximally novel (d = 1) and the first pick is the top of
    # w * (alpha * u' + beta). D0, the largest distance from a candidate to the labeled set (or to that first pick),
    # comes from the greedy's own initial distances (diversity.CappedDistance): one pass over the pool, not two.
    first_key = None if batch.centres().shape[0] else weight * (config.alpha * u_scaled + config.beta)
    transform = CappedDistance()
    base = config.alpha * weight * u_scaled
    gain = config.beta * weight
    picks = batch.greedy(np.arange(n), need, base, gain, transform, first_key)
    d0 = transform.d0 if transform.d0 is not None else 1.0
    for r, value, dist in picks:
        d = 1.0 if not np.isfinite(dist) else min(dist / d0, 1.0)
        c = base_components(r)
        c.update(uncertainty_scaled=u_scaled[r], diversity=d, score=value)
        if np.isfinite(dist):
            c["distance"] = dist
        batch.add(r, value, c, (
            f"hybrid: {config.alpha:g}*uncertainty {u_scaled[r]:.3f} + {config.beta:g}*distance to nearest "
            f"labeled-or-picked image {d:.3f} = {value:.3f}{describe(r)}"))


def cold_start_select(pool: ScoredPool, k: int, config: StrategyConfig,
                      labeled: LabeledContext | None = None, *, centre: np.ndarray | None = None) -> Selection:
    """The first batch, before any round model exists, from a pretrained checkpoint's image embeddings.

    `config.cold_start`:
    - "typical": near-duplicates (perceptual hash, `dedup_hamming`) are removed first, keeping one image of each
      group; then TypiClust (`diversity.typical_clusters`; Hacohen et al. 2022): one dense, representative image
      from each of the largest clusters not yet covered. For the low-budget regime of a first batch.
    - "kcenter": k-center greedy (Sener & Savarese 2018) from the image nearest the mean, skipping near-duplicates.
    - "random": uniform without replacement, no filter (the baseline).
    The detections of a checkpoint trained for other classes say nothing about these classes, so only the
    embeddings are used. `centre`: as in `select`.
    """
    from labelwise.diversity import typical_clusters

    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    n = len(pool)
    k = min(int(k), n)
    if config.cold_start == "random" or k == 0:
        rng = np.random.default_rng(config.seed)
        rows = rng.permutation(n)[:k]
        return Selection(rows.astype(np.int64), np.zeros(k), [{"random": 1.0} for _ in rows],
                         ["cold start: picked at random"] * k, [])
    if labeled is None:
        labeled = LabeledContext(np.zeros((0, pool.embeddings.shape[1]), np.float32), np.zeros(pool.n_classes))
    x = unit_rows(pool.embeddings, centre)
    lab = np.asarray(unit_rows(np.asarray(labeled.embeddings, dtype=np.float32).reshape(-1, x.shape[1]), centre))
    ids = np.asarray(pool.image_ids)
    batch = _Batch(x, lab, tie_order(ids, config.seed), config.dedup_threshold, hashes=pool.hashes,
                   lab_hashes=labeled.hashes, max_hamming=config.dedup_hamming)
    if config.cold_start == "kcenter":
        for r, _value, dist in batch.greedy(np.arange(n), k, np.zeros(n), np.ones(n), np.sqrt, None):
            why = ("cold start, k-center greedy: first centre, the image nearest the pool's mean embedding"
                   if not np.isfinite(dist) else
                   f"cold start, k-center greedy: farthest from every labeled and picked image (distance {dist:.3f})")
            batch.add(r, dist if np.isfinite(dist) else 0.0, {"distance": dist if np.isfinite(dist) else 0.0}, why)
    else:
        for r in batch.ranked(np.zeros(n)):  # one representative per near-duplicate group, in tie order
            if not batch.excluded[r]:
                batch.exclude_hash_neighbours(int(r))
        candidates = np.flatnonzero(~batch.excluded)
        picks = typical_clusters(x[candidates], k, labeled=lab if lab.shape[0] else None, seed=config.seed)
        for rank, local in enumerate(picks, start=1):
            r = int(candidates[local])
            batch.add(r, float(k - rank + 1), {"typical_rank": float(rank)},
                      f"cold start, TypiClust: the most typical image of the largest uncovered cluster (pick {rank})")
    return Selection(np.asarray(batch.rows, dtype=np.int64), np.asarray(batch.scores, dtype=np.float64),
                     batch.components, batch.reasons, batch.skipped)
