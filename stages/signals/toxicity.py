"""Toxicity scores behind a pluggable classifier interface: a maintained word list and a trained
classifier.

A classifier is any object with `score(batch) -> array` of values in [0, 1] (higher = more
toxic); `register(name)` makes a factory selectable as `signals.toxicity_classifier`. Register it
in a module imported by `stages.signals` so that spawned workers see it too.

`wordlist` (default) uses the LDNOOBW-derived lists that the `badwords-py` package ships and
maintains (one per language, multi-word entries included; the list C4 filtered with). A
document's score is the number of listed words or phrases it contains per word, with the list of
its detected language (English if it has none): 0 means none, and C4's rule removes anything
above 0.

`profanity_check` is alt-profanity-check's linear SVM over TF-IDF features, trained on ~200k
human-labelled texts (Wikipedia talk-page toxicity and tweets) and shipped inside its wheel, so
it runs offline: the probability that a text is offensive. A document is scored in chunks of
`profanity.CHUNK_WORDS` words, its score the highest chunk's (one offensive paragraph in a long
article counts). It judges words in context: "sex education" or a rooster's name are not
offensive to it, while the word list flags them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Protocol

import numpy as np

from stages.signals import profanity
from stages.textstats import TOKEN_RE, Tokens, extend_hash, ngram_hashes, stable_hashes


@dataclass(frozen=True)
class Batch:
    """What a classifier may use: the texts, their tokens and their detected languages."""

    texts: list[str]
    tokens: Tokens
    langs: list[str]


class ToxicityClassifier(Protocol):
    def score(self, batch: Batch) -> np.ndarray: ...


CLASSIFIERS: dict[str, Callable[[], ToxicityClassifier]] = {}


def register(name: str):
    def deco(factory: Callable[[], ToxicityClassifier]):
        CLASSIFIERS[name] = factory
        return factory

    return deco


@cache
def classifier(name: str) -> ToxicityClassifier:
    if name not in CLASSIFIERS:
        raise KeyError(f"unknown toxicity classifier {name!r}; registered: {sorted(CLASSIFIERS)}")
    return CLASSIFIERS[name]()


_WORDS = files("badwords") / "resource" / "words"


@cache
def _languages() -> frozenset[str]:
    return frozenset(p.name.removesuffix(".txt") for p in _WORDS.iterdir()
                     if p.name.endswith(".txt"))


@cache
def _wordlist(lang: str) -> tuple[frozenset[str], dict[int, np.ndarray], frozenset[str]]:
    """A language's entries: single tokens; longer ones as sorted token-sequence hashes by
    length, with the set of their first tokens."""
    single, phrases, firsts = set(), {}, set()
    for entry in (_WORDS / f"{lang}.txt").read_text(encoding="utf-8").splitlines():
        toks = TOKEN_RE.findall(entry.strip().lower())
        if len(toks) == 1:
            single.add(toks[0])
        elif toks:
            h = ngram_hashes(stable_hashes(toks, len(toks)), len(toks))[-1][0]
            phrases.setdefault(len(toks), []).append(int(h))
            firsts.add(toks[0])
    tables = {n: np.unique(np.array(v, dtype=np.uint64)) for n, v in phrases.items()}
    return frozenset(single), tables, frozenset(firsts)


@register("wordlist")
class WordList:
    """Listed words and phrases per word, from the list of each document's language."""

    def score(self, batch: Batch) -> np.ndarray:
        tokens = batch.tokens
        known = _languages()
        names, doc_lang = np.unique([lang if lang in known else "en" for lang in batch.langs],
                                    return_inverse=True)
        token_lang = doc_lang[tokens.doc]
        hits = np.zeros(tokens.n_docs)
        lower_hash = None
        for code, lang in enumerate(names):
            single, phrases, firsts = _wordlist(str(lang))
            in_lang = token_lang == code
            listed = tokens.vocab_map(single.__contains__, bool, tokens.lower) & in_lang
            hits += np.bincount(tokens.doc[listed], minlength=tokens.n_docs)
            cand = np.flatnonzero(tokens.vocab_map(firsts.__contains__, bool, tokens.lower)
                                  & in_lang)
            if not cand.size:
                continue
            if lower_hash is None:
                lower_hash = stable_hashes(tokens.lower, len(tokens.lower))[tokens.ids]
            ends = tokens.offsets[tokens.doc[cand] + 1]
            for n, table in phrases.items():
                at = cand[cand + n <= ends]
                h = lower_hash[at]
                for k in range(1, n):
                    h = extend_hash(h, lower_hash[at + k])
                hits += np.bincount(tokens.doc[at[np.isin(h, table)]], minlength=tokens.n_docs)
        words = tokens.per_doc(tokens.is_word)
        return np.clip(np.divide(hits, words, out=np.zeros_like(hits), where=words > 0), 0, 1)


@register("profanity_check")
class ProfanityCheck:
    """alt-profanity-check's probability per chunk of `profanity.CHUNK_WORDS` words; a
    document's is its highest chunk's (0 for a text without words)."""

    def score(self, batch: Batch) -> np.ndarray:
        return profanity.probabilities(batch.texts)


@register("none")
class NoScore:
    """No toxicity scoring: 0 for every document (a classifier switched off)."""

    def score(self, batch: Batch) -> np.ndarray:
        return np.zeros(len(batch.texts))
