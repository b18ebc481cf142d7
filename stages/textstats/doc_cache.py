"""Per-document results kept across runs, so a corpus refresh computes only new or changed texts.

Keyed by a hash of the document's text within one *version* of the computation (a hash of the
stage's params and code bytes: any change starts a new, empty version), stored in SQLite under
`runtime.doc_cache` (outside every output). A row is the document's values as JSON (floats
round-trip exactly) and the table's Arrow schema is kept once per version, so rows read back
build the same columns, with the same types, as computing them. Workers only read; the stage's
own process writes what they computed.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pyarrow as pa
import xxhash


def text_key(text: str) -> bytes:
    return xxhash.xxh3_128_digest(text.encode())


def version(params, code: list[Path]) -> str:
    h = hashlib.sha256(json.dumps(params.model_dump(mode="json"), sort_keys=True).encode())
    for path in code:
        h.update(path.read_bytes())
    return h.hexdigest()[:24]


class DocCache:
    def __init__(self, directory: Path | None, version: str):
        self.path = None if directory is None else directory / f"{version}.sqlite"

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=60)
        db.execute("CREATE TABLE IF NOT EXISTS rows (key BLOB PRIMARY KEY, row TEXT)")
        db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB)")
        return db

    def lookup(self, keys: list[bytes]) -> tuple[dict[bytes, dict], pa.Schema | None]:
        """The cached rows among `keys`, and the schema they were computed with."""
        if self.path is None or not self.path.exists() or not keys:
            return {}, None
        try:
            with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=60) as db:
                meta = db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
                if meta is None:
                    return {}, None
                found = {}
                unique = sorted(set(keys))
                for i in range(0, len(unique), 500):
                    chunk = unique[i : i + 500]
                    marks = ",".join("?" * len(chunk))
                    found.update((k, json.loads(r)) for k, r in db.execute(
                        f"SELECT key, row FROM rows WHERE key IN ({marks})", chunk))
        except sqlite3.OperationalError:  # being created by the stage's process right now
            return {}, None
        return found, pa.ipc.read_schema(pa.py_buffer(meta[0]))

    def store(self, rows: dict[bytes, dict], schema: pa.Schema) -> None:
        if self.path is None or not rows:
            return
        with self._connect() as db:
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)",
                       (schema.serialize().to_pybytes(),))
            db.executemany("INSERT OR IGNORE INTO rows VALUES (?, ?)",
                           [(k, json.dumps(v)) for k, v in sorted(rows.items())])


def merge(new: pa.Table, cached: dict[bytes, dict], keys: list[bytes],
          schema: pa.Schema) -> pa.Table:
    """One table in `keys` order from the newly computed rows (those of the keys missing from
    `cached`, in order) and the cached ones."""
    if not cached:
        return new
    fresh = iter(new.to_pylist())
    return pa.Table.from_pylist([cached[k] if k in cached else next(fresh) for k in keys],
                                schema=schema)


def new_rows(new: pa.Table, keys: list[bytes], cached: dict[bytes, dict]) -> dict[bytes, dict]:
    """The newly computed rows by key, to store."""
    missing = [k for k in keys if k not in cached]
    return dict(zip(missing, new.to_pylist(), strict=True))
