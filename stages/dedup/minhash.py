"""MinHash signatures (rensa), LSH banding and its shape, candidate pairs verified by their true
shingle Jaccard, union-find."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from rensa import RMinHash

from stages.textstats import mix64

_GOLD = np.uint64(0x9E3779B97F4A7C15)


def signatures(shingles: np.ndarray, rows: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """(docs, num_perm) uint32 MinHash signatures from flat shingle hashes and row offsets."""
    matrix = RMinHash.digest_matrix_from_flat_token_hashes(
        shingles, rows.astype(np.uint64), num_perm, seed
    )
    return np.array(matrix.to_rows(), dtype=np.uint32).reshape(len(rows) - 1, num_perm)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(bands, docs) uint64 LSH bucket keys: band b hashes signature columns b*rows..(b+1)*rows
    (and b, so equal columns in different bands are different buckets)."""
    keys = np.empty((bands, len(sig)), dtype=np.uint64)
    for band in range(bands):
        key = np.full(len(sig), np.uint64(band))
        for col in sig[:, band * rows : (band + 1) * rows].T:
            key = mix64(key * _GOLD + col.astype(np.uint64))
        keys[band] = key
    return keys


def candidate_pairs(keys: Iterable[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (a < b) of the n documents sharing an LSH bucket in any band, without repeats;
    `keys` gives each band's bucket keys (`band_keys`), one band at a time.

    Within a bucket each member is paired with the bucket's first member and with its
    predecessor, so a bucket of m documents gives at most 2m pairs (not m²) and stays connected.
    The pairs are merged band by band, so memory holds one band's keys and the distinct pairs,
    not one copy of them per band (a heavily duplicated corpus repeats most pairs in every band).
    """
    codes = np.zeros(0, dtype=np.int64)
    if n < 2:
        return codes, codes
    for key in keys:
        order = np.argsort(key, kind="stable")
        same = key[order][1:] == key[order][:-1]
        group = np.cumsum(np.r_[True, ~same]) - 1
        anchor = order[np.flatnonzero(np.r_[True, ~same])][group]
        inner = np.r_[False, same]
        a = np.r_[order[:-1][same], anchor[inner]].astype(np.int64)
        b = np.r_[order[1:][same], order[inner]].astype(np.int64)
        codes = np.union1d(codes, np.minimum(a, b) * n + np.maximum(a, b))
    return codes // n, codes % n


def candidate_probability(jaccard, bands: int, rows: int):
    """The LSH S-curve: the chance a pair of this Jaccard shares a bucket in some band."""
    return 1 - (1 - np.asarray(jaccard, dtype=float) ** rows) ** bands


def lsh_shape(num_perm: int, threshold: float, false_negative_rate: float) -> tuple[int, int]:
    """(bands, rows) with bands x rows <= num_perm that finds a pair at the threshold Jaccard with
    probability >= 1 - false_negative_rate and, among those, the most rows per band (the fewest
    candidates below the threshold)."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if candidate_probability(threshold, bands, rows) >= 1 - false_negative_rate:
            return bands, rows
    raise ValueError(f"no LSH shape of {num_perm} permutations finds pairs at Jaccard "
                     f"{threshold} with a false-negative rate <= {false_negative_rate}: raise "
                     "dedup.num_perm or dedup.false_negative_rate")


def jaccard(sets: dict[int, np.ndarray], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """True Jaccard of each pair (a[i], b[i]) of sorted unique shingle-hash arrays."""
    out = np.empty(len(a))
    for i, (x, y) in enumerate(zip(a.tolist(), b.tolist(), strict=True)):
        sx, sy = sets[x], sets[y]
        inter = len(np.intersect1d(sx, sy, assume_unique=True))
        union = len(sx) + len(sy) - inter
        out[i] = inter / union if union else 1.0
    return out


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Union-find over the edges (vectorised hooking + pointer jumping): the root of each node.

    The root is the smallest index of its component.
    """
    parent = np.arange(n)
    while True:
        ra, rb = parent[a], parent[b]
        lo, hi = np.minimum(ra, rb), np.maximum(ra, rb)
        merge = lo != hi
        if not merge.any():
            return parent
        np.minimum.at(parent, hi[merge], lo[merge])
        while not np.array_equal(jumped := parent[parent], parent):
            parent = jumped
