"""Doc ids, buckets, the held-out split, spilling, and the sharded Parquet output with its
manifest.

Layout: each source object (a file, an S3 object, a built-in path) belongs to one of `buckets`
buckets by a hash of (source, path); each bucket's documents, in doc-id order, are their own
shards (`part-BBBBB-KKK.parquet`), so adding or changing an object changes only its bucket's
shards, from scratch and on a refresh alike.

Ingest streams: documents go to spill runs on disk sorted by (bucket, doc id) as they are read
(`Spill`), only ~37 bytes per document (`Entries`: numpy columns of id, source, domain, bucket,
object, length) stay in memory for the global decisions (per-source caps, the held-out split),
and the output is a k-way merge of the runs (`ShardedOutput`). Peak memory: one run of text, one
row group per merged run (at most `MERGE_FAN_IN`), plus the entries.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
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
    bucket: int  # not written to the output: its shard's name says it
    doc_id: str
    source: str
    domain: str
    path: str
    text: str


def doc_id(source: str, path: str, index: int) -> str:
    """Stable id from where a document is, not what it says: 32 hex chars."""
    return hashlib.blake2b(f"{source}\n{path}\n{index}".encode(), digest_size=16).hexdigest()


def bucket_of(source: str, path: str, buckets: int) -> int:
    """The bucket of a source object: every document of one object shares it."""
    digest = hashlib.blake2b(f"{source}\n{path}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % buckets


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, on uint64 arrays (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def unit_hash(seed: int, hi: np.ndarray, lo: np.ndarray, block: int = 1 << 16) -> np.ndarray:
    """A seeded hash of each doc id (its two 64-bit halves) as a float in [0, 1): the ids are
    already uniform (blake2b), the mixing makes each seed a different, independent order.
    Computed in blocks, so the temporaries stay small whatever the corpus size."""
    key = _mix(np.full(1, seed & (2**64 - 1), dtype=np.uint64))
    out = np.empty(len(hi), dtype=np.float64)
    for s in range(0, len(hi), block):
        h = _mix(_mix(hi[s:s + block] ^ key) ^ lo[s:s + block])
        out[s:s + block] = (h >> np.uint64(11)).astype(np.float64) / 2.0**53
    return out


class Entries:
    """What ingest keeps per document, no text, as numpy columns (~37 bytes per document): the id
    as two big-endian 64-bit halves (so (hi, lo) order is doc-id order), source and domain
    codes, bucket, the code of its object's identity in the ingest cache (-1: none), length,
    whether it was truncated."""

    CHUNK = 4_096  # rows held as Python tuples (~0.2 KB each) before they become numpy rows

    def __init__(self) -> None:
        self.sources: list[str] = []
        self.domains: list[str] = []
        self.objects: list[str] = []
        self._codes: dict[tuple[int, str], int] = {}
        self._rows: list[tuple[int, int, int, int, int, int, int, bool]] = []
        self._parts: list[np.ndarray] = []
        self._table: np.ndarray | None = None

    def add(self, doc_id: str, source: str, domain: str, bucket: int, obj: int, n_chars: int,
            truncated: bool) -> None:
        self._rows.append((int(doc_id[:16], 16), int(doc_id[16:], 16), self._code(0, source),
                           self._code(1, domain), bucket, obj, n_chars, truncated))
        if len(self._rows) == self.CHUNK:
            self._flush()

    def extend(self, hi: np.ndarray, lo: np.ndarray, source: str, domain: str, bucket: int,
               obj: int, n_chars: np.ndarray, truncated: np.ndarray) -> None:
        """Many documents of one object at once (ids as their two 64-bit halves)."""
        self._flush()
        rows = np.zeros(len(hi), dtype=ENTRY_DTYPE)
        rows["hi"], rows["lo"], rows["n_chars"], rows["truncated"] = hi, lo, n_chars, truncated
        rows["source"], rows["domain"] = self._code(0, source), self._code(1, domain)
        rows["bucket"], rows["obj"] = bucket, obj
        self._parts.append(rows)

    def object_code(self, identity: str | None) -> int:
        """The code of an object identity (`ReadCache.identity`); -1 for None."""
        return -1 if identity is None else self._code(2, identity)

    def _code(self, kind: int, name: str) -> int:
        code = self._codes.get((kind, name))
        if code is None:
            names = (self.sources, self.domains, self.objects)[kind]
            code = self._codes[(kind, name)] = len(names)
            names.append(name)
        return code

    def _flush(self) -> None:
        if self._rows:
            self._parts.append(np.array(self._rows, dtype=ENTRY_DTYPE))
            self._rows = []
        self._table = None

    @property
    def table(self) -> np.ndarray:
        """Every entry, in the order added."""
        if self._table is None or self._rows:
            self._flush()
            self._table = np.concatenate(self._parts or [np.zeros(0, ENTRY_DTYPE)])
            self._parts = [self._table]
        return self._table

    def __len__(self) -> int:
        return len(self.table)

    def keep(self, mask: np.ndarray) -> None:
        """Drop the entries where `mask` is False."""
        self._parts, self._table = [self.table[mask]], None

    @staticmethod
    def doc_id(row: np.void) -> str:
        return f"{int(row['hi']):016x}{int(row['lo']):016x}"


ENTRY_DTYPE = np.dtype([("hi", "u8"), ("lo", "u8"), ("source", "u2"), ("domain", "u2"),
                        ("bucket", "u4"), ("obj", "i4"), ("n_chars", "i8"), ("truncated", "?")])


def id_order(table: np.ndarray) -> np.ndarray:
    """Indices that sort entries by doc id."""
    return np.lexsort((table["lo"], table["hi"]))


def bucket_order(table: np.ndarray) -> np.ndarray:
    """Indices that sort entries by (bucket, doc id): the output's order."""
    return np.lexsort((table["lo"], table["hi"], table["bucket"]))


def heldout_mask(entries: Entries, fraction: float, min_per_domain: int, seed: int
                 ) -> np.ndarray:
    """Per domain, the docs whose seeded id hash is below `fraction`, topped up to the minimum
    (at most half the domain) with the next-lowest hashes (ties: smaller doc id)."""
    table = entries.table
    h = unit_hash(seed, table["hi"], table["lo"])
    held = np.zeros(len(table), dtype=bool)
    for domain in range(len(entries.domains)):
        idx = np.flatnonzero(table["domain"] == domain)
        hd = h[idx]
        below = hd < fraction
        k = int(below.sum())
        n = max(k, min(min_per_domain, len(idx) // 2))
        if n == k:  # no top-up: exactly the hashes below the fraction
            held[idx[below]] = True
            continue
        # the n lowest hashes (ties: smaller doc id), ranking only the candidates up to the n-th
        cand = idx[hd <= np.partition(hd, n - 1)[n - 1]]
        ranked = cand[np.lexsort((table["lo"][cand], table["hi"][cand], h[cand]))]
        held[ranked[:n]] = True
    return held


RUN_ROW_GROUP = 256  # documents per row group of a spill run
MERGE_FAN_IN = 16  # runs merged at once
RUN_SCHEMA = pa.schema([pa.field("bucket", pa.int64(), nullable=False),
                        *(f for f in SCHEMA if f.name != "n_chars")])


def _order(doc: Doc) -> tuple[int, str]:
    return doc.bucket, doc.doc_id


class Spill:
    """Documents written to Parquet runs sorted by (bucket, doc id), of about `run_chars`
    characters each (`runtime.spill_chars`)."""

    def __init__(self, directory: Path, run_chars: int):
        self.directory, self.run_chars = directory, run_chars
        directory.mkdir(parents=True)
        self._buffer: list[Doc] = []
        self._chars, self.runs, self._written = 0, [], 0

    def add(self, doc: Doc) -> None:
        self._buffer.append(doc)
        self._chars += len(doc.text)
        if self._chars >= self.run_chars:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        self._buffer.sort(key=_order)
        self._write(self._buffer)
        self._buffer, self._chars = [], 0

    def _write(self, docs: Iterable[Doc]) -> None:
        """One sorted run, in small row groups: the merge reads one row group per run at a time,
        so its memory is not the run size times the number of runs."""
        path = self.directory / f"run-{self._written:05d}.parquet"
        self._written += 1
        docs = iter(docs)
        with pq.ParquetWriter(path, RUN_SCHEMA, compression="zstd") as writer:
            while batch := list(itertools.islice(docs, RUN_ROW_GROUP)):
                columns = {f: [getattr(d, f) for d in batch] for f in Doc._fields}
                writer.write_table(pa.table(columns, schema=RUN_SCHEMA))
        self.runs.append(path)

    @staticmethod
    def _read(path: Path, batch_rows: int) -> Iterator[Doc]:
        # no pre-buffering (Arrow's default would read every row group of the run up front) and
        # one thread (the threaded reader decodes ahead): one row group per open run in memory
        file = pq.ParquetFile(path, pre_buffer=False)
        for batch in file.iter_batches(batch_size=batch_rows, use_threads=False):
            yield from (Doc(*row) for row in zip(*batch.to_pydict().values(), strict=True))

    def merged(self, batch_rows: int = 64) -> Iterator[Doc]:
        """Every spilled document, in (bucket, doc id) order: a k-way merge of at most
        `MERGE_FAN_IN` runs (more are first merged in groups into longer runs, so the open
        readers, and the memory, stay bounded whatever the corpus size)."""
        self.flush()
        while len(self.runs) > MERGE_FAN_IN:
            groups = [self.runs[i:i + MERGE_FAN_IN] for i in range(0, len(self.runs),
                                                                   MERGE_FAN_IN)]
            self.runs = []
            for group in groups:
                self._write(heapq.merge(*(self._read(p, batch_rows) for p in group),
                                        key=_order))
                for path in group:
                    path.unlink()
        return heapq.merge(*(self._read(p, batch_rows) for p in self.runs), key=_order)


class ShardedOutput:
    """Docs, added in (bucket, doc id) order, into `part-BBBBB-KKK.parquet` shards of at most
    `shard_docs` documents in row groups of `row_group_docs` (at least one shard, maybe empty),
    and `manifest.json`. A bucket's shards can also be copied in whole (`adopt`)."""

    def __init__(self, out: Path, shard_docs: int, row_group_docs: int):
        out.mkdir(parents=True)
        self.out, self.shard_docs, self.row_group_docs = out, shard_docs, row_group_docs
        self.last: tuple[int, str] = (-1, "")
        self.counts: dict[str, dict[str, dict[str, int]]] = {"sources": {}, "domains": {}}
        self.shards: list[dict] = []
        self._bucket: dict = {}  # the counts of the bucket being written, for the shard cache
        self._rows: list[Doc] = []
        self._writer: pq.ParquetWriter | None = None
        self._in_shard = 0

    def add(self, doc: Doc) -> None:
        if _order(doc) <= self.last:
            raise ValueError(f"documents out of (bucket, id) order at {doc.doc_id}")
        if doc.bucket != self.last[0]:
            self.end_bucket()
        self.last = _order(doc)
        for kind, name in (("sources", doc.source), ("domains", doc.domain)):
            c = self._bucket.setdefault(kind, {}).setdefault(name, {"docs": 0, "chars": 0})
            c["docs"] += 1
            c["chars"] += len(doc.text)
        self._rows.append(doc)
        if len(self._rows) == self.row_group_docs or self._in_shard + len(self._rows) == \
                self.shard_docs:
            self._write_rows()

    def end_bucket(self) -> tuple[list[Path], dict]:
        """Close the bucket being written: its files and its counts (what `adopt` takes)."""
        if self._rows:
            self._write_rows()
        if self._writer is not None:
            self._writer.close()
            self._writer, self._in_shard = None, 0
        files = [s for s in self.shards if s.get("bucket") == self.last[0]]
        meta = {"shards": [{"docs": s["docs"], "chars": s["chars"]} for s in files],
                **{kind: self._bucket.get(kind, {}) for kind in ("sources", "domains")}}
        self._merge_counts(meta)
        self._bucket = {}
        for s in files:
            s.pop("bucket")
        return [self.out / s["file"] for s in files], meta

    def adopt(self, bucket: int, files: list[Path], meta: dict) -> None:
        """A whole bucket's shards (from the shard cache) with the counts `end_bucket` gave."""
        if (bucket, "") <= self.last:
            raise ValueError(f"bucket {bucket} out of order")
        self.end_bucket()
        self.last = (bucket, "")
        names = [f"part-{bucket:05d}-{k:03d}.parquet" for k in range(len(files))]
        from stages.textstats.shard_cache import ShardCache

        ShardCache.restore(files, self.out, names)
        self.shards += [{"file": n, **s} for n, s in zip(names, meta["shards"], strict=True)]
        self._merge_counts(meta)

    def _merge_counts(self, meta: dict) -> None:
        for kind in ("sources", "domains"):
            for name, c in meta[kind].items():
                total = self.counts[kind].setdefault(name, {"docs": 0, "chars": 0})
                total["docs"] += c["docs"]
                total["chars"] += c["chars"]

    def _open(self) -> pq.ParquetWriter:
        bucket = self.last[0]
        k = sum(s.get("bucket") == bucket for s in self.shards)
        name = f"part-{max(bucket, 0):05d}-{k:03d}.parquet"
        self.shards.append({"file": name, "docs": 0, "chars": 0, "bucket": bucket})
        self._in_shard = 0
        return pq.ParquetWriter(
            self.out / name, SCHEMA, compression="zstd", compression_level=3,
            use_dictionary=["source", "domain"],
            write_statistics=["doc_id", "source", "domain", "path", "n_chars"])

    def _write_rows(self) -> None:
        if self._writer is None:
            self._writer = self._open()
        columns = {f: [getattr(d, f) for d in self._rows] for f in Doc._fields if f != "bucket"}
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
        self.end_bucket()
        if not self.shards:  # an empty split still gets one (empty) shard
            self._open().close()
            self.shards[-1].pop("bucket")
        manifest = {
            "schema": {f.name: str(f.type) for f in SCHEMA},
            "sorted_by": "bucket, doc_id",
            "docs": sum(s["docs"] for s in self.shards),
            "chars": sum(s["chars"] for s in self.shards),
            "shards": self.shards,
            **self.counts,
            **extra,
        }
        (self.out / "manifest.json").write_text(canonical_json(manifest) + "\n")
        return manifest
