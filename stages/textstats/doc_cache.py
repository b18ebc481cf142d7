"""Per-document results kept across runs, so a corpus refresh computes only new or changed texts.

Keyed by a hash of the document's text within one *version* of the computation (a hash of the
stage's params and code bytes: any change starts a new, empty version), stored in SQLite under
`runtime.doc_cache` (outside every output). Each batch of newly computed rows is kept as one
Arrow IPC blob (same columns, same types as computing them) and every key points at its batch
and row, so storing and reading back cost a few milliseconds per thousand documents. Workers
only read; the stage's own process writes what they computed. Connections are closed when done
(a `with connect()` block only commits: an unclosed connection kept its page cache until the
garbage collector found it, ~2 MB per batch stored, so dedup's process grew with the corpus).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pyarrow as pa
import xxhash


def text_key(text: str) -> bytes:
    return xxhash.xxh3_128_digest(text.encode())


def version(settings: dict, code: list[Path]) -> str:
    """A hash of what the rows depend on: the settings that shape them and the code's bytes."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for path in code:
        h.update(path.read_bytes())
    return h.hexdigest()[:24]


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


class Fresh:
    """Rows computed by a worker, ready for `DocCache.store`: their keys and one IPC blob."""

    def __init__(self, keys: list[bytes], table: pa.Table):
        first = {k: i for i, k in reversed(list(enumerate(keys)))}  # a text twice: stored once
        self.keys = sorted(first)
        self.rows = [first[k] for k in self.keys]
        self.blob = _ipc(table) if keys else b""

    def __len__(self) -> int:
        return len(self.keys)


class DocCache:
    def __init__(self, directory: Path | None, version: str):
        self.path = None if directory is None else directory / f"{version}.sqlite"

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=60)
        db.execute("CREATE TABLE IF NOT EXISTS batches (id INTEGER PRIMARY KEY, ipc BLOB)")
        db.execute("CREATE TABLE IF NOT EXISTS rows (key BLOB PRIMARY KEY, batch INTEGER, "
                   "row INTEGER)")
        return db

    def lookup(self, keys: list[bytes]) -> tuple[pa.Table | None, dict[bytes, int]]:
        """The cached rows among `keys` as one table, and each found key's row in it."""
        if self.path is None or not self.path.exists() or not keys:
            return None, {}
        try:
            with closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                         timeout=60)) as db:
                where: dict[bytes, tuple[int, int]] = {}
                unique = sorted(set(keys))
                for i in range(0, len(unique), 500):
                    chunk = unique[i : i + 500]
                    marks = ",".join("?" * len(chunk))
                    where.update((k, (b, r)) for k, b, r in db.execute(
                        f"SELECT key, batch, row FROM rows WHERE key IN ({marks})", chunk))
                batches = sorted({b for b, _ in where.values()})
                tables = {b: pa.ipc.open_stream(blob).read_all() for b, blob in db.execute(
                    f"SELECT id, ipc FROM batches WHERE id IN ({','.join('?' * len(batches))})",
                    batches)}
        except sqlite3.OperationalError:  # being created by the stage's process right now
            return None, {}
        if not where:
            return None, {}
        by_batch: dict[int, list[bytes]] = {}
        for k in sorted(where):
            by_batch.setdefault(where[k][0], []).append(k)
        parts, position = [], {}
        for b, found in sorted(by_batch.items()):
            position.update((k, len(position)) for k in found)
            parts.append(tables[b].take(pa.array([where[k][1] for k in found], pa.int64())))
        return pa.concat_tables(parts), position

    def compute(self, texts: list[str], fn: Callable[[list[str]], pa.Table]
                ) -> tuple[pa.Table, Fresh]:
        """`fn(texts)`'s rows, computing only the texts not cached; the rows computed, to
        `store` (in the stage's process: workers only read)."""
        keys = [text_key(t) for t in texts]
        cached, found = self.lookup(keys)
        missing = [i for i, k in enumerate(keys) if k not in found]
        new = fn([texts[i] for i in missing])
        return merge(new, cached, found, keys), Fresh([keys[i] for i in missing], new)

    def store(self, batches: list[Fresh]) -> int:
        """Keep the computed rows; returns how many distinct texts they hold."""
        batches = [f for f in batches if len(f)]
        if self.path is None or not batches:
            return sum(len(f) for f in batches)
        with closing(self._connect()) as db, db:  # a transaction, then closed
            for fresh in batches:
                batch = db.execute("INSERT INTO batches (ipc) VALUES (?)",
                                   (fresh.blob,)).lastrowid
                db.executemany("INSERT OR IGNORE INTO rows VALUES (?, ?, ?)",
                               [(k, batch, r) for k, r in zip(fresh.keys, fresh.rows,
                                                              strict=True)])
        return sum(len(f) for f in batches)


def merge(new: pa.Table, cached: pa.Table | None, found: dict[bytes, int],
          keys: list[bytes]) -> pa.Table:
    """One table in `keys` order from the newly computed rows (those of the keys missing from
    `found`, in order) and the cached ones."""
    if cached is None:
        return new
    fresh = iter(range(len(new)))
    index = [len(new) + found[k] if k in found else next(fresh) for k in keys]
    both = pa.concat_tables([new.cast(cached.schema) if len(new) else cached.schema.empty_table(),
                             cached])
    return both.take(pa.array(index, pa.int64()))
