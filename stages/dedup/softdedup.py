"""SoftDedup (He et al., 2024): sampling weights from document commonness under an n-gram LM.

The model counts the word n-grams (orders 1..K) of the surviving documents in hashed tables of
fixed size B, so memory does not grow with the corpus, and interpolates the orders with Dirichlet
(MacKay-Peto) smoothing, concentration κ:

    P1(w) = (c(w) + 1) / (N + V + 1)      Pk(w | h) = (c(h w) + κ P(k-1)(w | h')) / (c(h) + κ)

with V the number of distinct unigrams. A document is scored leave-one-out (its own n-gram counts
are subtracted, the estimate Kneser-Ney's discounting approximates), so commonness measures how
predictable it is from the *other* documents: a template repeated with small variations is common,
a unique explanation is not. Commonness is the geometric mean of the per-token probabilities; the
weight is 1 / commonness, clipped to a range around the median and scaled to sum to the number of
documents.
"""

from __future__ import annotations

import numpy as np

from stages.textstats import doc_keyed, ngram_hashes, ngram_valid


def _buckets(grams: np.ndarray, log2_buckets: int) -> np.ndarray:
    return (grams >> np.uint64(64 - log2_buckets)).astype(np.intp)


def count(tables: np.ndarray, h: np.ndarray, offsets: np.ndarray) -> None:
    """Add the documents' n-grams (each inside one document) to the (order, B) count tables."""
    order, n_buckets = tables.shape
    for k, grams in enumerate(ngram_hashes(h, order), start=1):
        ids, counts = np.unique(_buckets(grams[ngram_valid(offsets, k)],
                                         n_buckets.bit_length() - 1), return_counts=True)
        tables[k - 1, ids] += counts.astype(np.uint32)


def mean_log_prob(h: np.ndarray, offsets: np.ndarray, tables: np.ndarray, total: int,
                  concentration: float) -> np.ndarray:
    """Per document: mean log-probability of its tokens, leave-one-out (0 for empty documents)."""
    order, n_buckets = tables.shape
    log2_buckets = n_buckets.bit_length() - 1
    vocab = np.count_nonzero(tables[0])
    counts = np.diff(offsets)
    doc = np.repeat(np.arange(len(counts)), counts)
    prob = np.zeros(len(h))
    prev = np.zeros(len(h))  # leave-one-out count of the (k-1)-gram starting at each position
    for k, grams in enumerate(ngram_hashes(h, order), start=1):
        starts = np.flatnonzero(ngram_valid(offsets, k))
        ids = _buckets(grams[starts], log2_buckets)
        _, inverse, own = np.unique(doc_keyed(ids.astype(np.uint64), doc[starts]),
                                    return_inverse=True, return_counts=True)
        c = tables[k - 1][ids].astype(np.float64) - own[inverse]
        if k == 1:
            prob = (c + 1.0) / (total - counts[doc] + vocab + 1)
        else:
            ends = starts + k - 1
            prob[ends] = (c + concentration * prob[ends]) / (prev[starts] + concentration)
        prev = np.zeros(len(h))
        prev[starts] = c
    logp = np.log(np.clip(prob, 1e-300, 1.0))
    sums = np.bincount(doc, weights=logp, minlength=len(counts))
    return np.divide(sums, counts, out=np.zeros(len(counts)), where=counts > 0)


def weights(mean_logp: np.ndarray, clip: tuple[float, float]) -> np.ndarray:
    """1 / commonness, clipped to `clip` times the median, scaled to sum to the document count."""
    if len(mean_logp) == 0:
        return np.zeros(0)
    log_raw = -mean_logp - np.median(-mean_logp)  # log(weight / median weight)
    clipped = np.exp(np.clip(log_raw, np.log(clip[0]), np.log(clip[1])))
    return clipped * (len(clipped) / clipped.sum())
