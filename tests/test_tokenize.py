"""Tokenize: the tokenizer loads with AutoTokenizer and round-trips any text, runs are
byte-identical, packing accounts for every token, splits are disjoint by document, sequence
weights follow the SoftDedup weights, and the held-out eval split carries its byte count."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from stages import registry
from stages.runner import run_stage
from stages.tokenize import SPECIALS, TokenizerTrainingError, is_validation
from stages.tokenize.pack import open_split
from tests.curation_helpers import REPO, SCHEMA, code_chunks, docstrings, file_bytes, row

SEQ_LEN = 64
PARAMS = {"vocab_size": 1000, "seq_len": SEQ_LEN, "val_fraction": 0.15}
NON_ASCII = "naïve café — Größe 東京タワー 🚀\n\tλx: x² ≠ ∞  “quoted”"
SPLITS = ("train", "validation", "eval")


def _make_root(root, tokenize: dict):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    keep = {k: params[k] for k in ("base", "runtime", "orchestration")}
    keep["runtime"] = {**keep["runtime"], "workers": 1, "progress": False}
    keep["tokenize"] = {**params["tokenize"], **tokenize}
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(keep, sort_keys=False))
    rng = np.random.default_rng(3)
    docs = [row(t, f"prose{i}") for i, t in enumerate(docstrings(30)[:160])]
    docs += [row(t, f"code{i}", "code") for i, t in enumerate(code_chunks()[:40])]
    docs.append(row("", "empty"))  # an empty document still ends in EOS
    weights = rng.uniform(0.2, 5.0, len(docs))
    weights *= len(docs) / weights.sum()
    table = pa.Table.from_pylist(docs, schema=SCHEMA).append_column("weight", pa.array(weights))
    for name in ("mix", "dedup"):  # the default corpus (mix) and the deduped one alike
        corpus = root / f"data/{name}/corpus"
        corpus.mkdir(parents=True)
        half = table.num_rows // 2  # two shards, like a multi-shard corpus
        pq.write_table(table.slice(0, half), corpus / "part-00000.parquet", row_group_size=50)
        pq.write_table(table.slice(half), corpus / "part-00001.parquet", row_group_size=50)
    unweighted = root / "data/filter/corpus"  # the filtered corpus: no SoftDedup weights
    unweighted.mkdir(parents=True)
    pq.write_table(table.drop(["weight"]), unweighted / "part-00000.parquet")
    held = [row(t, f"held{i}") for i, t in enumerate(docstrings(30)[160:190])]
    held.append(row(NON_ASCII, "held-unicode"))
    (root / "data/ingest/heldout").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(held, schema=SCHEMA),
                   root / "data/ingest/heldout/part-00000.parquet")
    return root, table, held


def _run(root) -> dict:
    saved = registry.STAGES
    registry.STAGES = tuple(s for s in saved if s.name == "tokenize")
    try:
        return run_stage("tokenize", root)
    finally:
        registry.STAGES = saved


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root, table, held = _make_root(tmp_path_factory.mktemp("tok") / "a", PARAMS)
    metrics = _run(root)
    return {"root": root, "metrics": metrics, "corpus": table.to_pylist(), "held": held}


def test_autotokenizer_loads_and_round_trips(built):
    from transformers import AutoTokenizer

    path = built["root"] / "data/tokenize/tokenizer"
    assert (path / "tokenizer.model").is_file()  # llama.cpp's converter: the SentencePiece path
    tok = AutoTokenizer.from_pretrained(str(path))
    assert len(tok) == built["metrics"]["vocab_size"] == PARAMS["vocab_size"]
    for key, (i, piece) in SPECIALS.items():
        assert getattr(tok, f"{key}_token") == piece and getattr(tok, f"{key}_token_id") == i
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(path / "tokenizer.model"))
    ascii_text = "def area(r):\n    return 3.14159 * r ** 2  # circle\n\n  Two  spaces."
    for text in (ascii_text, NON_ASCII, *(d["text"] for d in built["held"][:10])):
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
        assert ids == sp.encode(text)  # the packed ids are exactly what the HF tokenizer gives
        assert tok.encode(text) == ids  # no BOS/EOS added: the packed stream has none inside docs
    pieces = tok.convert_ids_to_tokens(tok.encode("東", add_special_tokens=False))
    assert pieces == ["<0xE6>", "<0x9D>", "<0xB1>"]  # byte fallback, never <unk>


def _stream(sp, docs: list[dict]) -> list[int]:
    out: list[int] = []
    for d in docs:
        out += sp.encode(d["text"]) + [SPECIALS["eos"][0]]
    return out


def test_packing_accounts_for_every_token(built):
    import sentencepiece as spm

    root, m = built["root"], built["metrics"]
    model = root / "data/tokenize/tokenizer/tokenizer.model"
    sp = spm.SentencePieceProcessor(model_file=str(model))
    val = {d["doc_id"] for d in built["corpus"]
           if is_validation(d["doc_id"], 0, PARAMS["val_fraction"])}
    expected = {"train": [d for d in built["corpus"] if d["doc_id"] not in val],
                "validation": [d for d in built["corpus"] if d["doc_id"] in val],
                "eval": built["held"]}
    for split in SPLITS:
        index, tokens, _ = open_split(root / "data/tokenize" / split)
        assert tokens.dtype == np.uint16 and index["dtype"] == "uint16"
        assert tokens.shape == (index["sequences"], SEQ_LEN) == tuple(index["shape"])
        assert index["sequences"] * SEQ_LEN == index["tokens"] + index["pad_tokens"]
        assert 0 <= index["pad_tokens"] < SEQ_LEN
        flat = np.asarray(tokens).reshape(-1)
        stream = _stream(sp, expected[split])
        assert len(stream) == index["tokens"]
        assert flat[: len(stream)].tolist() == stream  # every document, in order, EOS after each
        assert (flat[len(stream):] == SPECIALS["pad"][0]).all()
        docs = pq.read_table(root / "data/tokenize" / split / "docs.parquet").to_pydict()
        assert docs["doc_id"] == [d["doc_id"] for d in expected[split]]
        assert sum(docs["n_tokens"]) == index["tokens"]
        assert docs["token_start"] == np.cumsum([0, *docs["n_tokens"][:-1]]).tolist()
        assert m["splits"][split]["tokens"] == index["tokens"]
        assert m["splits"][split]["docs"] == len(expected[split]) == index["docs"]
    assert m["splits"]["train"]["docs"] + m["splits"]["validation"]["docs"] == len(built["corpus"])
    for check in registry.stage("tokenize").checks:
        assert check.test(m), check.name


def test_split_is_by_document(built):
    root = built["root"] / "data/tokenize"
    ids = {s: pq.read_table(root / s / "docs.parquet")["doc_id"].to_pylist() for s in SPLITS}
    train, val = set(ids["train"]), set(ids["validation"])
    assert val and train and not train & val
    assert train | val == {d["doc_id"] for d in built["corpus"]}
    assert set(ids["eval"]) == {d["doc_id"] for d in built["held"]}


def test_weights_align_with_sequences(built):
    root = built["root"] / "data/tokenize"
    for split in ("train", "validation"):
        index, tokens, weights = open_split(root / split)
        assert weights.dtype == np.float32 and weights.shape == (index["sequences"],)
        assert np.isfinite(weights).all() and (weights > 0).all()
        docs = pq.read_table(root / split / "docs.parquet").to_pydict()
        per_token = np.repeat(docs["weight"], docs["n_tokens"])
        per_token = np.concatenate([per_token, np.full(index["pad_tokens"], np.nan)])
        expected = np.nanmean(per_token.reshape(-1, SEQ_LEN), axis=1)
        np.testing.assert_allclose(weights, expected, rtol=1e-6)
    by_id = {d["doc_id"]: d["weight"] for d in built["corpus"]}
    train = pq.read_table(root / "train/docs.parquet").to_pydict()
    assert train["weight"] == [by_id[i] for i in train["doc_id"]]
    assert len(set(np.round(open_split(root / "train")[2], 4))) > 1  # weights really vary


def test_eval_split_has_byte_count(built):
    index, _, weights = open_split(built["root"] / "data/tokenize/eval")
    assert index["bytes"] == sum(len(d["text"].encode("utf-8")) for d in built["held"])
    assert index["bytes"] > sum(len(d["text"]) for d in built["held"])  # non-ASCII counted as bytes
    assert index["source"] == "data/ingest/heldout" and (weights == 1).all()
    m = built["metrics"]["splits"]["eval"]
    assert m["bytes"] == index["bytes"]
    assert m["bytes_per_token"] == pytest.approx(index["bytes"] / index["text_tokens"], rel=1e-5)


def test_deterministic(built, tmp_path):
    root, _, _ = _make_root(tmp_path / "b", PARAMS)
    assert _run(root) == built["metrics"]
    first = file_bytes(built["root"] / "data/tokenize")
    assert file_bytes(root / "data/tokenize") == first
    assert "tokenizer/tokenizer.model" in first and "tokenizer/tokenizer.json" in first


def test_too_large_vocab_is_a_clear_error(built, tmp_path):
    root = tmp_path / "c"
    for out in ("mix", "dedup", "ingest", "filter"):
        shutil.copytree(built["root"] / "data" / out, root / "data" / out)
    params = yaml.safe_load((built["root"] / "params.yaml").read_text())
    params["tokenize"]["vocab_size"] = 200_000
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(TokenizerTrainingError, match=r"lower tokenize.vocab_size.*"):
        _run(root)
    assert not (root / "data/tokenize").exists()
    assert not list((root / "data").glob(".tokenize*"))


def test_corpus_param_packs_an_earlier_curation_step_with_unit_weights(tmp_path, built):
    root, _, _ = _make_root(tmp_path / "f", {**PARAMS, "corpus": "filter"})
    metrics = _run(root)
    _, _, weights = open_split(root / "data/tokenize/train")
    assert np.all(weights == 1.0)
    assert metrics["splits"]["train"]["tokens"] == built["metrics"]["splits"]["train"]["tokens"]
