"""What each source held last time, so a refresh re-reads only new or changed objects.

An object (a local file, an S3 object) is identified without reading it: by its source's reader
settings, its path, its size and its mtime (files) or ETag (S3). Its parsed records are kept under
`runtime.ingest_cache` (outside every output, like synth's generation cache), one Parquet file per
object, with the object's size and content hash; `<source>.json` there is the source's manifest:
path -> size, mtime or ETag, sha256 of the bytes, cache file. A record read from the cache is the
record parsing the object would give (the key includes the reader code's hash), so a refresh's
outputs are byte-identical to a from-scratch run's; only the work differs (counted in the log).
Each record also keeps its final skip reason (`readers.document`) and its length, so an
unchanged object's documents are known (`meta`) without reading their text.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from functools import cache
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from stages.ingest import readers
from stages.ingest.readers import Record
from stages.ingest.shards import doc_id

SCHEMA = pa.schema([("path", pa.string()), ("index", pa.int64()), ("text", pa.string()),
                    ("reason", pa.string()), ("n_chars", pa.int64()), ("id_hi", pa.uint64()),
                    ("id_lo", pa.uint64())])
LAYOUT = 2  # of the cache files: part of every key


@cache
def _reader_version() -> str:
    return hashlib.sha256(Path(readers.__file__).read_bytes()).hexdigest()[:16]


class ReadCache:
    """Parsed records per object, keyed by the object's identity; `hits` / `reads` counted."""

    def __init__(self, directory: Path | None, source: str, settings: dict):
        self.directory, self.source = directory, source
        self.settings = json.dumps({**settings, "reader": _reader_version(), "layout": LAYOUT},
                                   sort_keys=True)
        self.hits = self.reads = 0
        self.manifest: dict[str, dict] = {}

    def _file(self, rel: str, version: str) -> Path:
        digest = hashlib.sha256(f"{self.settings}\n{rel}\n{version}".encode()).hexdigest()
        return self.directory / self.source / digest[:2] / f"{digest}.parquet"

    def identity(self, rel: str, version: str) -> str | None:
        """What determines the object's records (source settings, reader code, path, version), as
        a hash; None when nothing is cached."""
        return None if self.directory is None else self._file(rel, version).stem

    def meta(self, rel: str, version: str) -> pa.Table | None:
        """The object's records without their text if it is unchanged since it was cached
        (version: size + mtime or ETag), else None: skip reason, length and
        doc id halves (`id_hi`, `id_lo`) per record. Counts a hit."""
        if self.directory is None:
            return None
        path = self._file(rel, version)
        try:
            file = pq.ParquetFile(path)
        except FileNotFoundError:
            return None
        meta = {k.decode(): v.decode() for k, v in (file.schema_arrow.metadata or {}).items()}
        self.manifest[rel] = {"version": version, "sha256": meta["sha256"],
                              "bytes": int(meta["bytes"])}
        self.hits += 1
        return file.read(columns=["reason", "n_chars", "id_hi", "id_lo"])

    def records(self, rel: str, version: str) -> list[Record]:
        """The cached object's records."""
        table = pq.read_table(self._file(rel, version), columns=list(Record._fields))
        return [Record(*row) for row in zip(*table.to_pydict().values(), strict=True)]

    def put(self, rel: str, version: str, data: bytes, records: list[Record]) -> list[Record]:
        """Count a read; keep its records (written atomically) and return them."""
        self.reads += 1
        if self.directory is None:
            return records
        sha = hashlib.sha256(data).hexdigest()
        self.manifest[rel] = {"version": version, "sha256": sha, "bytes": len(data)}
        path = self._file(rel, version)
        path.parent.mkdir(parents=True, exist_ok=True)
        ids = [doc_id(self.source, r.path, r.index) for r in records]
        table = pa.table({
            "path": [r.path for r in records], "index": [r.index for r in records],
            "text": [r.text for r in records],
            "reason": [r.reason for r in records],
            "n_chars": [len(r.text) if r.text is not None else 0 for r in records],
            "id_hi": [int(i[:16], 16) for i in ids], "id_lo": [int(i[16:], 16) for i in ids]},
            schema=SCHEMA)
        table = table.replace_schema_metadata({"sha256": sha, "bytes": str(len(data))})
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        return records

    def write_manifest(self) -> None:
        if self.directory is None or not self.manifest:
            return
        path = self.directory / f"{self.source}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dict(sorted(self.manifest.items())), indent=1) + "\n")
