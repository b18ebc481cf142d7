"""Text primitives shared by the curation stages: one tokenizer, stable hashes, n-gram keys.

Tokens approximate spaCy's English tokenizer (words, numbers, URLs, each punctuation mark on its
own) with one regex pass per document, which is what the Gopher and FineWeb statistics count. A
batch is kept as integer ids into a per-batch vocabulary, so per-word work (lower-casing, flags,
hashing) runs once per distinct word and everything per token is a numpy operation.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from xxhash import xxh3_64_intdigest

TOKEN_RE = re.compile(
    r"https?://\S+[\w/]|\d+(?:[.,]\d+)+|\w+(?:['’.]\w+)*|\.\.\.|[^\w\s]", re.UNICODE
)
WORD_RE = re.compile(r"[^\W_]+")  # letters and digits only: the words dedup compares
_DIACRITICS = re.compile(r"[\u0300-\u036f]")
_DIGITS = re.compile(r"\d+")
_M1, _M2, _GOLD = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(
    0x9E3779B97F4A7C15
)


@dataclass(frozen=True)
class Tokens:
    """Tokens of a batch of documents: `ids[offsets[d]:offsets[d+1]]` are document d's tokens."""

    ids: np.ndarray  # int64 index into vocab
    offsets: np.ndarray  # int64, n_docs + 1
    vocab: list[str]

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    @cached_property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    @cached_property
    def doc(self) -> np.ndarray:
        """Document index of every token."""
        return np.repeat(np.arange(self.n_docs), self.counts)

    @cached_property
    def lower(self) -> list[str]:
        """The vocabulary lower-cased."""
        return [w.lower() for w in self.vocab]

    @cached_property
    def is_word(self) -> np.ndarray:
        """Per token: has a letter or digit (is not punctuation)."""
        return self.vocab_map(is_word, bool)

    def vocab_map(self, fn: Callable[[str], float], dtype=np.float64,
                  vocab: list[str] | None = None) -> np.ndarray:
        """`fn` over the vocabulary (or a same-length variant of it), gathered per token."""
        vocab = self.vocab if vocab is None else vocab
        return np.fromiter(map(fn, vocab), dtype=dtype, count=len(vocab))[self.ids]

    def per_doc(self, values: np.ndarray) -> np.ndarray:
        """Sum of per-token `values` for every document."""
        return np.bincount(self.doc, weights=values, minlength=self.n_docs)


def tokenize(texts: Iterable[str], pattern: re.Pattern = TOKEN_RE) -> Tokens:
    index: dict[str, int] = {}
    ids: list[int] = []
    offsets = [0]
    for text in texts:
        ids += [index.setdefault(t, len(index)) for t in pattern.findall(text)]
        offsets.append(len(ids))
    return Tokens(np.array(ids, dtype=np.int64), np.array(offsets, dtype=np.int64), list(index))


def normal_form(token: str) -> str:
    """Dedup normal form of a word: lower case, no diacritics, digit runs as `0`."""
    token = token.lower()
    if not token.isascii():
        token = _DIACRITICS.sub("", unicodedata.normalize("NFKD", token))
    return token if token.isalpha() else _DIGITS.sub("0", token)


def is_word(token: str) -> bool:
    """A token with at least one letter or digit (not a punctuation/symbol token)."""
    return token.isalnum() or any(c.isalnum() for c in token)  # fast path: all alnum


def normalized_hashes(texts: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """Stable hashes of the texts' words in dedup normal form, and the per-text offsets."""
    words = tokenize(texts, WORD_RE)
    return stable_hashes(map(normal_form, words.vocab), len(words.vocab))[words.ids], words.offsets


def stable_hashes(strings: Iterable[str], count: int = -1) -> np.ndarray:
    """64-bit XXH3 of each string: the same on every machine, run and process."""
    digests = (xxh3_64_intdigest(s.encode()) for s in strings)  # xxhash >= 4 takes bytes only
    return np.fromiter(digests, dtype=np.uint64, count=count)


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a cheap, well-spread bijection of uint64."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def extend_hash(h: np.ndarray, token: np.ndarray) -> np.ndarray:
    """Hash of a token sequence extended by one more token (how every n-gram hash is built)."""
    return mix64(h * _GOLD + token)


def ngram_hashes(h: np.ndarray, n_max: int) -> list[np.ndarray]:
    """`out[k-1][i]` hashes the k-gram starting at token i, for k = 1..n_max (ignores documents)."""
    out = [h]
    for k in range(2, n_max + 1):
        out.append(extend_hash(out[-1][:-1], h[k - 1 :]))
    return out


def ngram_valid(offsets: np.ndarray, n: int) -> np.ndarray:
    """Mask over n-gram start positions (len = tokens - n + 1): the n-gram stays in one document."""
    total = int(offsets[-1])
    if total < n:
        return np.zeros(0, dtype=bool)
    ends = np.repeat(offsets[1:], np.diff(offsets))[: total - n + 1]
    return ends - np.arange(total - n + 1) >= n


def occurrences(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group equal keys: each group's earliest position and size, and each key's group.

    One unstable (SIMD) sort instead of `np.unique(return_index=...)`'s stable one.
    """
    order = np.argsort(keys)
    new = np.r_[True, keys[order][1:] != keys[order][:-1]] if len(keys) else order > 0
    starts = np.flatnonzero(new)
    group = np.empty(len(keys), dtype=np.int64)
    group[order] = np.cumsum(new) - 1
    first = np.minimum.reduceat(order, starts) if len(keys) else order
    return first, np.diff(np.r_[starts, len(keys)]), group


def doc_keyed(hashes: np.ndarray, doc: np.ndarray) -> np.ndarray:
    """Combine n-gram hashes with their document index, so equal keys mean same doc, same n-gram."""
    return mix64(hashes ^ (doc.astype(np.uint64) * _GOLD))


def shingle_rows(h: np.ndarray, offsets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Word n-gram shingles per document as a flat array plus row offsets.

    A document shorter than n words is one shingle (its whole text); an empty one has none.
    """
    grams = ngram_hashes(h, n)
    counts = np.diff(offsets)
    starts = offsets[:-1]
    per_doc = np.where(counts >= n, counts - n + 1, np.minimum(counts, 1))
    out = np.empty(int(per_doc.sum()), dtype=np.uint64)
    row = np.concatenate([[0], np.cumsum(per_doc)])
    long_docs = counts >= n
    if long_docs.any():
        valid = ngram_valid(offsets, n)
        out[np.repeat(long_docs, per_doc)] = grams[n - 1][valid]
    for k in range(1, n):
        short = counts == k
        out[row[:-1][short]] = grams[k - 1][starts[short]]
    return out, row
