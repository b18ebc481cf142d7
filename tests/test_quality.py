"""Quality classifier: trained deterministically, separates planted high- and low-quality text,
scores every document, fails clearly without enough examples, and is its own versioned output."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from stages.quality.classifier import Classifier
from stages.registry import stage
from tests.curation_helpers import docstrings, file_bytes, make_root, read_dir, row, run

PRODUCTS = ("shoes", "phones", "watches", "bags", "laptops", "jackets", "rings", "pills")
HYPE = ("BEST PRICE", "click here", "limited offer", "buy now", "free shipping", "HOT deal",
        "100% guaranteed", "order today", "cheap", "discount", "sale ends soon", "WOW")


def spam(rng: random.Random) -> str:
    """Low-quality web text: keyword-stuffed ads, seeded."""
    lines = []
    for _ in range(rng.randint(6, 14)):
        words = rng.sample(HYPE, 3) + [rng.choice(PRODUCTS), str(rng.randint(5, 999)) + "$"]
        rng.shuffle(words)
        lines.append(" ".join(words) + rng.choice(["!!!", "!", " >>>", ""]))
    return "\n".join(lines)


def corpus(reference: int = 120, junk: int = 240) -> list[dict]:
    """Reference docs (the stdlib's docstrings, source `reference`) among spam and ordinary
    short docstrings (source `web`)."""
    rng = random.Random(0)
    texts = docstrings(40)
    ref = [row(t, f"r{i}") | {"source": "reference"} for i, t in enumerate(texts[:reference])]
    web = [row(spam(rng), f"s{i}") | {"source": "web"} for i in range(junk)]
    return [d for pair in zip(web[: len(ref)], ref, strict=True) for d in pair] + web[len(ref):]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = make_root(tmp_path_factory.mktemp("quality"), corpus(),
                     quality={"positives": {"sources": ["reference"],
                                            "textbook_top_fraction": 0.0}})
    _, m = run(root, "signals", "quality")
    return root, m


def test_separates_planted_reference_from_spam(trained):
    root, m = trained
    prose = m["domains"]["prose"]
    assert prose["train"]["positives"] == 96 and prose["train"]["negatives"] == 96
    held = prose["heldout"]
    assert held["docs"] == 48 and held["positives"] == 24
    assert held["roc_auc"] >= 0.95 and held["precision"] >= 0.9 and held["recall"] >= 0.9
    # unseen text: an explanation scores above an ad
    clf = Classifier.load(root / "data/quality/classifier", "prose")
    explained, ad = clf.score([docstrings(40)[200], spam(random.Random(99))])
    assert explained > 0.5 > ad
    penalised = " ".join(prose["top_ngrams"]["negative"])
    assert any(w in penalised for w in ("click", "buy", "cheap", "deal", "free", "sale", "offer"))


def test_every_document_scored_in_corpus_order(trained):
    root, m = trained
    scores = read_dir(root / "data/quality/scores")
    ingest = read_dir(root / "data/ingest/corpus")
    assert scores["doc_id"].to_pylist() == ingest["doc_id"].to_pylist()
    assert m["docs"] == ingest.num_rows == 360
    s = np.array(scores["quality_score"].to_pylist())
    assert ((s >= 0) & (s <= 1)).all()
    reference = np.array(ingest["source"].to_pylist()) == "reference"
    assert s[reference].mean() > 0.8 > 0.2 > s[~reference].mean()
    assert (root / "reports/quality/scores.png").read_bytes()[:4] == b"\x89PNG"


def test_training_is_deterministic(trained):
    root, m = trained
    before = file_bytes(root / "data/quality")
    (again,) = run(root, "quality")
    assert again == m
    assert file_bytes(root / "data/quality") == before


def test_textbook_positives_and_a_clear_error_when_too_few(tmp_path):
    root = make_root(tmp_path / "a", corpus(reference=40, junk=40),
                     quality={"positives": {"textbook_top_fraction": 0.25}})
    _, m = run(root, "signals", "quality")
    assert m["domains"]["prose"]["train"]["positives"] == 16  # 20 positives, 4 held out
    root = make_root(tmp_path / "b", corpus(reference=40, junk=40),
                     quality={"positives": {"textbook_top_fraction": 0.02}})
    with pytest.raises(Exception, match="has 2 positives.*textbook_top_fraction"):
        run(root, "signals", "quality")
    root = make_root(tmp_path / "c", corpus(reference=40, junk=40),
                     quality={"positives": {"sources": ["wikipedia"]}})
    with pytest.raises(Exception, match="no corpus documents from \\['wikipedia'\\]"):
        run(root, "signals", "quality")


def test_labelled_sample_is_capped_per_class_and_every_document_still_scored(trained, tmp_path):
    # the classifier's memory is bounded by the cap, not the corpus: a seeded sample of each
    # class (120 reference docs, 120 of 240 spam as negatives) of 50, 10 of each held out
    positives = {"sources": ["reference"], "textbook_top_fraction": 0.0}
    root = make_root(tmp_path / "capped", corpus(),
                     quality={"max_per_class": 50, "positives": positives})
    _, m = run(root, "signals", "quality")
    prose = m["domains"]["prose"]
    assert prose["train"] == {"positives": 40, "negatives": 40}
    assert prose["heldout"]["docs"] == 20 and prose["heldout"]["positives"] == 10
    assert prose["heldout"]["roc_auc"] >= 0.95  # 40 examples a class still separate them
    assert m["docs"] == 360
    assert read_dir(root / "data/quality/scores")["doc_id"].to_pylist() == read_dir(
        trained[0] / "data/quality/scores")["doc_id"].to_pylist()
    before = file_bytes(root / "data/quality")
    run(root, "quality")  # the sample is seeded
    assert file_bytes(root / "data/quality") == before


def test_classifier_is_its_own_versioned_output():
    # filter thresholds are not the classifier's params (no retraining); its own params are
    quality, filt = stage("quality"), stage("filter")
    assert "quality" in quality.params and not any(p.startswith("filter") for p in quality.params)
    assert quality.out in filt.deps and "filter" in filt.params
    assert json.loads(json.dumps(quality.params)) == ["base.seed", "quality"]
