"""Near-duplicate images from their pixels: perceptual hashes compared by Hamming distance (pure NumPy, no I/O).

A young detector's embeddings cannot tell two scenes apart, so the embedding filter of the selection either passes
consecutive video frames as different or rejects unrelated scenes as duplicates. Perceptual hashes need no model: they
are computed once at ingest (`labelwise.pool.inspect_image`, with the ``imagehash`` library) and stored with the image.

Every image carries two 64-bit hashes, packed as one row of a (N, 2) uint64 array: column 0 the pHash, column 1 the
dHash. Bits are packed row-major, most significant bit first (bit 63 is the hash's element [0, 0]).

pHash (Zauner 2010, "Implementation and Benchmarking of Perceptual Image Hash Functions", Upper Austria University
of Applied Sciences; the variant of ``imagehash.phash``): the image in greyscale, resized to 32x32, its 2-D type-II
DCT ``C = DCT_rows(DCT_cols(I))``; of the 8x8 lowest frequencies ``L = C[:8, :8]`` bit (u, v) is
``L[u, v] > median(L)``. It describes the coarse layout of light and dark, so it is robust to noise, small shifts and
exposure flicker.

dHash (Krawetz 2013, "Kind of like that", The Hacker Factor Blog; ``imagehash.dhash``): the image in greyscale,
resized to 9 columns x 8 rows ``G``; bit (r, c) is ``G[r, c + 1] > G[r, c]``, i.e. whether brightness rises from
left to right. It describes the horizontal gradients, so it is sensitive to where edges lie.

Distance of two hashes: ``hamming(a, b) = popcount(a XOR b)``, 0 (identical) to 64. The two hashes are combined by a
rule (see `RULES`); the default rule and `DEFAULT_MAX_HAMMING` come from `benchmarks/bench_neardup.py` (the
synthetic bursts of three 2,000-image datasets, results in benchmarks/RESULTS.md): with both hashes within 8 bits,
0.976 of the burst frame pairs are found (0.970 on the worst seed) and none of the 5,990,934 other pairs. One hash
alone cannot do it: different smooth daylight scenes come within 2 bits of pHash or 2 of dHash of each other, but
not of both at once (the closest such pair differs by 9 in one of them).
"""

from __future__ import annotations

import numpy as np

HASH_BITS = 64
PHASH, DHASH = 0, 1

#: How two per-hash Hamming distances dp (pHash) and dd (dHash) combine into one distance:
#: phash -> dp, dhash -> dd, both -> max(dp, dd) (both hashes must agree), either -> min(dp, dd), sum -> dp + dd.
RULES = ("phash", "dhash", "both", "either", "sum")
DEFAULT_RULE = "both"
#: Largest combined distance (under DEFAULT_RULE) at which two images are near duplicates; measured, see module doc.
#: 10 finds 0.993 of the burst pairs but also 3 false pairs in 6 million, a rate that in a selection against 8,000
#: labeled images would skip 0.4% of the candidates for nothing; at 8 none was seen.
DEFAULT_MAX_HAMMING = 8

# Pairs compared at once by nearest_hash_duplicate: one hash column's XOR of them is 16 MB (24 MB peak measured).
_PAIRS_PER_CHUNK = 1 << 21

_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)


def _popcount64(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (SWAR: pairwise sums of 2, 4, 8 bits, then the bytes summed by one multiply)."""
    x = x - ((x >> np.uint64(1)) & _M1)
    x = (x & _M2) + ((x >> np.uint64(2)) & _M2)
    x = (x + (x >> np.uint64(4))) & _M4
    return ((x * _H01) >> np.uint64(56)).astype(np.uint8)


_popcount = getattr(np, "bitwise_count", _popcount64)  # NumPy >= 2 has a native one


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """popcount(a XOR b) of uint64 hashes, broadcasting like ``a ^ b``; uint8 results 0..64."""
    a = np.asarray(a, dtype=np.uint64)  # no copy for uint64; other integers keep their bits
    b = np.asarray(b, dtype=np.uint64)
    return _popcount(a ^ b).astype(np.uint8, copy=False)


def combined_distance(a: np.ndarray, b: np.ndarray, rule: str = DEFAULT_RULE) -> np.ndarray:
    """The distance under `rule` of (..., 2) hash rows `a` and `b` (broadcasting over the leading axes), int16.

    Row pairs of (N, 2) and (M, 2) arrays: ``combined_distance(h[:, None], refs[None])`` is (N, M).
    """
    return _combined_u8(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64), rule).astype(np.int16)


def _combined_u8(a: np.ndarray, b: np.ndarray, rule: str) -> np.ndarray:
    """combined_distance as uint8 (at most 128), computed one hash column at a time: the (..., 2) layout interleaves
    the columns, and reducing over that short last axis is several times slower than two contiguous passes."""
    if rule not in RULES:
        raise ValueError(f"unknown near-duplicate rule {rule!r}; expected one of {', '.join(RULES)}")
    if rule == "phash":
        return hamming(a[..., PHASH], b[..., PHASH])
    if rule == "dhash":
        return hamming(a[..., DHASH], b[..., DHASH])
    dp = hamming(a[..., PHASH], b[..., PHASH])
    dd = hamming(a[..., DHASH], b[..., DHASH])
    if rule == "both":
        return np.maximum(dp, dd, out=dp)
    if rule == "either":
        return np.minimum(dp, dd, out=dp)
    return np.add(dp, dd, out=dp)


def nearest_hash_duplicate(hashes: np.ndarray, refs: np.ndarray, max_distance: int = DEFAULT_MAX_HAMMING,
                           rule: str = DEFAULT_RULE) -> tuple[np.ndarray, np.ndarray]:
    """For every row of `hashes` (N, 2), the reference row of `refs` (M, 2) nearest under `rule`.

    Returns (index, distance): index (N,) int64 is the nearest reference's row when its distance is at most
    `max_distance` and -1 otherwise (ties: the lowest reference row); distance (N,) int64 is the nearest reference's
    distance whether or not it is within `max_distance`, and -1 where there are no references. Compared in chunks of
    rows so memory stays at tens of MB (80,000 x 8,000 pairs included). To compare a set with itself, mask the
    self-match first (a row is always at distance 0 from itself).
    """
    hashes = _as_hash_rows(hashes, "hashes")
    refs = _as_hash_rows(refs, "refs")
    n, m = len(hashes), len(refs)
    index = np.full(n, -1, dtype=np.int64)
    distance = np.full(n, -1, dtype=np.int64)
    if n == 0 or m == 0:
        return index, distance
    rows_per_chunk = max(1, _PAIRS_PER_CHUNK // m)
    ref_columns = np.ascontiguousarray(refs.T)[:, None, :]  # (2, 1, M): each hash column contiguous
    for start in range(0, n, rows_per_chunk):
        rows = np.ascontiguousarray(hashes[start:start + rows_per_chunk].T)[:, :, None]  # (2, rows, 1)
        d = _combined_u8(np.moveaxis(rows, 0, -1), np.moveaxis(ref_columns, 0, -1), rule)
        nearest = d.argmin(axis=1)
        distance[start:start + len(d)] = d[np.arange(len(d)), nearest]
        index[start:start + len(d)] = nearest
    index[distance > max_distance] = -1
    return index, distance


class HashIndex:
    """The rows of an (N, 2) hash array, searchable by distance under `rule` without comparing a query to all N.

    Multi-index hashing (Norouzi, Punjani & Fleet 2012, "Fast Search in Hamming Space with Multi-Index Hashing",
    CVPR): the 64 bits of a hash are cut into ``max_distance + 1`` disjoint blocks. Two hashes within Hamming distance
    h differ in at most h bits, hence in at most h blocks, so they agree exactly on at least one (pigeonhole). Each
    block of the indexed column is a sorted array; a query is compared exactly only with the rows that share one of
    its blocks (about ``N * blocks / 2**(64 / blocks)`` of them for uniform hashes: 70,000 of 1,000,000 at h = 8).
    The column indexed: pHash for the rules phash, both and sum (each implies ``dp <= h``), dHash for dhash, both
    columns for either. Exact: the same rows as a full comparison.
    """

    def __init__(self, hashes: np.ndarray, max_distance: int = DEFAULT_MAX_HAMMING, rule: str = DEFAULT_RULE):
        if rule not in RULES:
            raise ValueError(f"unknown near-duplicate rule {rule!r}; expected one of {', '.join(RULES)}")
        self.hashes = _as_hash_rows(hashes, "hashes")
        self.max_distance, self.rule = int(max_distance), rule
        columns = {"dhash": (DHASH,), "either": (PHASH, DHASH)}.get(rule, (PHASH,))
        n_blocks = self.max_distance + 1
        # per block: (column, shift, mask, the keys sorted, the rows in that order, the column's hashes in that order:
        # a query reads contiguous slices, never a scattered gather over the pool)
        self.blocks: list[tuple[int, np.uint64, np.uint64, np.ndarray, np.ndarray, np.ndarray]] = []
        if n_blocks > HASH_BITS or len(self.hashes) == 0:
            return  # every row is a candidate
        edges = np.linspace(0, HASH_BITS, n_blocks + 1).round().astype(int)
        order_type = np.uint32 if len(self.hashes) < 2**32 else np.int64
        for col in columns:
            h = self.hashes[:, col]
            for lo, hi in zip(edges[:-1], edges[1:]):
                shift, mask = np.uint64(lo), np.uint64((1 << int(hi - lo)) - 1)
                key = (h >> shift) & mask
                order = np.argsort(key, kind="stable")
                key_type = np.uint8 if hi - lo <= 8 else np.uint16 if hi - lo <= 16 else np.uint64
                self.blocks.append((col, shift, mask, key[order].astype(key_type), order.astype(order_type),
                                    h[order]))

    def within(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, distances): the rows within `max_distance` of one (2,) hash row, ascending, with their distances."""
        q = np.asarray(query, dtype=np.uint64).reshape(2)
        if self.blocks:
            parts = []
            for col, shift, mask, keys, order, values in self.blocks:
                v = keys.dtype.type((q[col] >> shift) & mask)
                lo, hi = np.searchsorted(keys, v, side="left"), np.searchsorted(keys, v, side="right")
                # the indexed column's own distance first (every rule bounds it by max_distance): few survive
                near = hamming(values[lo:hi], q[col]) <= self.max_distance
                parts.append(order[lo:hi][near])
            # a row sharing several blocks comes several times
            cand = np.unique(np.concatenate(parts)).astype(np.int64)
        else:
            cand = np.arange(len(self.hashes), dtype=np.int64)
        d = _combined_u8(self.hashes[cand], q[None, :], self.rule).astype(np.int64)
        keep = d <= self.max_distance
        return cand[keep], d[keep]

    def nearest(self, refs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For every indexed row, the row of `refs` nearest to it among those within `max_distance`: (index,
        distance), -1 and -1 where none is (ties: the lowest reference row). The rows within `max_distance` get
        the same answer as `nearest_hash_duplicate(hashes, refs, max_distance, rule)`."""
        refs = _as_hash_rows(refs, "refs")
        n = len(self.hashes)
        index = np.full(n, -1, dtype=np.int64)
        distance = np.full(n, -1, dtype=np.int64)
        found = [(self.within(r), j) for j, r in enumerate(refs)]
        if not found:
            return index, distance
        rows = np.concatenate([f[0][0] for f in found])
        dist = np.concatenate([f[0][1] for f in found])
        ref = np.concatenate([np.full(len(f[0][0]), f[1], dtype=np.int64) for f in found])
        order = np.lexsort((ref, dist, rows))  # by row, then distance, then reference row
        rows, dist, ref = rows[order], dist[order], ref[order]
        first = np.ones(len(rows), dtype=bool)
        first[1:] = rows[1:] != rows[:-1]
        index[rows[first]] = ref[first]
        distance[rows[first]] = dist[first]
        return index, distance


def is_hash_duplicate(hashes: np.ndarray, refs: np.ndarray, max_distance: int = DEFAULT_MAX_HAMMING,
                      rule: str = DEFAULT_RULE) -> np.ndarray:
    """(N,) bool: whether each row of `hashes` is a near duplicate of some row of `refs`."""
    return nearest_hash_duplicate(hashes, refs, max_distance, rule)[0] >= 0


def bits_to_uint64(bits: np.ndarray) -> int:
    """A hash given as 64 booleans (e.g. imagehash's 8x8 ``.hash``) as one integer 0..2**64-1, row-major, MSB first."""
    flat = np.asarray(bits, dtype=bool).ravel()
    if flat.size != HASH_BITS:
        raise ValueError(f"a hash has {HASH_BITS} bits, got {flat.size}")
    return int.from_bytes(np.packbits(flat).tobytes(), "big")


def _as_hash_rows(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"{name} must be an (N, 2) array of (pHash, dHash) rows, got shape {x.shape}")
    return x.astype(np.uint64, copy=False)
