"""A model-free "textbook quality" score in [0, 1], for ranking documents in later refinement.

A proxy for what model-based educational classifiers (phi-1, FineWeb-Edu) reward, built only from
cues that can be counted. It is the weighted mean of seven parts, each saturating at 1:

- explanation (0.25): explanatory cue words ("because", "example", "therefore", ...) per 100
  words, 1 at 4 per 100;
- definitions (0.15): "X is a ...", "is defined as", "refers to", "denotes" ...; 1 at 3;
- fluency (0.15): share of common function words among words, 1 at 30% (prose, not lists);
- originality (0.15): 1 minus twice the duplicated 5-gram character fraction;
- structure (0.10): paragraphs and enumerated steps, 1 at 4 of them;
- code with explanation (0.10): 1 if code lines (`>>>`, indented or fenced) sit beside at least
  two prose sentences;
- length (0.10): words, 1 at 150.

It is a heuristic, not a validated classifier: use it to rank, not as an absolute grade.
"""

from __future__ import annotations

import re
from itertools import islice

import numpy as np

from stages.textstats import Tokens

CUE_WORDS = frozenset(
    "because therefore thus hence example examples e.g i.e consider suppose note means defined "
    "definition called explain explains explained why how step steps first second third finally "
    "result results returns describes illustrates shows instance specifically namely equivalent "
    "implies since usually typically important recall assume given".split()
)
FUNCTION_WORDS = frozenset(
    "the a an of to in is are was were be been and or but that this these those it its for on "
    "with as by at from which who what when where if then than can may will would should not no "
    "there their they we you he she".split()
)
WEIGHTS = {"explanation": 0.25, "definitions": 0.15, "fluency": 0.15, "originality": 0.15,
           "structure": 0.10, "code_explained": 0.10, "length": 0.10}
_DEFINITION = re.compile(
    r"\b(?:(?:is|are) (?:an?|the|called|defined as|known as|used to|meant to)"
    r"|refers? to|denotes?)\b"
)
_CODE_LINE = re.compile(r"(?m)^(?:>>> |```|(?: {4}|\t)+\S)")
_STEP_LINE = re.compile(r"(?m)^[ \t]*(?:\d+[.)]|[-*•]|[a-z][.)])[ \t]+\S")
_PROSE_SENTENCE = re.compile(r"[a-z]{2}[.!?](?:\s|$)")


def _sat(x: np.ndarray, full: float) -> np.ndarray:
    return np.clip(np.asarray(x, dtype=np.float64) / full, 0.0, 1.0)


def _sentences(text: str) -> int:
    """Prose sentences, counted up to 2: all that `code_explained` asks (only with code lines)."""
    return sum(1 for _ in islice(_PROSE_SENTENCE.finditer(text), 2))


def score(texts: list[str], tokens: Tokens, dup_5gram_char_frac: np.ndarray) -> np.ndarray:
    words = tokens.per_doc(tokens.is_word)
    denom = np.maximum(words, 1)
    cues = tokens.per_doc(tokens.vocab_map(CUE_WORDS.__contains__, bool, tokens.lower))
    function = tokens.per_doc(tokens.vocab_map(FUNCTION_WORDS.__contains__, bool, tokens.lower))
    per_doc = np.array(
        [(len(_DEFINITION.findall(t)), code := len(_CODE_LINE.findall(t)),
          len(_STEP_LINE.findall(t)), t.strip().count("\n\n"), _sentences(t) if code else 0)
         for t in texts],
        dtype=np.float64,
    ).reshape(len(texts), 5)
    definitions, code_lines, steps, breaks, sentences = per_doc.T
    parts = {
        "explanation": _sat(100 * cues / denom, 4),
        "definitions": _sat(definitions, 3),
        "fluency": _sat(function / denom, 0.30),
        "originality": np.clip(1 - 2 * dup_5gram_char_frac, 0.0, 1.0),
        "structure": _sat(breaks + steps, 4),
        "code_explained": ((code_lines > 0) & (sentences >= 2)).astype(np.float64),
        "length": _sat(words, 150),
    }
    return sum(WEIGHTS[k] * v for k, v in parts.items()) * (words > 0)
