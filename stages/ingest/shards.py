"""Doc ids, the held-out split, spilling, and the sharded Parquet output with its manifest.

Ingest streams: documents go to sorted spill runs on disk as they are read (`Spill`), only an
`Entry` per document (id, source, domain, length: ~0.8 KB measured) stays in memory for the
global decisions (per-source caps, the held-out split), and the output is a k-way merge of the
runs in doc-id order (`ShardedOutput`). Peak memory: one run of text plus the entries, whatever
the corpus size.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from stages.atomic import canonical_json

SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("domain", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("n_chars", pa.int64(), nullable=False),
    ]
)


class Doc(NamedTuple):
    doc_id: str
    source: str
    domain: str
    path: str
    text: str


def doc_id(source: str, path: str, index: int) -> str:
    """Stable id from where a document is, not what it says: 32 hex chars."""
    return hashlib.blake2b(f"{source}\n{path}\n{index}".encode(), digest_size=16).hexdigest()


def _unit_hash(seed: int, key: str) -> float:
    digest = hashlib.blake2b(f"{seed}\n{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def heldout_ids(docs: list[Entry], fraction: float, min_per_domain: int, seed: int) -> set[str]:
    """Per domain, the docs whose seeded id hash is below `fraction`, topped up to the minimum
    (at most half the domain) with the next-lowest hashes."""
    by_domain: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for d in docs:
        by_domain[d.domain].append((_unit_hash(seed, d.doc_id), d.doc_id))
    held: set[str] = set()
    for ranked in by_domain.values():
        ranked.sort()
        n = sum(h < fraction for h, _ in ranked)
        n = max(n, min(min_per_domain, len(ranked) // 2))
        held.update(i for _, i in ranked[:n])
    return held


class Entry(NamedTuple):
    """What ingest keeps in memory per document: no text."""

    doc_id: str
    source: str
    domain: str
    n_chars: int
    truncated: bool


RUN_CHARS = 64_000_000  # text per spill run: what ingest holds in memory at most
RUN_SCHEMA = pa.schema([f for f in SCHEMA if f.name != "n_chars"])


class Spill:
    """Documents written to doc-id-sorted Parquet runs of about `RUN_CHARS` characters."""

    def __init__(self, directory: Path, run_chars: int | None = None):
        self.directory, self.run_chars = directory, run_chars or RUN_CHARS
        directory.mkdir(parents=True)
        self._buffer: list[Doc] = []
        self._chars, self.runs = 0, []

    def add(self, doc: Doc) -> None:
        self._buffer.append(doc)
        self._chars += len(doc.text)
        if self._chars >= self.run_chars:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        self._buffer.sort()
        path = self.directory / f"run-{len(self.runs):05d}.parquet"
        columns = {f: [getattr(d, f) for d in self._buffer] for f in Doc._fields}
        pq.write_table(pa.table(columns, schema=RUN_SCHEMA), path, compression="zstd")
        self.runs.append(path)
        self._buffer, self._chars = [], 0

    def merged(self, batch_rows: int = 64) -> Iterator[Doc]:
        """Every spilled document, in doc-id order (a k-way merge, one batch per run in memory)."""
        self.flush()

        def read(path: Path) -> Iterator[Doc]:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
                yield from (Doc(*row) for row in zip(*batch.to_pydict().values(), strict=True))

        return heapq.merge(*(read(p) for p in self.runs), key=lambda d: d.doc_id)


def _counts(docs: list[Entry], key: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for d in sorted(docs):
        c = out.setdefault(getattr(d, key), {"docs": 0, "chars": 0})
        c["docs"] += 1
        c["chars"] += d.n_chars
    return out


class ShardedOutput:
    """Docs, added in id order, into `part-NNNNN.parquet` shards (at least one) of `shard_docs`
    documents in row groups of `row_group_docs`, and `manifest.json`."""

    def __init__(self, out: Path, shard_docs: int, row_group_docs: int):
        out.mkdir(parents=True)
        self.out, self.shard_docs, self.row_group_docs = out, shard_docs, row_group_docs
        self.entries: list[Entry] = []
        self.shards: list[dict] = []
        self._rows: list[Doc] = []
        self._writer: pq.ParquetWriter | None = None
        self._in_shard = 0

    def add(self, doc: Doc, entry: Entry) -> None:
        if self.entries and entry.doc_id <= self.entries[-1].doc_id:
            raise ValueError(f"documents out of id order at {entry.doc_id}")
        self.entries.append(entry)
        self._rows.append(doc)
        if len(self._rows) == self.row_group_docs or self._in_shard + len(self._rows) == \
                self.shard_docs:
            self._write_rows()

    def _open(self) -> pq.ParquetWriter:
        name = f"part-{len(self.shards):05d}.parquet"
        self.shards.append({"file": name, "docs": 0, "chars": 0})
        self._in_shard = 0
        return pq.ParquetWriter(
            self.out / name, SCHEMA, compression="zstd", compression_level=3,
            use_dictionary=["source", "domain"],
            write_statistics=["doc_id", "source", "domain", "path", "n_chars"])

    def _write_rows(self) -> None:
        if self._writer is None:
            self._writer = self._open()
        columns = {f: [getattr(d, f) for d in self._rows] for f in Doc._fields}
        columns["n_chars"] = [len(t) for t in columns["text"]]
        self._writer.write_table(pa.table(columns, schema=SCHEMA))
        self.shards[-1]["docs"] += len(self._rows)
        self.shards[-1]["chars"] += sum(columns["n_chars"])
        self._in_shard += len(self._rows)
        self._rows = []
        if self._in_shard == self.shard_docs:
            self._writer.close()
            self._writer = None

    def close(self, extra: dict) -> dict:
        if self._rows:
            self._write_rows()
        if self._writer is None and not self.shards:
            self._writer = self._open()  # an empty split still gets one (empty) shard
        if self._writer is not None:
            self._writer.close()
        manifest = {
            "schema": {f.name: str(f.type) for f in SCHEMA},
            "sorted_by": "doc_id",
            "docs": len(self.entries),
            "chars": sum(s["chars"] for s in self.shards),
            "shards": self.shards,
            "sources": _counts(self.entries, "source"),
            "domains": _counts(self.entries, "domain"),
            **extra,
        }
        (self.out / "manifest.json").write_text(canonical_json(manifest) + "\n")
        return manifest
