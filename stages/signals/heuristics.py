"""Gopher, C4, FineWeb and code statistics: line rules per document, n-gram rules per batch.

Definitions follow the published rules as datatrove implements them (Gopher: Rae et al. 2021,
table A1; C4: Raffel et al. 2020; FineWeb: Penedo et al. 2024; code: The Stack / SantaCoder), with
two deliberate differences: tokens come from `stages.textstats` instead of spaCy, and the
duplicated n-gram fraction counts every character covered by a repeated n-gram once (Gopher's
wording) instead of datatrove's greedy skip. All n-gram statistics are computed for a whole batch
with one sort per n, not per document.
"""

from __future__ import annotations

import re

import numpy as np

from stages.textstats import Tokens, doc_keyed, mix64, ngram_hashes, ngram_valid, occurrences

GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
TOP_NGRAMS = (2, 3, 4)
DUP_NGRAMS = (5, 6, 7, 8, 9, 10)
BULLETS = ("•", "-", "*", "‣", "◦")
ELLIPSES = ("...", "…")
C4_END = (".", "?", "!", '"', "'")
C4_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
             "use cookies")
TERMINAL = tuple(".!?։؟۔।॥።፧။។៕‼‽⁇⁈⁉。！？．｡")
COMMENT_START = ("#", "//", "/*", "*", "--", "<!--", ";", "%")
_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_SENTENCE_END = re.compile(r"[.!?]+['\")\]]*(?=\s+[\"'(\[]?[A-Z0-9]|\s*$)")
_PARAGRAPHS = re.compile(r"\n{2,}")
_LINES = re.compile(r"\n+")
_DOCSTRING = re.compile(r"^[rRuUbBfF]{0,2}(\"\"\"|''')")
_TRAILING_COMMENT = re.compile(r"\s(#|//)")

# Raw per-document counts from `line_counts`, in order; `finish` turns them into signals.
LINE_COUNTS = (
    "chars", "lines", "bullet_lines", "ellipsis_end_lines", "hashes", "ellipses",
    "c4_kept_lines", "c4_sentences", "c4_javascript_lines", "c4_policy_lines", "c4_lorem_ipsum",
    "c4_curly_bracket", "paragraphs", "dup_paragraphs", "dup_paragraph_chars", "rep_lines",
    "dup_lines", "dup_line_chars", "fw_lines", "fw_punct_lines", "fw_short_lines",
    "fw_dup_line_chars", "newlines", "max_line_length", "line_chars", "comment_chars",
)


def _duplicates(items: list[str]) -> tuple[int, int]:
    """Items already seen earlier in the list, and their characters (Gopher's definition)."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


def _c4_line(line: str, counts: list[int]) -> None:
    """One line through C4's line filters, in datatrove's order (kept, sentences, js, policy...)."""
    raw = line  # words are counted before citations are removed, as datatrove does
    if len(line) > 1000 and any(len(w) > 1000 for w in line.split()):
        return
    if "[" in line:
        line = _CITATION.sub("", line)
    if not line.endswith(C4_END) or line.endswith("...") or len(raw.split()) < 3:
        return  # most lines end here: split only the lines that get this far
    low = line.lower()
    if "lorem ipsum" in low:
        counts[4] = 1
    if "javascript" in low:
        counts[2] += 1
        return
    if "{" in line:
        counts[5] = 1
    if any(p in low for p in C4_POLICY):
        counts[3] += 1
        return
    counts[0] += 1
    counts[1] += max(1, len(_SENTENCE_END.findall(line)))


def _comment_chars(lines: list[str]) -> int:
    """Characters in comments and Python docstrings (line-based, no parsing)."""
    chars, quote = 0, ""
    for raw in lines:
        s = raw.strip()
        if quote:
            chars += len(s)
            if quote in s:
                quote = ""
        elif s.startswith(COMMENT_START):
            chars += len(s)
        elif (m := _DOCSTRING.match(s)) is not None:
            chars += len(s)
            if s.count(m.group(1)) == 1:
                quote = m.group(1)
        elif (m := _TRAILING_COMMENT.search(s)) is not None and not any(q in s[: m.start()]
                                                                        for q in "\"'"):
            chars += len(s) - m.start() - 1
    return chars


def line_counts(text: str, short_line_length: int) -> tuple[int, ...]:
    """The `LINE_COUNTS` of one document."""
    lines = text.splitlines()
    bullets = ellipsis_end = 0
    c4 = [0, 0, 0, 0, 0, 0]  # kept lines, sentences, javascript, policy, lorem ipsum, curly
    for line in lines:
        s = line.strip()
        if s.startswith(BULLETS):
            bullets += 1
        if s.endswith(ELLIPSES):
            ellipsis_end += 1
        if "[" in s or s.endswith(C4_END):  # any other line fails C4's end-punctuation test
            _c4_line(s, c4)
    paragraphs = _PARAGRAPHS.split(text.strip())
    rep_lines = _LINES.split(text)
    fw_lines = [line for line in text.split("\n") if line.strip()]
    line_lengths = list(map(len, lines))
    return (
        len(text), len(lines), bullets, ellipsis_end, text.count("#"),
        text.count("...") + text.count("…"), *c4, len(paragraphs), *_duplicates(paragraphs),
        len(rep_lines), *_duplicates(rep_lines), len(fw_lines),
        sum([line.endswith(TERMINAL) for line in fw_lines]),
        sum([n <= short_line_length for n in map(len, fw_lines)]), _duplicates(fw_lines)[1],
        text.count("\n"), max(line_lengths, default=0), sum(line_lengths),
        _comment_chars(lines),
    )


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _ngram_fractions(tokens: Tokens, lengths: np.ndarray, chars: np.ndarray) -> dict:
    """Gopher's top n-gram and duplicated n-gram character fractions for every document.

    An n-gram can only repeat where its (n-1)-gram prefix repeats, so each order sorts just the
    positions whose previous-order n-gram occurs twice or more in its document.
    """
    out = {}
    base = mix64(tokens.ids.astype(np.uint64) + np.uint64(1))
    grams = ngram_hashes(base, max(DUP_NGRAMS))
    cum = np.concatenate([[0], np.cumsum(lengths)])
    total = len(tokens.ids)
    candidates = np.arange(total)
    for n in range(min(TOP_NGRAMS), max(DUP_NGRAMS) + 1):
        valid = ngram_valid(tokens.offsets, n)
        starts = candidates[candidates < len(valid)]
        starts = starts[valid[starts]]
        docs = tokens.doc[starts]
        first, count, group = occurrences(doc_keyed(grams[n - 1][starts], docs))
        if n in TOP_NGRAMS:  # most frequent n-gram per document, earliest on ties
            heads = tokens.offsets[:-1][tokens.counts >= n]  # all counts 1: the first n-gram
            top = np.zeros(tokens.n_docs)
            top[tokens.doc[heads]] = cum[heads + n] - cum[heads] + n - 1
            repeated = np.flatnonzero(count >= 2)
            gdoc = docs[first[repeated]]
            order = repeated[np.lexsort((first[repeated], -count[repeated], gdoc))]
            best = order[np.r_[True, docs[first[order]][1:] != docs[first[order]][:-1]]
                         ] if len(order) else order
            s = starts[first[best]]
            top[docs[first[best]]] = count[best] * (cum[s + n] - cum[s] + n - 1)
            out[f"gopher_top_{n}gram_char_frac"] = _ratio(top, chars)
        if n in DUP_NGRAMS:  # characters of words covered by any n-gram seen earlier
            dup = starts[first[group] != np.arange(len(starts))]
            cover = np.cumsum(np.bincount(dup, minlength=total + n) -
                              np.bincount(dup + n, minlength=total + n))[:total] > 0
            out[f"gopher_dup_{n}gram_char_frac"] = _ratio(tokens.per_doc(lengths * cover), chars)
        candidates = starts[count[group] >= 2]
    return out


def compute(texts: list[str], tokens: Tokens, short_line_length: int) -> dict[str, np.ndarray]:
    """All heuristic signals of a batch, one array per column."""
    raw = np.array([line_counts(t, short_line_length) for t in texts], dtype=np.int64)
    raw = raw.reshape(len(texts), len(LINE_COUNTS))
    c = dict(zip(LINE_COUNTS, raw.T, strict=True))
    word = tokens.is_word
    lengths = tokens.vocab_map(len)
    alpha = tokens.vocab_map(lambda w: w.isalpha() or any(ch.isalpha() for ch in w), bool)
    alnum = tokens.vocab_map(lambda w: len(w) if w.isalnum() else sum(map(str.isalnum, w)))
    stop = tokens.vocab_map(lambda w: GOPHER_STOP_WORDS.index(w) if w in GOPHER_STOP_WORDS
                            else -1, np.int64)
    hit = stop >= 0
    distinct_stops = np.unique(tokens.doc[hit] * len(GOPHER_STOP_WORDS) + stop[hit])
    n_tokens = tokens.counts
    n_words = tokens.per_doc(word)
    return {
        "gopher_words": n_words.astype(np.int64),
        "gopher_mean_word_length": _ratio(tokens.per_doc(lengths * word), n_words),
        "gopher_hash_ratio": _ratio(c["hashes"], n_tokens),
        "gopher_ellipsis_ratio": _ratio(c["ellipses"], n_tokens),
        "gopher_bullet_lines_ratio": _ratio(c["bullet_lines"], c["lines"]),
        "gopher_ellipsis_lines_ratio": _ratio(c["ellipsis_end_lines"], c["lines"]),
        "gopher_alpha_words_ratio": _ratio(tokens.per_doc(alpha), n_tokens),
        "gopher_stop_words": np.bincount(distinct_stops // len(GOPHER_STOP_WORDS),
                                         minlength=tokens.n_docs),
        "gopher_dup_para_frac": _ratio(c["dup_paragraphs"], c["paragraphs"]),
        "gopher_dup_para_char_frac": _ratio(c["dup_paragraph_chars"], c["chars"]),
        "gopher_dup_line_frac": _ratio(c["dup_lines"], c["rep_lines"]),
        "gopher_dup_line_char_frac": _ratio(c["dup_line_chars"], c["chars"]),
        **_ngram_fractions(tokens, lengths, c["chars"]),
        "c4_sentences": c["c4_sentences"],
        "c4_kept_lines_ratio": _ratio(c["c4_kept_lines"], c["lines"]),
        "c4_javascript_lines": c["c4_javascript_lines"],
        "c4_policy_lines": c["c4_policy_lines"],
        "c4_lorem_ipsum": c["c4_lorem_ipsum"].astype(bool),
        "c4_curly_bracket": c["c4_curly_bracket"].astype(bool),
        "fineweb_line_punct_ratio": _ratio(c["fw_punct_lines"], c["fw_lines"]),
        "fineweb_short_line_ratio": _ratio(c["fw_short_lines"], c["fw_lines"]),
        "fineweb_dup_line_char_ratio": _ratio(c["fw_dup_line_chars"], c["chars"] - c["newlines"]),
        "fineweb_list_ratio": _ratio(c["newlines"], n_tokens),
        "code_longest_line": c["max_line_length"],
        "code_mean_line_length": _ratio(c["line_chars"], c["lines"]),
        "code_alnum_frac": _ratio(tokens.per_doc(alnum), c["chars"]),
        "code_comment_frac": _ratio(c["comment_chars"], c["chars"]),
    }
