"""Packing token streams into fixed-length sequences on disk, with a weight per sequence.

A split is a directory:
- `tokens.bin`: flat little-endian token ids, `sequences x seq_len` (`np.memmap` it with the dtype
  and shape of `index.json`). Documents follow each other, each ending in EOS; sequences cut the
  stream every `seq_len` tokens, so a document may span sequences. The last sequence is filled up
  with PAD (`pad_tokens` of them, never a real token: mask them out of the loss).
- `weights.bin`: float32, one per sequence: the token-weighted mean SoftDedup weight of the
  documents' tokens in it (PAD tokens do not count).
- `docs.parquet`: per document, in stream order: `doc_id`, `token_start` (offset in the flat
  stream), `n_tokens` (EOS included), `n_bytes` (UTF-8 bytes of its text) and `weight`.
- `index.json`: dtype, shape, seq_len, counts (docs, tokens, pad_tokens, bytes) and file names.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DOCS_SCHEMA = pa.schema([("doc_id", pa.string()), ("token_start", pa.int64()),
                         ("n_tokens", pa.int64()), ("n_bytes", pa.int64()),
                         ("weight", pa.float64())])


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


class PackWriter:
    """Appends documents to a split's token stream and writes whole sequences as they fill."""

    def __init__(self, directory: Path, seq_len: int, dtype: np.dtype, eos_id: int, pad_id: int):
        directory.mkdir(parents=True, exist_ok=True)
        self.dir, self.seq_len, self.dtype = directory, seq_len, dtype
        self.eos_id, self.pad_id = eos_id, pad_id
        self._tokens = open(directory / "tokens.bin", "wb")  # noqa: SIM115 (closed in close())
        self._buf: list[np.ndarray] = []  # pending tokens, fewer than seq_len in all after a flush
        self._wbuf: list[np.ndarray] = []  # their weights, one per token
        self._pending = 0
        self.weights: list[np.ndarray] = []
        self.docs: dict[str, list] = {name: [] for name in DOCS_SCHEMA.names}
        self.tokens = self.sequences = self.pad_tokens = self.bytes = 0

    def add(self, doc_id: str, ids: np.ndarray, n_bytes: int, weight: float) -> None:
        arr = np.append(np.asarray(ids, dtype=np.int64), self.eos_id)
        for name, value in zip(DOCS_SCHEMA.names, (doc_id, self.tokens, len(arr), n_bytes, weight),
                               strict=True):
            self.docs[name].append(value)
        self.tokens += len(arr)
        self.bytes += n_bytes
        self._buf.append(arr)
        self._wbuf.append(np.full(len(arr), weight, dtype=np.float64))
        self._pending += len(arr)
        if self._pending >= self.seq_len:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self._pending:
            return
        toks, wts = np.concatenate(self._buf), np.concatenate(self._wbuf)
        n_full = len(toks) // self.seq_len
        if final and len(toks) % self.seq_len:
            pad = self.seq_len - len(toks) % self.seq_len
            self.pad_tokens = pad
            toks = np.concatenate([toks, np.full(pad, self.pad_id, dtype=np.int64)])
            wts = np.concatenate([wts, np.full(pad, np.nan)])
            n_full += 1
        cut = n_full * self.seq_len
        seqs = toks[:cut].reshape(n_full, self.seq_len)
        self._tokens.write(seqs.astype(self.dtype).tobytes())
        self.weights.append(np.nanmean(wts[:cut].reshape(n_full, self.seq_len), axis=1))
        self.sequences += n_full
        rest, rest_w = toks[cut:], wts[cut:]
        self._buf, self._wbuf, self._pending = [rest], [rest_w], len(rest)

    def close(self, extra: dict) -> dict:
        self._flush(final=True)
        self._tokens.close()
        weights = np.concatenate([np.zeros(0), *self.weights]).astype("<f4")
        (self.dir / "weights.bin").write_bytes(weights.tobytes())
        pq.write_table(pa.table(self.docs, schema=DOCS_SCHEMA), self.dir / "docs.parquet",
                       compression="zstd")
        docs = len(self.docs["doc_id"])
        index = {
            "tokens_file": "tokens.bin",
            "dtype": self.dtype.name,
            "byteorder": "little",
            "shape": [self.sequences, self.seq_len],
            "seq_len": self.seq_len,
            "sequences": self.sequences,
            "docs": docs,
            "tokens": self.tokens,  # real tokens in the stream, one EOS per document included
            "text_tokens": self.tokens - docs,
            "pad_tokens": self.pad_tokens,
            "pad_id": self.pad_id,
            "eos_id": self.eos_id,
            "bytes": self.bytes,  # UTF-8 bytes of the split's texts: the bits-per-byte denominator
            "bytes_per_token": round(self.bytes / max(1, self.tokens - docs), 6),
            "weights_file": "weights.bin",
            "weights_dtype": "float32",
            "docs_file": "docs.parquet",
            **extra,
        }
        (self.dir / "index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        return index


def open_split(directory: Path) -> tuple[dict, np.memmap, np.ndarray]:
    """The index, the memory-mapped `sequences x seq_len` tokens and the weights of a split."""
    index = json.loads((directory / "index.json").read_text())
    shape = tuple(index["shape"])
    dtype = np.dtype(index["dtype"]).newbyteorder("<")
    if shape[0] == 0:
        tokens = np.zeros(shape, dtype=dtype)
    else:
        tokens = np.memmap(directory / index["tokens_file"], dtype=dtype, mode="r", shape=shape)
    weights = np.fromfile(directory / index["weights_file"], dtype="<f4")
    return index, tokens, weights
