"""Offline language identification with py3langid's naive Bayes model (shipped in its wheel).

py3langid walks a byte-level automaton in a Python loop per byte; here the walk advances all
documents of a batch together, one numpy step per byte position, and the class scores are one
sparse product per batch. The result equals `LanguageIdentifier.classify` (tested) at a fraction
of the cost. Uses the identifier's model arrays (cached by `model_arrays`), so py3langid is
pinned to 0.4.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

from stages.signals import model_arrays

UNDETERMINED = "und"


def _extract() -> dict[str, np.ndarray]:
    ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return {"nextmove": np.frombuffer(ident.tk_nextmove, dtype=np.uint32),
            "rowbase": np.array(ident._rowbase, dtype=np.int64),
            "output": np.array(ident.tk_output, dtype=np.int32),
            "ptc": np.asarray(ident.nb_ptc, dtype=np.float32),
            "pc": np.asarray(ident.nb_pc, dtype=np.float32),
            "classes": np.array(ident.nb_classes),
            "aliases": np.array(ident._alias_pairs, dtype=np.int64).reshape(-1, 2)}


@cache
def _model() -> dict[str, np.ndarray]:
    """The identifier's arrays (decompressing its model takes half a second per process)."""
    return model_arrays.load("py3langid", 1, [Path(MODEL_DIR) / MODEL_FILE], _extract)


def _features(encoded: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(document, feature) of every feature the automaton emits, documents walked in lockstep."""
    m = _model()
    nextmove, rowbase, output = m["nextmove"], m["rowbase"], m["output"]
    lengths = np.array([len(b) for b in encoded], dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")  # longest first: the active ones are a prefix
    width = int(lengths.max(initial=0))
    data = np.zeros((width, len(encoded)), dtype=np.uint8)  # byte position x document
    for col, i in enumerate(order):
        data[: lengths[i], col] = np.frombuffer(encoded[i], dtype=np.uint8)
    emitted = np.full((width, len(encoded)), -1, dtype=np.int32)
    active = np.searchsorted(-lengths[order], -np.arange(width), side="left")
    state = np.zeros(len(encoded), dtype=np.int64)
    for pos, k in enumerate(active.tolist()):
        state[:k] = nextmove[rowbase[state[:k]] + data[pos, :k]]
        emitted[pos, :k] = output[state[:k]]
    pos, col = np.nonzero(emitted >= 0)
    return order[col], emitted[pos, col].astype(np.int64)


def identify(texts: list[str], max_chars: int) -> tuple[list[str], np.ndarray]:
    """ISO 639 code and its probability per text, from its first `max_chars` characters."""
    m = _model()
    table = m["ptc"]
    heads = [t[:max_chars] for t in texts]
    encoded = [LanguageIdentifier._encode(h) for h in heads]
    docs, feats = _features(encoded)
    n_feats = table.shape[0]
    keys, counts = np.unique(docs * n_feats + feats, return_counts=True)
    docs, feats = keys // n_feats, keys % n_feats
    from scipy.sparse import csr_matrix  # here: 0.15 s of every stage's start-up otherwise

    visits = csr_matrix((np.log1p(counts).astype(np.float32), (docs, feats)),
                        shape=(len(texts), n_feats))
    scores = np.asarray(visits @ table) + m["pc"]
    scores /= np.sqrt(np.maximum([len(b) for b in encoded], 1))[:, None].astype(np.float32)
    scores = np.exp(scores - scores.max(axis=1, keepdims=True))
    scores /= scores.sum(axis=1, keepdims=True)
    for i, j in m["aliases"].tolist():
        scores[:, i] += scores[:, j]
        scores[:, j] = 0.0
    best = scores.argmax(axis=1)
    classes = m["classes"].tolist()
    langs = [classes[b] if any(c.isalpha() for c in h) else UNDETERMINED
             for b, h in zip(best.tolist(), heads, strict=True)]
    probs = np.where([lang != UNDETERMINED for lang in langs], scores[np.arange(len(texts)), best],
                     0.0)
    return langs, probs.astype(np.float64)
