"""Bias audit: does a curation rule remove documents that mention identity groups more often than
the rest?

For every rule that removes documents and every category of `identity_terms.yaml` (gender,
sexual orientation, religion, ethnicity, disability, dialect markers), the rule's removal rate
among the documents it applies to that mention a term of the category, against its rate among
those that mention no identity term at all: the rate ratio with a 95% confidence interval (Katz's
log method; 0.5 added to every cell when one is empty, and a group with no removal is never
flagged). A rule is flagged for a category when
the interval's lower bound exceeds `bias_audit.max_ratio` and the rule removed at least
`bias_audit.min_removed` of the group's documents: the data say it removes that group's
documents more often, not merely that a few documents fell that way. "Removes" counts every
failure of the rule (`failing_by_rule`), not only the first failed rule, so a rule is judged
whatever its position in the order.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import yaml
from pydantic import Field

from stages.params import StrictModel
from stages.textstats import Tokens, tokenize

TERMS_FILE = Path(__file__).with_name("identity_terms.yaml")
ANY, REST = "any_identity_term", "no_identity_term"


class Audit(StrictModel):
    max_ratio: float = Field(1.5, gt=1, description="flag a rule whose removal-rate ratio for a "
                             "category has its 95% lower bound above this")
    min_removed: int = Field(5, ge=1, description="removals in a group before it can be flagged "
                             "(Katz's interval is unreliable on a handful)")
    samples: int = Field(3, ge=0, description="removed identity-term documents shown per rule")


@cache
def terms() -> tuple[int, dict[str, tuple[str, ...]]]:
    """(version, {category: terms}) of the term list."""
    data = yaml.safe_load(TERMS_FILE.read_text())
    return int(data["version"]), {c: tuple(str(t).lower() for t in ts)
                                  for c, ts in data["categories"].items()}


_WORD = re.compile(r"\w+")


@cache
def _phrases() -> dict[str, tuple[tuple[str, tuple[str, ...]], ...]]:
    """Every term as its lower-case words (whole words: "women's" and "anti-Muslim" hold a
    term, "gayety" does not; "y'all" is the words y, all), by category."""
    return {c: tuple((t, tuple(_WORD.findall(t))) for t in ts) for c, ts in terms()[1].items()}


def _found(tokens: Tokens, words: tuple[str, ...], index: dict[str, int]) -> np.ndarray:
    """Token positions where the word sequence starts (within one document)."""
    ids = [index.get(w, -1) for w in words]
    if min(ids) < 0:
        return np.zeros(0, dtype=np.int64)
    at = np.flatnonzero(tokens.ids == ids[0])
    at = at[at + len(ids) <= tokens.offsets[tokens.doc[at] + 1]]
    for k, i in enumerate(ids[1:], start=1):
        at = at[tokens.ids[at + k] == i]
    return at


def mentions(texts: list[str]) -> dict[str, np.ndarray]:
    """Per category, whether each text contains one of its terms: one regex pass per text, then
    word-id comparisons over the whole batch."""
    tokens = tokenize([t.lower() for t in texts], _WORD)
    index = {w: i for i, w in enumerate(tokens.vocab)}
    out = {}
    for c, phrases in _phrases().items():
        at = np.concatenate([_found(tokens, words, index) for _, words in phrases])
        out[c] = np.zeros(len(texts), dtype=bool)
        out[c][tokens.doc[at]] = True
    return out


def matched(text: str) -> dict[str, list[str]]:
    """The terms of each category found in a text (for the samples)."""
    tokens = tokenize([text.lower()], _WORD)
    index = {w: i for i, w in enumerate(tokens.vocab)}
    out = {c: sorted(t for t, words in phrases if len(_found(tokens, words, index)))
           for c, phrases in _phrases().items()}
    return {c: found for c, found in out.items() if found}


def count(applies: np.ndarray, fails: np.ndarray, groups: dict[str, np.ndarray],
          into: Counter) -> None:
    """Add one batch's (documents, removed) per category, for any term and for the rest (no
    term) to `into`; any + rest = every document the rule applies to."""
    any_term = np.logical_or.reduce(list(groups.values()))
    for name, mask in (*groups.items(), (ANY, any_term), (REST, ~any_term)):
        into[(name, "docs")] += int((applies & mask).sum())
        into[(name, "removed")] += int((fails & mask).sum())


def rate_ratio(a: int, n1: int, b: int, n0: int) -> tuple[float, float, float]:
    """(ratio, low, high) of the rates a/n1 and b/n0 with Katz's 95% interval; with an empty
    cell the interval is computed with 0.5 added to each (Haldane), and no removal in the group
    (a = 0) has ratio and lower bound 0: nothing to flag."""
    ratio = (a / n1) / (b / n0) if b else math.inf
    if min(a, n1 - a, b, n0 - b) == 0:
        a, b, n1, n0 = a + 0.5, b + 0.5, n1 + 1, n0 + 1
    se = math.sqrt(1 / a - 1 / n1 + 1 / b - 1 / n0)
    centre = (a / n1) / (b / n0)
    low = 0.0 if ratio == 0 else centre * math.exp(-1.96 * se)
    return ratio, low, centre * math.exp(1.96 * se)


def report(counts: dict[str, Counter], failing: Counter, params: Audit) -> dict:
    """The audit of every rule that removes documents: per category and for the rest, documents,
    removed, rate; per category the ratio to the rest and its interval; the flagged pairs."""
    version, categories = terms()
    rules, flagged = {}, []
    for rule in (r for r in counts if failing[r] > 0):
        c = counts[rule]
        rest_docs, rest_removed = c[(REST, "docs")], c[(REST, "removed")]
        row = {REST: {"docs": rest_docs, "removed": rest_removed,
                      "rate": round(rest_removed / rest_docs, 6) if rest_docs else None}}
        for cat in (*categories, ANY):
            docs, removed = c[(cat, "docs")], c[(cat, "removed")]
            entry = {"docs": docs, "removed": removed,
                     "rate": round(removed / docs, 6) if docs else None}
            if docs and rest_docs:
                ratio, low, high = rate_ratio(removed, docs, rest_removed, rest_docs)
                entry |= {"ratio": round(ratio, 4) if math.isfinite(ratio) else None,
                          "ci95": [round(low, 4), round(high, 4)]}
                if low > params.max_ratio and removed >= params.min_removed:
                    flagged.append(f"{rule}/{cat}")
            row[cat] = entry
        rules[rule] = row
    return {"terms_version": version, "max_ratio": params.max_ratio, "rules": rules,
            "flagged": flagged}
