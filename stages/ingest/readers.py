"""Bytes and values to documents: each record is either text or the reason it was skipped
(final where the record is made: `document`)."""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

# Skip reasons, in the order metrics list them. `capped` is the only one that is not bad input.
REASONS = (
    "unsupported_format",
    "corrupt",
    "binary",
    "undecodable",
    "malformed_json",
    "missing_text_field",
    "empty",
    "capped",
)
TEXT_EXTS = (".txt", ".md", ".rst")

_CONTROL = bytes(c for c in range(32) if chr(c) not in "\t\n\r\f\v\b\x1b") + b"\x7f"
_CONTROL_STR = dict.fromkeys(_CONTROL)


class Record(NamedTuple):
    path: str  # relative to the source: a file path, an object key below the prefix, a split
    index: int  # record number within `path` (line of a JSONL file, row of a table)
    text: str | None
    reason: str | None = None  # why `text` is None


class Unit(NamedTuple):
    """A piece of a source (a file, a batch of objects, a dataset): its domain, its reader and,
    for files and S3 objects, the objects it holds as (path, version) pairs known from listing
    alone (size + mtime or ETag); `read(objects, cache)` then reads just those, keeping each in
    the ingest cache (the rest come from it), else `read()` reads everything."""

    domain: str
    read: Callable[..., Iterable[Record]]
    objects: tuple[tuple[str, str], ...] = ()


def looks_binary(data: bytes | str) -> bool:
    """A NUL anywhere, or more than 10% control characters in the first 8 KiB."""
    sample = data[:8192]
    if isinstance(data, str):
        nul, rest = "\0" in data, sample.translate(_CONTROL_STR)
    else:
        nul, rest = b"\0" in data, sample.translate(None, _CONTROL)
    return nul or len(sample) - len(rest) > 0.1 * len(sample)


def problem(text: str) -> str | None:
    """Why a decoded text is not a document, or None."""
    if not text.strip():
        return "empty"
    return "binary" if looks_binary(text) else None


def document(path: str, index: int, text: str) -> Record:
    """A decoded text as a record whose reason is final: the text, or why it is not a document.
    Every reader makes its texts' records here, so the check runs once per record."""
    reason = problem(text)
    return Record(path, index, None if reason else text, reason)


def decode(path: str, index: int, data: bytes) -> Record:
    """Bytes as UTF-8 text (not yet checked as a document: see `decode_document`)."""
    if looks_binary(data):
        return Record(path, index, None, "binary")
    try:
        return Record(path, index, data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        return Record(path, index, None, "undecodable")


def decode_document(path: str, index: int, data: bytes) -> Record:
    """A whole file's bytes as one document's record."""
    rec = decode(path, index, data)
    return rec if rec.text is None else document(path, index, rec.text)


def field_values(path: str, values: Iterable[object]) -> Iterator[Record]:
    """Rows of a table column: strings are texts, anything else lacks the text field."""
    for i, value in enumerate(values):
        if isinstance(value, str):
            yield document(path, i, value)
        else:
            yield Record(path, i, None, "missing_text_field")


def parse_file(path: str, data: bytes, text_field: str) -> Iterator[Record]:
    """Records of one file by its extension: .txt/.md/.rst, .jsonl, .parquet, each maybe .gz."""
    name = path.lower()
    if name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            yield Record(path, 0, None, "corrupt")
            return
        name = name[:-3]
    if name.endswith(TEXT_EXTS):
        yield decode_document(path, 0, data)
    elif name.endswith(".jsonl"):
        yield from _jsonl(path, data, text_field)
    elif name.endswith(".parquet"):
        yield from _parquet(path, data, text_field)
    else:
        yield Record(path, 0, None, "unsupported_format")


def _jsonl(path: str, data: bytes, text_field: str) -> Iterator[Record]:
    if b"\0" in data:
        yield Record(path, 0, None, "binary")
        return
    for i, line in enumerate(data.split(b"\n")):
        if not line.strip():
            continue
        rec = decode(path, i, line)
        if rec.text is None:
            yield rec
            continue
        try:
            obj = json.loads(rec.text)
        except (ValueError, RecursionError):
            yield Record(path, i, None, "malformed_json")
            continue
        value = obj.get(text_field) if isinstance(obj, dict) else None
        if isinstance(value, str):
            yield document(path, i, value)
        else:
            yield Record(path, i, None, "missing_text_field")


def _parquet(path: str, data: bytes, text_field: str) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(io.BytesIO(data))
        if text_field in pf.schema_arrow.names:
            values = pf.read(columns=[text_field]).column(0).to_pylist()
        else:
            values = [None] * pf.metadata.num_rows
    except (pa.ArrowException, OSError, ValueError):
        yield Record(path, 0, None, "corrupt")
        return
    yield from field_values(path, values)
