"""Filter: counts reconcile, domains get their own rules, threshold edits reuse stored signals."""

from __future__ import annotations

import json

import pytest

import stages.quality
import stages.signals
from stages.filter import Params
from stages.registry import stage
from tests.curation_helpers import (
    code_chunks,
    docstrings,
    file_bytes,
    make_root,
    read_dir,
    row,
    run,
    set_params,
)

CURLY_PROSE = (
    "Format strings use braces: write {name} where the value should go. The method replaces "
    "every field with the matching argument and returns the new string. It raises KeyError "
    "when a field has no argument. This is the usual way to build messages. It is also how "
    "the logging module formats records. Use it for all user facing text in this package."
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A mixed corpus (two shards) with signals computed once for the whole module."""
    prose = [row(t, f"p{i}") for i, t in enumerate(docstrings(10)[:300])]
    code = [row(t, f"c{i}", "code") for i, t in enumerate(code_chunks()[:60])]
    extra = [row(CURLY_PROSE, "curly"), row("def f(x):\n    return {x: 1}  # a dict\n", "dict",
                                            "code")]
    root = make_root(tmp_path_factory.mktemp("filter"), prose[:150] + code + extra + prose[150:])
    run(root, "signals", "quality")
    return root


def test_counts_reconcile_and_domains_get_their_own_rules(root):
    (m,) = run(root, "filter")
    assert m["docs_in"] == 362 == m["docs_kept"] + m["docs_removed"]
    assert sum(m["removed_by_rule"].values()) == m["docs_removed"]
    assert all(m["failing_by_rule"][r] >= n for r, n in m["removed_by_rule"].items())
    assert sum(d["in"] for d in m["by_domain"].values()) == m["docs_in"]
    assert sum(d["kept"] for d in m["by_domain"].values()) == m["docs_kept"]
    assert m["by_domain"]["code"]["in"] == 61 and m["by_domain"]["prose"]["in"] == 301
    kept = read_dir(root / "data/filter/corpus")
    assert kept.num_rows == m["docs_kept"] and kept.column_names == [
        "doc_id", "source", "domain", "path", "text", "n_chars"]
    ids = set(kept["doc_id"].to_pylist())
    assert row(CURLY_PROSE, "curly")["doc_id"] not in ids  # C4 curly-bracket rule, prose only
    assert row("", "dict")["doc_id"] in ids  # code with braces is judged by code rules
    assert m["by_domain"]["code"]["removed"] == sum(
        n for r, n in m["removed_by_rule"].items() if r.startswith("code."))


def test_removed_samples_show_each_rule(root):
    (m,) = run(root, "filter")
    samples = [json.loads(line) for line in
               (root / "data/filter/removed_samples.jsonl").read_text().splitlines()]
    by_rule = {}
    for s in samples:
        by_rule.setdefault(s["rule"], []).append(s)
    assert set(by_rule) == {r for r, n in m["removed_by_rule"].items() if n}
    for rule, items in by_rule.items():
        assert len(items) == min(5, m["removed_by_rule"][rule])
        assert [s["doc_id"] for s in items] == sorted(s["doc_id"] for s in items)
        assert all(len(s["text"]) <= 400 and "threshold" in s and "value" in s for s in items)


def test_threshold_edit_reruns_only_filter_from_stored_signals(root, monkeypatch):
    # Structure: a filter threshold is not an input of `signals`, and filter code is not its code.
    assert stage("filter").params == ("filter",)
    assert not any(p.startswith("filter") for p in stage("signals").params)
    assert not any(f.startswith("stages/filter/") for f in stage("signals").code_files())
    assert "data/signals" in stage("filter").deps

    (before,) = run(root, "filter")
    signals_bytes = file_bytes(root / "data/signals")

    def no_recompute(*_):
        raise AssertionError("filter must not compute signals")

    monkeypatch.setattr(stages.signals, "compute", no_recompute)
    set_params(root, filter={"code": {"max_longest_line": 60}})
    try:
        (after,) = run(root, "filter")
    finally:
        set_params(root, filter={"code": {"max_longest_line": 1000}})
    assert after["docs_kept"] < before["docs_kept"]
    assert after["removed_by_rule"]["code.max_longest_line"] > 0
    assert before["removed_by_rule"]["code.max_longest_line"] == 0
    assert file_bytes(root / "data/signals") == signals_bytes


def test_disabled_rules_and_apply_lists(root):
    set_params(root, filter={"apply": {"prose": ["toxicity"], "code": []}})
    try:
        (m,) = run(root, "filter")
    finally:
        set_params(root, filter={"apply": Params().apply})
    assert list(m["removed_by_rule"]) == ["toxicity.max_toxicity_prob"]
    assert m["by_domain"]["code"]["removed"] == 0
    with pytest.raises(ValueError, match="unknown rule groups"):
        Params(apply={"prose": ["gopher"]})


def test_quality_top_fraction_keeps_the_best_scored_of_what_passes(root, monkeypatch):
    (before,) = run(root, "filter")

    def no_training(*_, **__):
        raise AssertionError("a filter threshold must not retrain the classifier")

    monkeypatch.setattr(stages.quality, "fit", no_training)
    set_params(root, filter={"quality": {"top_fraction": 0.5}})
    try:
        (m,) = run(root, "filter")
    finally:
        set_params(root, filter={"quality": {"top_fraction": None}})
    assert "data/quality" in stage("filter").deps
    assert not any(p.startswith("filter") for p in stage("quality").params)
    for domain, counts in m["by_domain"].items():
        passing = before["by_domain"][domain]["kept"]
        # ceil(half) of what passed the other rules (ties at the cut are kept)
        assert counts["kept"] >= -(-passing // 2) and counts["kept"] <= passing // 2 + 2
    assert set(m["quality_cuts"]) == {"prose", "code"}
    assert m["removed_by_rule"]["quality.top_fraction"] == before["docs_kept"] - m["docs_kept"]
    samples = [json.loads(line) for line in
               (root / "data/filter/removed_samples.jsonl").read_text().splitlines()]
    cut = [s for s in samples if s["rule"] == "quality.top_fraction"]
    assert cut and all(s["value"] < m["quality_cuts"][s["domain"]] == s["threshold"] for s in cut)


def test_filter_output_is_deterministic(root):
    first = run(root, "filter")
    out = file_bytes(root / "data/filter")
    assert run(root, "filter") == first
    assert file_bytes(root / "data/filter") == out
