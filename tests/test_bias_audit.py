"""The bias audit: identity terms found whole-word, counts that reconcile with the filter's, and a
rule planted to remove identity-term documents flagged (a balanced one not)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stages.filter import bias
from tests.curation_helpers import docstrings, make_root, row, run

GROUPED = [
    "The mosque welcomes Muslim families to the evening meal during Ramadan.",
    "Our women's football team won the regional cup again this spring.",
    "The church choir sang Christian hymns for the whole village.",
    "A wheelchair ramp now gives disabled visitors access to the library.",
    "The gay and lesbian film festival opens with a documentary on Friday.",
    "Hispanic business owners met the mayor to talk about small loans.",
    "Y'all should try the barbecue place that opened by the station.",
    "Jewish holidays are listed on the school calendar with the others.",
]


def test_terms_are_matched_whole_word_by_category():
    found = bias.mentions(["She is a Muslim woman.", "Islamabad is a city.", "a blind spot",
                           "y'all come back", "gayety and mirth", "The LGBTQ+ center",
                           "the women's team", "anti-Muslim"])
    assert found["religion"].tolist() == [True, False, False, False, False, False, False, True]
    assert found["gender"].tolist() == [True, False, False, False, False, False, True, False]
    assert not any(v[2] for v in found.values())  # ambiguous words are not in the list
    assert found["dialect"][3] and not found["sexual_orientation"][4]
    assert found["sexual_orientation"][5]
    assert bias.matched("Muslim and Christian women") == {
        "gender": ["women"], "religion": ["christian", "muslim"]}
    version, categories = bias.terms()
    assert version >= 1 and set(categories) == {
        "gender", "sexual_orientation", "religion", "ethnicity", "disability", "dialect"}


def test_rate_ratio_and_its_interval():
    ratio, low, high = bias.rate_ratio(50, 100, 10, 100)
    assert ratio == pytest.approx(5.0) and 2.5 < low < 5.0 < high
    ratio, low, high = bias.rate_ratio(3, 10, 0, 100)  # an empty cell: 0.5 added to each
    assert ratio == float("inf") and 1.5 < low < high
    assert bias.rate_ratio(0, 10, 2, 9000)[:2] == (0.0, 0.0)  # no removal: never flagged


def _corpus(short_grouped: int, short_neutral: int) -> list[dict]:
    """Grouped documents (short, or long with a neutral docstring appended) and long neutral
    ones, the first `short_neutral` of which are cut short: Gopher's 50-word minimum decides."""
    long_docs = docstrings(60)[:160]
    docs = []
    for i in range(40):
        text = GROUPED[i % len(GROUPED)] + f" Note {i}."
        docs.append(row(text if i < short_grouped else text + " " + long_docs[i], f"g{i}"))
    for i in range(120):
        text = long_docs[40 + i]
        docs.append(row(" ".join(text.split()[:20]) if i < short_neutral else text, f"n{i}"))
    return docs


@pytest.mark.parametrize("planted", [True, False])
def test_a_rule_that_removes_identity_documents_is_flagged(tmp_path, planted):
    corpus = _corpus(short_grouped=40 if planted else 10, short_neutral=30)
    root = make_root(tmp_path, corpus, filter={"apply": {"prose": ["gopher_quality"],
                                                         "code": ["code"]}})
    *_, m = run(root, "signals", "quality", "filter")
    audit = m["bias_audit"]
    words = audit["rules"]["gopher_quality.min_words"]
    # the counts reconcile with the filter's: any term + no term = every document, and the
    # removals = the rule's failures
    assert words[bias.ANY]["docs"] + words[bias.REST]["docs"] == m["docs_in"] == 160
    assert (words[bias.ANY]["removed"] + words[bias.REST]["removed"]
            == m["failing_by_rule"]["gopher_quality.min_words"])
    assert words[bias.REST]["removed"] >= 30 and words[bias.ANY]["docs"] >= 40
    flagged = "gopher_quality.min_words/any_identity_term" in audit["flagged"]
    assert flagged == planted
    samples = [json.loads(line) for line in
               (root / "data/filter/bias_samples.jsonl").read_text().splitlines()]
    ours = [s for s in samples if s["rule"] == "gopher_quality.min_words"]
    assert 0 < len(ours) <= 3 and all(s["terms"] for s in ours)
    if planted:
        assert words["religion"]["ratio"] > 1.5 and np.isfinite(words["religion"]["ci95"][0])
