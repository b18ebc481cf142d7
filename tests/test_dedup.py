"""Dedup against ground truth: injected exact and near duplicates at known Jaccard, chains,
decontamination and SoftDedup's ranking of template text below unique text."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.dedup import Params
from tests.curation_helpers import (
    SCHEMA,
    distinct_docstrings,
    file_bytes,
    jaccard,
    make_root,
    mutate,
    read_dir,
    row,
    run,
    set_params,
)

FAST_LM = {"softdedup": {"buckets_log2": 16}}
BOILERPLATE = [
    "Sign up for our newsletter to get the latest deals delivered to your inbox.",
    "Free shipping on all orders over fifty dollars within the continental United States.",
    "Click here to read our terms of service and the full return policy for this store.",
    "Follow us on social media for exclusive offers and early access to new arrivals.",
    "Your satisfaction is guaranteed or your money back within thirty days of purchase.",
    "Contact our friendly support team any time if you have questions about your order.",
    "Add this item to your cart now while supplies last and enjoy great savings today.",
    "Customers who bought this product also bought the following related products.",
    "We use secure payment processing to keep your personal information safe and private.",
    "Gift cards are available in any amount and never expire so they make a perfect present.",
    "Join our rewards program and earn points on every purchase you make in our store.",
    "Prices and availability are subject to change without notice at any time.",
]


@pytest.fixture(scope="module")
def truth(tmp_path_factory):
    """100 unique docstrings, 10 exact, 25 high-similarity and 25 low-similarity pairs."""
    rng = np.random.default_rng(7)
    base = distinct_docstrings(160, 80)
    pairs = {"exact": [], "high": [], "low": []}
    rows = [row(t, f"unique{i}") for i, t in enumerate(base[:100])]
    for kind, sources, make in (
        ("exact", base[100:110], lambda t: t.upper()),
        ("high", base[110:135], lambda t: mutate(t, 0.005, rng)),
        ("low", base[135:160], lambda t: mutate(t, 0.12, rng)),
    ):
        for i, text in enumerate(sources):
            a, b = row(text, f"{kind}{i}a"), row(make(text), f"{kind}{i}b")
            pairs[kind].append((a["doc_id"], b["doc_id"], jaccard(a["text"], b["text"])))
            rows += [a, b]
    rows = [rows[i] for i in rng.permutation(len(rows))]
    root = make_root(tmp_path_factory.mktemp("dedup"), rows, into="filter", dedup=FAST_LM)
    empty = pa.Table.from_pylist([], schema=SCHEMA)  # a shard that filtering emptied
    pq.write_table(empty, root / "data/filter/corpus/part-00099.parquet")
    (metrics,) = run(root, "dedup")
    out = read_dir(root / "data/dedup/corpus")
    return {"pairs": pairs, "metrics": metrics, "out": out, "root": root, "rows": rows,
            "unique": [r["doc_id"] for r in rows if r["path"].startswith("unique")]}


def test_injected_similarities_are_where_intended(truth):
    assert min(j for *_, j in truth["pairs"]["high"]) >= 0.85
    assert max(j for *_, j in truth["pairs"]["low"]) <= 0.55


def test_recall_and_precision_of_exact_and_near_duplicates(truth):
    kept = set(truth["out"]["doc_id"].to_pylist())
    pairs, m = truth["pairs"], truth["metrics"]
    for a, b, _ in pairs["exact"]:  # equal length (upper-cased): the smaller doc_id is kept
        assert (a in kept) != (b in kept) and min(a, b) in kept
    found = [(a in kept) != (b in kept) for a, b, _ in pairs["high"]]
    assert sum(found) / len(found) >= 0.95  # recall at Jaccard >= 0.85
    assert all(a in kept and b in kept for a, b, _ in pairs["low"])  # no merge at Jaccard <= 0.55
    assert set(truth["unique"]) <= kept
    assert m["exact_duplicates_removed"] == 10
    assert m["near_duplicates_removed"] == sum(found)  # precision: nothing else was merged
    assert m["near_clusters"] == sum(found) and m["near_cluster_max_size"] == 2
    removed = m["decontaminated"] + m["exact_duplicates_removed"] + m["near_duplicates_removed"]
    assert m["docs_in"] == len(truth["rows"]) == removed + m["docs_kept"]


def test_output_weights_and_report(truth):
    out, m = truth["out"], truth["metrics"]
    weights = out["weight"].to_numpy()
    assert out.schema.field("weight").type == "double" and out.num_rows == m["docs_kept"]
    assert weights.sum() == pytest.approx(out.num_rows) and (weights > 0).all()
    assert weights.max() / weights.min() <= 100 + 1e-9  # clip: 0.1x .. 10x the median
    root = truth["root"]
    examples = json.loads((root / "data/dedup/examples.json").read_text())
    kept = set(out["doc_id"].to_pylist())
    assert len(examples["exact"]) == 5 and len(examples["near"]) == 5
    for group in examples["exact"] + examples["near"]:
        assert group["kept"]["doc_id"] in kept and group["size"] == 2
        assert all(r["doc_id"] not in kept and r["text"] for r in group["removed"])
    assert all(r["jaccard_estimate"] >= 0.7 for g in examples["near"] for r in g["removed"])
    assert examples["group_sizes"] == {"exact": {"2": 10}, "near": {"2": m["near_clusters"]}}
    assert (root / "reports/dedup/weights.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (root / "reports/dedup/lsh_s_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lsh = m["lsh"]  # the default shape: a pair at the 0.7 threshold is a candidate >= 95%
    assert (lsh["bands"], lsh["rows"]) == (22, 5) and lsh["candidate_probability"]["0.7"] >= 0.95
    assert pq.read_table(root / "data/dedup/corpus/part-00099.parquet").num_rows == 0


def _replace_block(words: list[str], start: int, size: int, tag: str) -> list[str]:
    return words[:start] + [f"{tag}{i}" for i in range(size)] + words[start + size :]


def test_chains_collapse_to_one_kept_document(tmp_path):
    words = " ".join(distinct_docstrings(3, 200)[0].split()[:200]).split()
    a = " ".join(words)
    b = " ".join(_replace_block(words, 20, 24, "bee"))
    c = " ".join(_replace_block(_replace_block(words, 20, 24, "bee"), 150, 24, "sea"))
    assert jaccard(a, b) >= 0.75 and jaccard(b, c) >= 0.75 and jaccard(a, c) < 0.68
    others = [row(t, f"other{i}") for i, t in enumerate(distinct_docstrings(40, 60)[10:40])]
    chain = [row(a, "chain-a"), row(b, "chain-b"), row(c, "chain-c")]
    root = make_root(tmp_path, others[:15] + chain + others[15:], into="filter",
                     dedup={**FAST_LM, "num_perm": 128, "bands": 32, "rows": 4})
    (m,) = run(root, "dedup")
    kept = set(read_dir(root / "data/dedup/corpus")["doc_id"].to_pylist())
    survivors = [r for r in chain if r["doc_id"] in kept]
    assert len(survivors) == 1 and m["near_cluster_max_size"] == 3
    longest = max(len(r["text"]) for r in chain)
    assert survivors[0] == min((r for r in chain if len(r["text"]) == longest),
                               key=lambda r: r["doc_id"])


def test_decontamination_removes_docs_sharing_a_13gram_with_heldout(tmp_path):
    docs = list(distinct_docstrings(60, 50))
    held_text = next(d for d in docs if all(w.strip(".,").isalpha() for w in d.split()[:30]))
    docs.remove(held_text)
    held = held_text.split()
    x = docs[0] + "\n" + " ".join(held[10:23])  # 13 held-out words in a row
    y = docs[1] + "\n" + " ".join(held[10:22])  # only 12
    corpus = [row(x, "x"), row(y, "y")] + [row(t, f"d{i}") for i, t in enumerate(docs[2:])]
    root = make_root(tmp_path, corpus, heldout=[row(held_text, "held")], into="filter",
                     dedup=FAST_LM)
    (m,) = run(root, "dedup")
    kept = set(read_dir(root / "data/dedup/corpus")["doc_id"].to_pylist())
    assert row(x, "x")["doc_id"] not in kept and row(y, "y")["doc_id"] in kept
    assert m["decontaminated"] == 1 and m["docs_kept"] == len(corpus) - 1
    examples = json.loads((root / "data/dedup/examples.json").read_text())
    assert [e["doc_id"] for e in examples["decontaminated"]] == [row(x, "x")["doc_id"]]


def test_softdedup_ranks_template_text_below_unique_text(tmp_path):
    rng = np.random.default_rng(3)
    unique = [row(t, f"unique{i}") for i, t in enumerate(distinct_docstrings(60, 60))]
    templates = [
        row(" ".join(BOILERPLATE[j] for j in rng.choice(12, 6, replace=False))
            + f" Your order number is {rng.integers(10**6)}.", f"template{i}")
        for i in range(30)
    ]
    root = make_root(tmp_path, unique + templates, into="filter", dedup=FAST_LM)
    run(root, "dedup")
    out = read_dir(root / "data/dedup/corpus")
    weight = dict(zip(out["path"].to_pylist(), out["weight"].to_pylist(), strict=True))
    template_w = [w for p, w in weight.items() if p.startswith("template")]
    unique_w = [w for p, w in weight.items() if p.startswith("unique")]
    assert len(template_w) >= 10 and len(unique_w) == 60
    assert max(template_w) < np.median(unique_w)
    assert np.median(template_w) < 0.5 * np.median(unique_w)


def test_dedup_is_deterministic_across_runs_and_workers(truth):
    root = truth["root"]
    set_params(root, dedup=Params().model_dump(mode="json"))  # the default 4M-bucket model
    first = run(root, "dedup")
    outputs = file_bytes(root / "data/dedup"), (root / "reports/dedup/weights.png").read_bytes()
    set_params(root, runtime={"workers": 2})
    assert run(root, "dedup") == first
    assert (file_bytes(root / "data/dedup"), (root / "reports/dedup/weights.png").read_bytes()
            ) == outputs



def test_refresh_scans_only_new_or_changed_texts(tmp_path, monkeypatch):
    """After a refresh added and changed documents, only their signatures and word hashes are
    computed (the rest come from the document cache) and the output is a clean run's, byte for
    byte; a changed MinHash setting starts over."""
    import stages.dedup

    texts = distinct_docstrings(70, 30)
    before = [row(t, f"d{i}") for i, t in enumerate(texts[:60])]
    after = before[:20] + [row(texts[20] + " Changed.", "d20")] + before[21:] + [
        row(t, f"d{i}") for i, t in enumerate(texts[60:], start=60)] + [row(texts[5], "copy")]
    root = make_root(tmp_path / "refresh", before, into="filter", dedup=FAST_LM)
    run(root, "dedup")
    computed = []
    real = stages.dedup.text_features
    monkeypatch.setattr(stages.dedup, "text_features", lambda texts, params, seed: computed.extend(
        texts) or real(texts, params, seed))
    clean = make_root(tmp_path / "clean", after, into="filter", dedup=FAST_LM,
                      runtime={"doc_cache": None})
    run(clean, "dedup")
    assert len(computed) == 71
    computed.clear()
    root = make_root(tmp_path / "refresh", after, into="filter", dedup=FAST_LM)
    (metrics,) = run(root, "dedup")
    assert sorted(computed) == sorted([texts[20] + " Changed.", *texts[60:]])
    assert metrics["exact_duplicates_removed"] == 1  # the copy of a cached text
    assert file_bytes(root / "data/dedup") == file_bytes(clean / "data/dedup")
    assert (root / "reports/dedup/metrics.json").read_bytes() == (
        clean / "reports/dedup/metrics.json").read_bytes()
    computed.clear()
    set_params(root, dedup={"num_perm": 96})
    run(root, "dedup")
    assert set(computed) == {r["text"] for r in after}  # all 70 distinct texts again

def test_params_reject_bands_that_do_not_fit():
    with pytest.raises(ValueError, match="exceeds num_perm"):
        Params(num_perm=64, bands=14, rows=8)
    with pytest.raises(ValueError, match="both bands and rows, or neither"):
        Params(bands=14)
    with pytest.raises(ValueError, match="raise dedup.num_perm or dedup.false_negative_rate"):
        Params(num_perm=4, jaccard_threshold=0.3, false_negative_rate=0.01)


def _random_words(rng: np.random.Generator, n: int) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return ["".join(rng.choice(letters, 7)) for _ in range(n)]


def test_near_duplicate_recall_and_precision_across_jaccard():
    """Planted pairs whose true shingle Jaccard spans 0.45-0.98, with the default params: a pair
    at >= 0.8 is found >= 95% of the time, none at <= 0.6 is ever merged, and a pair is merged
    exactly when it is a candidate at or above the threshold (true Jaccard, not the estimate)."""
    from functools import partial

    from stages.dedup import duplicates, scan_texts, shingle_sets
    from stages.dedup.minhash import band_keys

    rng = np.random.default_rng(11)
    texts = []
    for _ in range(300):
        words = _random_words(rng, 200)
        twin = list(words)
        for i in rng.choice(200, size=int(rng.integers(1, 17)), replace=False):  # not exact
            twin[i] = _random_words(rng, 1)[0]
        texts += [" ".join(words), " ".join(twin)]
    params = Params()
    scanned = scan_texts(texts, np.zeros(0, np.uint64), params, seed=0)
    shingles = partial(shingle_sets, scanned["h"], scanned["counts"], n=params.shingle_size)
    n = len(texts)
    keys = band_keys(scanned["sig"], *params.lsh_shape())
    _, near_rep, lsh = duplicates(np.ones(n, bool), scanned["exact"], lambda band: keys[band],
                                  scanned["shingled"], np.arange(n), params, shingles)
    sets = shingles(np.arange(n))
    true = np.array([len(np.intersect1d(sets[i], sets[i + 1])) / len(np.union1d(sets[i],
                     sets[i + 1])) for i in range(0, n, 2)])
    merged = near_rep[1::2] == np.arange(0, n, 2)
    assert true.min() <= 0.5 and true.max() >= 0.97 and (true >= 0.8).sum() >= 60
    assert merged[true >= 0.8].mean() >= 0.95
    assert not merged[true <= 0.6].any()
    assert not merged[true < params.jaccard_threshold].any()
    assert (near_rep[0::2] == np.arange(0, n, 2)).all()  # no pair merged into another
    assert lsh["verified_pairs"] == merged.sum()


@pytest.mark.parametrize("keep", ["first", "longest"])
def test_keep_chooses_the_first_or_the_longest_member(tmp_path, keep):
    """`first` keeps the earliest member in input order (shard, then row); `longest` the longest.

    In each group the earliest member is the shorter one and sits in an earlier shard."""
    docs = distinct_docstrings(212, 40)
    exact_text, near_text = docs[0], docs[1]
    longer_near = near_text + " " + " ".join(docs[2].split()[:4])
    assert jaccard(near_text, longer_near) >= 0.85
    groups = {
        "exact": (row(exact_text, "exact-early"), row(exact_text.replace(" ", "   "),
                                                       "exact-late")),
        "near": (row(near_text, "near-early"), row(longer_near, "near-late")),
    }
    others = [row(t, f"other{i}") for i, t in enumerate(docs[3:])]
    # 2 shards of 200 rows: the early members in shard 0, the late ones in shard 1
    corpus = (others[:5] + [groups["exact"][0]] + others[5:10] + [groups["near"][0]]
              + others[10:205] + [groups["near"][1], groups["exact"][1]] + others[205:])
    assert len(corpus) > 202
    root = make_root(tmp_path, corpus, into="filter", dedup={**FAST_LM, "keep": keep})
    (m,) = run(root, "dedup")
    assert m["exact_duplicates_removed"] == 1 and m["near_duplicates_removed"] == 1
    kept = set(read_dir(root / "data/dedup/corpus")["doc_id"].to_pylist())
    for early, late in groups.values():
        assert len(late["text"]) > len(early["text"])
        survivor = early if keep == "first" else late
        assert survivor["doc_id"] in kept
        assert ({early["doc_id"], late["doc_id"]} - {survivor["doc_id"]}).isdisjoint(kept)


def test_params_keep_defaults_to_longest_and_rejects_others():
    assert Params().keep == "longest"
    with pytest.raises(ValueError):
        Params(keep="last")


def test_pairs_are_verified_in_bounded_runs_with_the_same_jaccards():
    from stages.dedup import pair_jaccards

    rng = np.random.default_rng(0)
    sets = [np.unique(rng.integers(0, 60, rng.integers(1, 40))).astype(np.uint64)
            for _ in range(50)]
    a = rng.integers(0, 49, 200)
    b = np.minimum(49, a + 1 + rng.integers(0, 10, 200))
    calls = []

    def sets_of(docs):
        calls.append(len(docs))
        return [sets[d] for d in docs]

    whole = pair_jaccards(a, b, sets_of, 10**6)
    assert calls == [len(np.unique(np.r_[a, b]))]
    calls.clear()
    bounded = pair_jaccards(a, b, sets_of, 8)  # 4 pairs a run: at most 8 documents' sets held
    assert np.array_equal(bounded, whole) and max(calls) <= 8 and len(calls) == 50
    truth = [len(np.intersect1d(sets[x], sets[y])) / len(np.union1d(sets[x], sets[y]))
             for x, y in zip(a, b, strict=True)]
    assert np.allclose(whole, truth)
