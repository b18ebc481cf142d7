"""Signals: known values on crafted texts, vectorised n-gram stats against a plain reference."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from py3langid.langid import MODEL_FILE, LanguageIdentifier

from stages.params import ParamsError
from stages.signals import Params, compute, language, profanity, toxicity
from stages.textstats import TOKEN_RE
from tests.curation_helpers import (
    SCHEMA,
    code_chunks,
    docstrings,
    file_bytes,
    make_root,
    row,
    run,
    set_params,
)

EXPLANATION = (
    "A stack is a collection in which the last item added is the first one removed. Because "
    "of this, it is called a LIFO structure. For example, when a function calls another "
    "function, the caller's state is pushed onto the call stack; when the callee returns, it "
    "is popped again.\n\nTo implement a stack, first choose a list, then use append to push and "
    "pop to remove. This means both operations take constant time, which is why stacks are "
    "used to evaluate expressions and to undo edits.\n\n>>> s = []\n>>> s.append(1)\n"
)
CODE = '''def area(radius):
    """Return the area of a circle with the given radius."""
    # pi times r squared
    return 3.14159 * radius ** 2  # close enough
'''


def signals(*texts: str) -> dict:
    return compute(list(texts), Params())


def test_gopher_counts_on_a_known_sentence():
    s = signals("The cat sat on the mat. The dog sat on the log.")
    assert s["gopher_words"][0] == 12  # 14 tokens, two of them full stops
    assert s["gopher_mean_word_length"][0] == pytest.approx(34 / 12)
    assert s["gopher_alpha_words_ratio"][0] == pytest.approx(12 / 14)
    assert s["gopher_stop_words"][0] == 1  # "the"; capitalised "The" does not count (as datatrove)
    assert s["c4_sentences"][0] == 2


def test_line_rules_on_crafted_texts():
    bullets, lorem, dup_lines = 0, 1, 2
    s = signals(
        "- apples\n- pears\n- plums\n• figs",
        "Some intro here.\nLorem ipsum dolor sit amet, consectetur adipiscing elit.",
        "same line here\nsame line here\nsame line here\nother",
    )
    assert s["gopher_bullet_lines_ratio"][bullets] == 1.0
    assert s["gopher_bullet_lines_ratio"][lorem] == 0.0
    assert s["c4_lorem_ipsum"].tolist() == [False, True, False]
    assert s["gopher_dup_line_frac"][dup_lines] == pytest.approx(2 / 4)
    assert s["gopher_dup_line_char_frac"][dup_lines] == pytest.approx(28 / 50)
    assert s["fineweb_line_punct_ratio"][lorem] == 1.0
    assert s["fineweb_short_line_ratio"][bullets] == 1.0


def test_ngram_fractions_on_crafted_texts():
    s = signals("foo bar foo bar foo bar", "a b c d e a b c d e", "one two three four five")
    assert s["gopher_top_2gram_char_frac"][0] == pytest.approx(3 * 7 / 23)
    assert s["gopher_dup_5gram_char_frac"][1] == pytest.approx(5 / 19)
    assert s["gopher_dup_5gram_char_frac"][2] == 0.0
    assert s["gopher_dup_6gram_char_frac"][1] == 0.0


def _reference_ngram_fractions(text: str, n: int) -> tuple[float, float]:
    """Plain-Python Gopher n-gram fractions (top n-gram; characters covered by repeats)."""
    words = TOKEN_RE.findall(text)
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0, 0.0
    gram, count = Counter(grams).most_common(1)[0]
    top = count * len(" ".join(gram)) / len(text)
    seen, covered = set(), set()
    for i, g in enumerate(grams):
        if g in seen:
            covered.update(range(i, i + n))
        seen.add(g)
    return top, sum(len(words[i]) for i in covered) / len(text)


def test_vectorised_ngram_fractions_match_a_plain_reference():
    texts = [d for d in docstrings(40) if d.count("\n") > 3][:300]
    texts += [t + "\n" + t[: len(t) // 2] for t in texts[:50]]  # some real repetition
    s = signals(*texts)
    for n in (2, 3, 4, 5, 8):
        top, dup = zip(*(_reference_ngram_fractions(t, n) for t in texts), strict=True)
        if n <= 4:
            np.testing.assert_allclose(s[f"gopher_top_{n}gram_char_frac"], top)
        else:
            np.testing.assert_allclose(s[f"gopher_dup_{n}gram_char_frac"], dup)
    assert (s["gopher_dup_5gram_char_frac"][-50:] > 0.2).all()


def test_vectorised_language_id_equals_py3langid():
    ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    texts = [*docstrings(5)[:300], *code_chunks()[:50],
             "Le renard brun rapide saute par-dessus le chien paresseux.",
             "El rápido zorro marrón salta sobre el perro perezoso.", "ÉCOLE NORMALE SUPÉRIEURE"]
    langs, probs = language.identify(texts, 2000)
    for text, lang, prob in zip(texts, langs, probs, strict=True):
        expected, score = ident.classify(text[:2000])
        assert lang == expected and prob == pytest.approx(score, abs=1e-4)
    assert langs[-3:] == ["fr", "es", "fr"]


def test_code_signals_separate_code_from_prose():
    s = signals(CODE, EXPLANATION)
    assert s["code_longest_line"][0] == max(map(len, CODE.splitlines()))
    assert 0.2 < s["code_comment_frac"][0] < 0.8  # docstring, comment line and trailing comment
    assert s["code_comment_frac"][1] == 0.0
    assert 0.5 < s["code_alnum_frac"][0] < 0.9


def test_language_toxicity_and_textbook_scores():
    s = signals(
        EXPLANATION,
        "Der schnelle braune Fuchs springt über den faulen Hund und läuft dann in den Wald.",
        "This is total bullshit and the rest was barely legal.",
        "buy now cheap best price click here buy now cheap best price click here",
        "",
    )
    assert s["lang"][:2] == ["en", "de"] and s["lang_score"][0] > 0.9
    assert s["lang"][4] == "und"
    assert s["toxicity"][0] == 0.0
    assert s["toxicity"][2] == pytest.approx(2 / 10)  # a word and a two-word phrase, 10 words
    assert s["textbook_score"][0] > 0.6 > 0.3 > s["textbook_score"][3]
    assert s["textbook_score"][4] == 0.0 and s["gopher_words"][4] == 0


def test_toxicity_classifier_reads_words_in_context():
    """The classifier flags offensive text, also one offensive paragraph in a long document
    (max over chunks), and passes listed words used in a benign sense, which the word list
    flags."""
    benign = ["Cocks and hens live on the farm near the river, and the farmer feeds them grain.",
              "Sex education in schools covers biology, health and consent for teenagers."]
    offensive = "You are a stupid worthless idiot and everybody hates you, shut up."
    long_doc = " ".join([EXPLANATION] * 30) + " " + offensive
    s = signals(*benign, offensive, EXPLANATION, long_doc)
    assert len(long_doc.split()) > 2 * profanity.CHUNK_WORDS
    assert all(s["toxicity"][:2] > 0) and all(s["toxicity_prob"][:2] < 0.8)
    assert s["toxicity_prob"][2] > 0.9 and s["toxicity_prob"][4] > 0.9
    assert s["toxicity_prob"][3] < 0.1



def test_profanity_scores_equal_the_wheels_predict_prob(tmp_path, monkeypatch):
    """The array scorer gives the wheel's own probabilities chunk for chunk, extracts the arrays
    once into the model cache and reads them back from there."""
    from profanity_check import predict_prob

    monkeypatch.setenv("SLM_MODEL_CACHE", str(tmp_path / "models"))
    profanity._model.cache_clear()
    texts = [*docstrings(3)[:150], "", "  \n ", "You are a stupid idiot.", "ΟΔΟΣ Σ shit",
             " ".join(["word"] * (2 * profanity.CHUNK_WORDS + 5)) + " fuck off"]
    n = profanity.CHUNK_WORDS
    chunks = [[" ".join(t.split()[i:i + n]) for i in range(0, len(t.split()), n)] for t in texts]
    assert [len(c) for c in chunks[-6:]] == [1, 0, 0, 1, 1, 3]
    expected = [max(predict_prob(c)) if c else 0.0 for c in chunks]
    np.testing.assert_allclose(profanity.probabilities(texts), expected, rtol=0, atol=1e-12)
    (cached,) = (tmp_path / "models").iterdir()
    assert sorted(p.name for p in cached.iterdir()) == [
        "a.npy", "b.npy", "coef.npy", "idf.npy", "intercept.npy", "words.npy"]
    profanity._model.cache_clear()
    monkeypatch.setattr(profanity, "_extract", lambda: pytest.fail("extracted again"))
    np.testing.assert_allclose(profanity.probabilities(texts), expected, rtol=0, atol=1e-12)
    profanity._model.cache_clear()

@pytest.fixture
def corpus_root(tmp_path):
    prose = [row(t, f"p{i}") for i, t in enumerate(docstrings(20)[:240])]
    code = [row(t, f"c{i}", "code") for i, t in enumerate(code_chunks()[:40])]
    return make_root(tmp_path / "root", prose[:120] + code + prose[120:])


def test_stage_writes_signals_keyed_by_doc_id(corpus_root):
    (metrics,) = run(corpus_root, "signals")
    corpus = sorted((corpus_root / "data/ingest/corpus").glob("part-*.parquet"))
    out = sorted((corpus_root / "data/signals").glob("part-*.parquet"))
    assert [p.name for p in out] == [p.name for p in corpus] and len(out) == 2
    for src, sig in zip(corpus, out, strict=True):
        table = pq.read_table(sig)
        assert "text" not in table.column_names
        assert table["doc_id"].equals(pq.read_table(src)["doc_id"])
    assert metrics["docs"] == 280 and metrics["docs_by_domain"] == {"code": 40, "prose": 240}
    assert metrics["prose_languages"]["en"] > 200
    manifest = json.loads((corpus_root / "data/signals/manifest.json").read_text())
    assert manifest["rows"] == 280 and "toxicity" in manifest["columns"]


def test_output_is_identical_across_runs_and_worker_counts(corpus_root):
    run(corpus_root, "signals")
    first = file_bytes(corpus_root / "data/signals")
    set_params(corpus_root, runtime={"workers": 2})
    run(corpus_root, "signals")
    assert file_bytes(corpus_root / "data/signals") == first


def test_refresh_computes_only_new_or_changed_texts(tmp_path, monkeypatch):
    """After a refresh added and changed documents, only their signals are computed (the rest
    come from the document cache) and the output is a from-scratch run's, byte for byte."""
    import stages.signals

    texts = docstrings(10)[:120]
    before = [row(t, f"d{i}") for i, t in enumerate(texts[:100])]
    after = before[:50] + [row(texts[50] + " Changed.", "d50")] + before[51:] + [
        row(t, f"d{i}") for i, t in enumerate(texts[100:], start=100)] + [
        row(texts[101], "e0"), row(texts[3], "e1")]  # copies of a new and of a cached text
    root = make_root(tmp_path / "refresh", before)
    run(root, "signals")
    computed = []
    real = stages.signals.compute
    monkeypatch.setattr(stages.signals, "compute",
                        lambda texts, params: computed.extend(texts) or real(texts, params))
    clean = make_root(tmp_path / "clean", after, runtime={"doc_cache": None})
    run(clean, "signals")
    assert len(computed) == 122  # no cache: everything
    computed.clear()
    root = make_root(tmp_path / "refresh", after)  # the corpus, refreshed (cache kept)
    run(root, "signals")
    assert sorted(computed) == sorted([texts[50] + " Changed.", *texts[100:], texts[101]])
    assert file_bytes(root / "data/signals") == file_bytes(clean / "data/signals")
    assert (root / "reports/signals/metrics.json").read_bytes() == (
        clean / "reports/signals/metrics.json").read_bytes()

    # a new shard arrives: the unchanged one is copied from the shard cache, not even read
    extra = pa.Table.from_pylist([row(t, f"x{i}") for i, t in enumerate(docstrings(10)[120:130])],
                                 schema=SCHEMA)
    for project in (root, clean):
        pq.write_table(extra, project / "data/ingest/corpus/part-00001.parquet", compression="zstd")
    run(clean, "signals")
    read = []
    real_unit = stages.signals._unit
    monkeypatch.setattr(stages.signals, "_unit",
                        lambda unit, **kw: read.append(unit.path.name) or real_unit(unit, **kw))
    run(root, "signals")
    assert read == ["part-00001.parquet"]
    assert file_bytes(root / "data/signals") == file_bytes(clean / "data/signals")
    assert (root / "reports/signals/metrics.json").read_bytes() == (
        clean / "reports/signals/metrics.json").read_bytes()


@toxicity.register("test-exclamations")
class Exclamations:
    """A stand-in for a model: share of sentences that end with '!'."""

    def score(self, batch: toxicity.Batch) -> np.ndarray:
        return np.array([t.count("!") / max(1, t.count(".") + t.count("!")) for t in batch.texts])


def test_toxicity_classifier_is_pluggable_by_name(tmp_path):
    texts = ["Calm text here. Nothing loud.", "Loud! Very loud! Stop."]
    root = make_root(tmp_path, [row(t, str(i)) for i, t in enumerate(texts)],
                     signals={"toxicity_classifier": "test-exclamations"})
    run(root, "signals")
    scores = pq.read_table(root / "data/signals/part-00000.parquet")["toxicity"].to_pylist()
    assert scores == [0.0, pytest.approx(2 / 3)]
    with pytest.raises(ValueError, match="unknown classifier"):
        Params(toxicity_classifier="no-such-model")
    root2 = make_root(tmp_path / "bad", [row("x", "0")], signals={"toxicity_classifier": "nope"})
    with pytest.raises(ParamsError, match="toxicity_classifier"):
        run(root2, "signals")


def _reference_c4_and_line_counts(text: str, short: int) -> tuple[int, ...]:
    """C4 line rules and FineWeb/code line counts, one line at a time with no shortcuts."""
    import re

    from stages.signals.heuristics import C4_END, C4_POLICY, TERMINAL

    citation = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
    sentence_end = re.compile(r"[.!?]+['\")\]]*(?=\s+[\"'(\[]?[A-Z0-9]|\s*$)")
    kept = sentences = js = policy = lorem = curly = 0
    for line in text.splitlines():
        line = line.strip()
        words = line.split()
        if len(line) > 1000 and any(len(w) > 1000 for w in words):
            continue
        line = citation.sub("", line)
        if not line.endswith(C4_END) or line.endswith("...") or len(words) < 3:
            continue
        low = line.lower()
        lorem |= "lorem ipsum" in low
        if "javascript" in low:
            js += 1
            continue
        curly |= "{" in line
        if any(p in low for p in C4_POLICY):
            policy += 1
            continue
        kept += 1
        sentences += max(1, len(sentence_end.findall(line)))
    fw = [line for line in text.split("\n") if line.strip()]
    lines = text.splitlines()
    return (kept, sentences, js, policy, int(lorem), int(curly),
            sum(1 for line in fw if line.endswith(TERMINAL)),
            sum(1 for line in fw if len(line) <= short),
            max((len(line) for line in lines), default=0), sum(len(line) for line in lines))


def test_line_counts_shortcuts_match_a_plain_reference():
    """The per-line shortcuts (lines that cannot pass C4's end test skip it) change nothing."""
    from stages.signals.heuristics import LINE_COUNTS, line_counts

    crafted = [
        "A line ending in a citation, then stripped of it. [1]\nShort one. [edit]\nno end",
        "Two words. [citation needed]\nThree words here [2]\nIt ends with javascript here.",
        "We use cookies on this site, see our privacy policy.\nSee {braces} in this line.",
        "Lorem ipsum dolor sit amet.\n" + "x" * 1200 + " end.\n" + "y " * 600 + "z.",
        "", "\n\n", "only [brackets] inside, no end", EXPLANATION, CODE,
    ]
    fields = ("c4_kept_lines", "c4_sentences", "c4_javascript_lines", "c4_policy_lines",
              "c4_lorem_ipsum", "c4_curly_bracket", "fw_punct_lines", "fw_short_lines",
              "max_line_length", "line_chars")
    at = [LINE_COUNTS.index(f) for f in fields]
    for text in crafted + list(docstrings()[:300]) + list(code_chunks()[:100]):
        got = line_counts(text, 30)
        assert tuple(got[i] for i in at) == _reference_c4_and_line_counts(text, 30), text[:80]


def test_textbook_code_explained_needs_code_and_two_sentences():
    prose = "It adds numbers. It returns the sum. It is fast."
    code = "\n>>> add(1, 2)\n3\n"
    scores = signals(prose + code, "It adds numbers." + code, prose, code)["textbook_score"]
    # only the first has code beside two sentences: +0.10 over the one-sentence variant
    assert scores[0] > scores[1] and scores[0] - scores[2] >= 0.1 - 1e-9
