"""Doc ids, the held-out split and the sharded Parquet output with its manifest."""

from __future__ import annotations

import hashlib
from collections import defaultdict
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


def heldout_ids(docs: list[Doc], fraction: float, min_per_domain: int, seed: int) -> set[str]:
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


def _counts(docs: list[Doc], key: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for d in docs:
        c = out.setdefault(getattr(d, key), {"docs": 0, "chars": 0})
        c["docs"] += 1
        c["chars"] += len(d.text)
    return out


def write(out: Path, docs: list[Doc], shard_docs: int, row_group_docs: int, extra: dict) -> dict:
    """Docs sorted by id into `part-NNNNN.parquet` shards (at least one) + `manifest.json`."""
    out.mkdir(parents=True)
    docs = sorted(docs)
    shards = []
    for k, start in enumerate(range(0, max(len(docs), 1), shard_docs)):
        chunk = docs[start : start + shard_docs]
        columns = {f: [getattr(d, f) for d in chunk] for f in Doc._fields}
        columns["n_chars"] = [len(t) for t in columns["text"]]
        name = f"part-{k:05d}.parquet"
        pq.write_table(
            pa.table(columns, schema=SCHEMA),
            out / name,
            row_group_size=row_group_docs,
            compression="zstd",
            compression_level=3,
            use_dictionary=["source", "domain"],
            write_statistics=["doc_id", "source", "domain", "path", "n_chars"],
        )
        shards.append({"file": name, "docs": len(chunk), "chars": sum(columns["n_chars"])})
    manifest = {
        "schema": {f.name: str(f.type) for f in SCHEMA},
        "sorted_by": "doc_id",
        "docs": len(docs),
        "chars": sum(s["chars"] for s in shards),
        "shards": shards,
        "sources": _counts(docs, "source"),
        "domains": _counts(docs, "domain"),
        **extra,
    }
    (out / "manifest.json").write_text(canonical_json(manifest) + "\n")
    return manifest
