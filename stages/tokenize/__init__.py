"""Tokenize: a SentencePiece tokenizer trained on the curated corpus, and packed token shards.

1. A SentencePiece model (`model_type` BPE or unigram, `vocab_size`, byte fallback, identity
   normalisation so every text round-trips exactly, whitespace-only pieces allowed for code) is
   trained on the texts of the corpus that `corpus` names (default `data/mix/corpus`, the curated
   corpus augmented with synthetic documents; `dedup`, `filter` and `raw` take earlier curation
   steps, for data ablations), in corpus order, split at line
   boundaries into chunks of at most `CHUNK_CHARS` (all of them, or the `max_sentences` with the
   lowest seeded hashes). One thread, no shuffling, our own sampling: the same corpus and params
   give the same model bytes in every process.
   A vocabulary too large for the corpus is a clear error.
2. `data/tokenize/tokenizer/` holds it in Hugging Face format: `tokenizer.model` (so llama.cpp's
   converter takes its SentencePiece path), `tokenizer_config.json` (`LlamaTokenizer`; special
   tokens <unk>=0, <s>=1, </s>=2, <pad>=3; no BOS/EOS added by `encode`, matching the packed
   stream) and `tokenizer.json` (the converted fast tokenizer, so loading needs no conversion).
3. Every document is encoded and followed by EOS; the streams are packed into `seq_len`-token
   sequences (see `pack`): `train` and `validation` from that corpus, split by document
   (seeded hash of the doc id below `val_fraction`), each sequence carrying the token-weighted mean
   SoftDedup weight of its documents; `eval` from the held-out slice of ingest (weight 1), the
   text every run is evaluated on, with its UTF-8 byte count for bits per byte.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterator
from functools import cache, partial
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow.parquet as pq
from pydantic import Field, field_validator

from stages.params import StrictModel
from stages.textstats.shards import Unit, list_shards, units
from stages.tokenize.pack import PackWriter, token_dtype

CORPORA = {  # tokenize.corpus -> the documents trained on (ablations use the earlier ones)
    "mix": "data/mix/corpus",  # the deduped corpus + accepted synthetic documents
    "dedup": "data/dedup/corpus",  # filtered, deduplicated, decontaminated, SoftDedup-weighted
    "filter": "data/filter/corpus",  # quality-filtered only (weight 1)
    "raw": "data/ingest/corpus",  # as ingested (weight 1)
}
HELDOUT = "data/ingest/heldout"
OUT = "data/tokenize"
TOKENIZER = "data/tokenize/tokenizer"
SPECIALS = {"unk": (0, "<unk>"), "bos": (1, "<s>"), "eos": (2, "</s>"), "pad": (3, "<pad>")}
CHUNK_CHARS = 4096  # training "sentences": corpus text cut at line ends into chunks this long
BATCH_ROWS = 256  # documents encoded per batch


class Params(StrictModel):
    model_type: Literal["bpe", "unigram"] = Field("bpe", description="SentencePiece algorithm")
    vocab_size: int = Field(8192, ge=300, le=1 << 20,
                            description="pieces incl. 4 specials and 256 byte-fallback pieces")
    character_coverage: float = Field(0.9995, gt=0, le=1,
                                      description="chars covered as pieces; rarer ones as bytes")
    max_sentences: int = Field(0, ge=0, description="tokenizer training chunks, a seeded "
                               "sample; 0 = all (SentencePiece needs 0 or more than 100)")
    split_digits: bool = Field(True, description="every digit its own piece")
    seq_len: int = Field(512, ge=2, description="tokens per packed sequence")
    val_fraction: float = Field(0.02, ge=0, lt=1, description="documents held for validation")
    corpus: Literal[tuple(CORPORA)] = Field(  # type: ignore[valid-type]
        "mix", description="which curation step's documents to train on (data ablations)")

    @field_validator("max_sentences")
    @classmethod
    def _sample_size(cls, n: int) -> int:
        if 0 < n <= 100:
            raise ValueError("must be 0 (all) or more than 100")
        return n


def _batches(directory: Path, columns: list[str]) -> Iterator[dict[str, list]]:
    for shard in list_shards(directory):
        for batch in pq.ParquetFile(shard).iter_batches(batch_size=BATCH_ROWS, columns=columns):
            yield batch.to_pydict()


def _chunks(directory: Path) -> Iterator[str]:
    """The corpus text as training sentences: whole lines (newlines kept) up to CHUNK_CHARS."""
    for batch in _batches(directory, ["text"]):
        for text in batch["text"]:
            yield from _doc_chunks(text)


def _sampled_chunks(directory: Path, limit: int, seed: int) -> Iterator[str]:
    """At most `limit` chunks, in corpus order: those with the lowest seeded hashes of (doc id,
    chunk number). SentencePiece's own sampling is not reproducible across processes."""
    def keys() -> Iterator[tuple[int, str]]:
        for batch in _batches(directory, ["doc_id", "text"]):
            for doc_id, text in zip(batch["doc_id"], batch["text"], strict=True):
                for i, chunk in enumerate(_doc_chunks(text)):
                    digest = hashlib.blake2b(f"tokenize-spm:{seed}:{doc_id}:{i}".encode(),
                                             digest_size=8).digest()
                    yield int.from_bytes(digest, "big"), chunk

    if not limit:
        yield from _chunks(directory)
        return
    hashes = sorted(h for h, _ in keys())
    if len(hashes) <= limit:
        yield from _chunks(directory)
        return
    cutoff = hashes[limit - 1]
    yield from (chunk for h, chunk in keys() if h <= cutoff)


def _doc_chunks(text: str | None) -> Iterator[str]:
    """A document as whole lines (newlines kept) of at most CHUNK_CHARS in all."""
    buf = ""
    for line in (text or "").splitlines(keepends=True):
        while len(line) > CHUNK_CHARS:
            if buf:
                yield buf
                buf = ""
            yield line[:CHUNK_CHARS]
            line = line[CHUNK_CHARS:]
        if len(buf) + len(line) > CHUNK_CHARS:
            yield buf
            buf = ""
        buf += line
    if buf:
        yield buf


class TokenizerTrainingError(RuntimeError):
    """SentencePiece could not train the requested vocabulary on this corpus."""


def train_model(params: Params, corpus: Path, seed: int) -> bytes:
    import sentencepiece as spm

    if not any(True for _ in _chunks(corpus)):
        raise TokenizerTrainingError(f"{corpus}: no text to train a tokenizer on")
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)
    ids = {f"{k}_id": i for k, (i, _) in SPECIALS.items()}
    pieces = {f"{k}_piece": p for k, (_, p) in SPECIALS.items()}
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_sampled_chunks(corpus, params.max_sentences, seed),
            model_writer=model,
            model_type=params.model_type, vocab_size=params.vocab_size,
            character_coverage=params.character_coverage, byte_fallback=True,
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            add_dummy_prefix=False, allow_whitespace_only_pieces=True,
            split_digits=params.split_digits, max_sentence_length=4 * CHUNK_CHARS + 16,
            input_sentence_size=0, shuffle_input_sentence=False,
            hard_vocab_limit=True, num_threads=1, minloglevel=2, **ids, **pieces,
        )
    except RuntimeError as exc:
        limit = re.search(r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)",
                          str(exc))
        if limit is None:
            raise TokenizerTrainingError(f"tokenize: SentencePiece training failed: {exc}") from exc
        raise TokenizerTrainingError(
            f"tokenize: the corpus {corpus} is too small for a {params.model_type} vocabulary of "
            f"tokenize.vocab_size={params.vocab_size} pieces (SentencePiece can make at most "
            f"{limit.group(1)} from it): lower tokenize.vocab_size in params.yaml, or add text."
        ) from exc
    return model.getvalue()


def save_hf(model: bytes, directory: Path, seq_len: int) -> None:
    """tokenizer.model + tokenizer_config.json, then tokenizer.json converted from them."""
    from transformers import AutoTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.model").write_bytes(model)
    config = {
        "tokenizer_class": "LlamaTokenizer",
        **{f"{k}_token": p for k, (_, p) in SPECIALS.items()},
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "legacy": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": seq_len,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True)
                                                     + "\n")
    tok = AutoTokenizer.from_pretrained(str(directory))
    tok.backend_tokenizer.save(str(directory / "tokenizer.json"))


def is_validation(doc_id: str, seed: int, fraction: float) -> bool:
    digest = hashlib.blake2b(f"tokenize-val:{seed}:{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


@cache
def _processor(model: bytes):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=model)


def _encode_unit(unit: Unit, model: bytes, weighted: bool) -> list[tuple]:
    """A work unit's documents encoded: (doc_id, token ids, UTF-8 bytes, weight) in order."""
    sp, out = _processor(model), []
    for table in unit.read(["doc_id", "text"] + (["weight"] if weighted else [])):
        texts = [t or "" for t in table["text"].to_pylist()]
        weights = table["weight"].to_pylist() if weighted else [1.0] * len(texts)
        for doc_id, text, ids, weight in zip(table["doc_id"].to_pylist(), texts,
                                             sp.encode(texts), weights, strict=True):
            out.append((doc_id, np.asarray(ids, dtype=np.int32), len(text.encode("utf-8")),
                        1.0 if weight is None else float(weight)))
    return out


def _encode_split(model: bytes, source: Path, writers: dict[str, PackWriter], route, pool,
                  ctx, desc: str) -> None:
    """Encode a corpus on the executor's workers; pack here, in corpus order."""
    shards = list_shards(source)
    weighted = bool(shards) and "weight" in pq.read_schema(shards[0]).names
    work = units(shards)
    encoded = pool.map(partial(_encode_unit, model=model, weighted=weighted), work)
    for docs in ctx.progress(encoded, len(work), desc):
        for doc_id, ids, n_bytes, weight in docs:
            split = route(doc_id) if route is not None else "eval"
            writers[split].add(doc_id, ids, n_bytes, weight)


def run(params: Params, ctx) -> dict:
    import sentencepiece as spm

    corpus, heldout = ctx.dep(CORPORA[params.corpus]), ctx.dep(HELDOUT)
    seed = ctx.base.seed
    model = train_model(params, corpus, seed)
    sp = spm.SentencePieceProcessor(model_proto=model)
    ctx.log.info("tokenizer: %s, %d pieces", params.model_type, sp.get_piece_size())
    save_hf(model, ctx.out(TOKENIZER), params.seq_len)

    dtype = token_dtype(sp.get_piece_size())
    out = ctx.out(OUT)
    writers = {split: PackWriter(out / split, params.seq_len, dtype, SPECIALS["eos"][0],
                                 SPECIALS["pad"][0])
               for split in ("train", "validation", "eval")}

    val_ids: set[str] = set()
    if params.val_fraction > 0:
        ids = [i for b in _batches(corpus, ["doc_id"]) for i in b["doc_id"]]
        val_ids = {i for i in ids if is_validation(i, seed, params.val_fraction)}
        if not val_ids and len(ids) >= 2:  # a tiny corpus: the lowest hash, so it is not empty
            val_ids = {min(ids, key=lambda i: hashlib.blake2b(
                f"tokenize-val:{seed}:{i}".encode(), digest_size=8).digest())}

    def route(doc_id: str) -> str:
        return "validation" if doc_id in val_ids else "train"

    with ctx.executor() as pool:
        _encode_split(model, corpus, writers, route, pool, ctx, "tokenize corpus")
        _encode_split(model, heldout, writers, None, pool, ctx, "tokenize heldout")
    sources = {"train": CORPORA[params.corpus], "validation": CORPORA[params.corpus],
               "eval": HELDOUT}
    splits = {name: w.close({"split": name, "source": sources[name]})
              for name, w in writers.items()}
    summary_keys = ("docs", "tokens", "text_tokens", "pad_tokens", "sequences", "bytes",
                    "bytes_per_token")
    metrics = {
        "model_type": params.model_type,
        "vocab_size": sp.get_piece_size(),
        "byte_fallback_pieces": sum(sp.is_byte(i) for i in range(sp.get_piece_size())),
        "dtype": dtype.name,
        "seq_len": params.seq_len,
        "tokenizer_model_sha256": hashlib.sha256(model).hexdigest(),
        "splits": {name: {k: idx[k] for k in summary_keys} for name, idx in splits.items()},
    }
    (out / "manifest.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    ctx.log.info("tokenize: %s", ", ".join(f"{n} {s['docs']} docs / {s['tokens']} tokens / "
                                           f"{s['sequences']} seqs"
                                           for n, s in metrics["splits"].items()))
    return metrics
