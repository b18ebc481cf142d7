"""Documents to packed token splits with the pipeline's own tokenizer.

For training stages that choose their own data (a quality-selected mix, a domain corpus):
`read_docs` streams rows of a curated corpus's parquet shards, `pack` encodes documents with the
SentencePiece model of `data/tokenize/tokenizer` and packs them exactly as `tokenize` does (EOS
after each document, PAD-filled last sequence, one weight per sequence, UTF-8 bytes for bits per
byte), so `stages.train.batches` reads the result like tokenize's own splits.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow.parquet as pq

from stages.tokenize import SPECIALS
from stages.tokenize.pack import PackWriter, token_dtype

BATCH = 256  # documents encoded per call


def read_docs(directory: Path, columns: list[str]) -> Iterator[dict]:
    """Rows (dicts of `columns`) of every `part-*.parquet` shard, in shard order."""
    for shard in sorted(directory.glob("part-*.parquet")):
        for batch in pq.ParquetFile(shard).iter_batches(batch_size=BATCH, columns=columns):
            yield from batch.to_pylist()


def load_tokenizer(tokenizer_dir: Path):
    """The SentencePiece processor of a tokenizer saved by `tokenize` (its `tokenizer.model`)."""
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(tokenizer_dir / "tokenizer.model"))


def pack(docs: Iterable[tuple[str, str, float]], sp, seq_len: int, out: Path,
         extra: dict | None = None) -> dict:
    """Encode (doc_id, text, weight) documents and pack them into the split directory `out`;
    returns its index."""
    writer = PackWriter(out, seq_len, token_dtype(sp.get_piece_size()), SPECIALS["eos"][0],
                        SPECIALS["pad"][0])
    chunk: list[tuple[str, str, float]] = []

    def flush() -> None:
        for (doc_id, text, weight), ids in zip(chunk, sp.encode([t for _, t, _ in chunk]),
                                               strict=True):
            writer.add(doc_id, ids, len(text.encode("utf-8")), float(weight))
        chunk.clear()

    for doc in docs:
        chunk.append(doc)
        if len(chunk) == BATCH:
            flush()
    flush()
    return writer.close(extra or {})
