"""alt-profanity-check's classifier scored from its arrays, a whole batch at a time.

The wheel's model is a scikit-learn pipeline: a TF-IDF vectorizer (lower-cased words of two or
more word characters, l2-normalised) and five sigmoid-calibrated linear SVMs whose probabilities
are averaged. `predict_prob` needs scikit-learn imported and the pickles loaded in every worker
(about 1.5 s per process, more than scoring a shard); here the same arithmetic runs on the model's
arrays (`model_arrays`): the analyzer's regex over every chunk of the batch, TF-IDF weights,
the five SVMs as dot products, averaged calibrated probabilities. Equal to
`profanity_check.predict_prob` on the same chunks (tested).
"""

from __future__ import annotations

import re
from functools import cache
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from stages.signals import model_arrays
from stages.textstats import tokenize

CHUNK_WORDS = 200
# the package folder, found without importing the package (its __init__ unpickles the model)
_DATA = Path(find_spec("profanity_check").submodule_search_locations[0]) / "data"
_ANALYZER = re.compile(r"(?u)\b\w\w+\b")  # the vectorizer's token_pattern (checked on extraction)
_EXPECTED = {"analyzer": "word", "lowercase": True, "ngram_range": (1, 1), "norm": "l2",
             "use_idf": True, "sublinear_tf": False, "binary": False, "preprocessor": None,
             "tokenizer": None, "strip_accents": None, "token_pattern": _ANALYZER.pattern}


def _extract() -> dict[str, np.ndarray]:
    from profanity_check.profanity_check import model, vectorizer

    got = {k: vectorizer.get_params()[k] for k in _EXPECTED}
    if got != _EXPECTED or model.method != "sigmoid" or len(model.classes_) != 2:
        raise RuntimeError(f"alt-profanity-check's model changed shape ({got}, {model.method}); "
                           "pin the version in pyproject.toml or update stages/signals/profanity")
    words = sorted(vectorizer.vocabulary_)
    index = np.array([vectorizer.vocabulary_[w] for w in words])
    clfs = model.calibrated_classifiers_
    return {
        "words": np.array(words),
        "idf": vectorizer.idf_[index],
        "coef": np.stack([c.estimator.coef_[0][index] for c in clfs]),
        "intercept": np.array([c.estimator.intercept_[0] for c in clfs]),
        "a": np.array([c.calibrators[0].a_ for c in clfs]),
        "b": np.array([c.calibrators[0].b_ for c in clfs]),
    }


@cache
def _model() -> tuple[dict[str, int], dict[str, np.ndarray]]:
    arrays = model_arrays.load("profanity-check", 1, [_DATA / "model.joblib",
                                                      _DATA / "vectorizer.joblib"], _extract)
    return {str(w): i for i, w in enumerate(arrays["words"].tolist())}, arrays


def probabilities(texts: list[str]) -> np.ndarray:
    """Per text, the highest offensive probability over its chunks of `CHUNK_WORDS` whitespace
    words (0 for a text without words)."""
    vocab, m = _model()
    chunks, owner = [], []
    for i, text in enumerate(texts):
        words = text.split()
        if len(words) <= CHUNK_WORDS:  # one chunk: the text itself has the same tokens
            if words:
                chunks.append(text.lower())
                owner.append(i)
            continue
        for start in range(0, len(words), CHUNK_WORDS):
            chunks.append(" ".join(words[start:start + CHUNK_WORDS]).lower())
            owner.append(i)
    tokens = tokenize(chunks, _ANALYZER)
    feature = np.fromiter((vocab.get(t, -1) for t in tokens.vocab), np.int64,
                          len(tokens.vocab))[tokens.ids]
    known = feature >= 0
    keys, counts = np.unique(tokens.doc[known] * len(vocab) + feature[known], return_counts=True)
    rows, cols = keys // len(vocab), keys % len(vocab)
    tfidf = counts * m["idf"][cols]
    norm = np.sqrt(np.bincount(rows, tfidf * tfidf, minlength=len(chunks)))
    norm[norm == 0] = 1.0  # a chunk without known words: the SVMs' intercepts decide
    prob = np.zeros(len(chunks))
    for k in range(len(m["intercept"])):
        decision = np.bincount(rows, tfidf * m["coef"][k][cols], minlength=len(chunks)) / norm
        decision += m["intercept"][k]
        prob += 1.0 / (1.0 + np.exp(m["a"][k] * decision + m["b"][k]))  # sigmoid calibration
    out = np.zeros(len(texts))
    if chunks:
        np.maximum.at(out, np.array(owner), prob / len(m["intercept"]))
    return out
