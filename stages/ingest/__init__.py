"""Ingest: documents from the declared sources into sharded Parquet, with a held-out slice.

Every source is resolved (checked to exist, listed) before anything is read or written. Each
record read is either kept (maybe truncated at `max_doc_chars`) or counted under a skip reason,
so `read == kept + sum(skipped)` per source. The held-out slice is chosen per domain by a seeded
hash of the doc id, before any filtering; `data/ingest/heldout` holds it and
`data/ingest/corpus` the rest, both with the schema, bucketed layout and manifest of
`shards.ShardedOutput`.

A refresh does only what changed: objects unchanged since the ingest cache saw them are not read
(their documents' ids and lengths come from the cache), and a bucket whose documents and objects
are those of a bucket written before is copied from the shard cache (`<ingest_cache>/.shards`),
not rebuilt; the outputs are those of a from-scratch run either way.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from pydantic import Field, model_validator

from stages.ingest.cache import ReadCache
from stages.ingest.readers import REASONS, Unit
from stages.ingest.sources import BuiltinSource, Source, resolve
from stages.params import StrictModel
from stages.runner import StageContext

CORPUS, HELDOUT = "data/ingest/corpus", "data/ingest/heldout"


class Params(StrictModel):
    sources: list[Source] = Field(
        default_factory=lambda: [BuiltinSource(kind="builtin", name="builtin")], min_length=1
    )
    heldout_fraction: float = Field(0.02, ge=0, lt=1, description="per domain, by doc-id hash")
    heldout_min_per_domain: int = Field(0, ge=0, description="at most half of a domain's docs")
    max_doc_chars: int = Field(200_000, ge=1, description="longer documents are truncated")
    buckets: int = Field(16, ge=1, description="source objects are hashed by (source, path) "
                         "into this many buckets, each written as its own shards: a refresh "
                         "rewrites only the buckets of new or changed objects")
    shard_docs: int = Field(10_000, ge=1, description="documents per Parquet file, at most")
    row_group_docs: int = Field(1_000, ge=1, description="documents per Parquet row group")

    @model_validator(mode="after")
    def _unique_names(self) -> Params:
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {', '.join(dupes)}")
        return self


def run(params: Params, ctx: StageContext) -> dict:
    import shutil

    from stages.ingest import shards
    from stages.textstats.shard_cache import ShardCache

    cache_dir = ctx.root / ctx.runtime.ingest_cache if ctx.runtime.ingest_cache else None
    caches = {src.name: ReadCache(cache_dir, src.name, src.model_dump(
        mode="json", exclude={"max_docs", "max_chars"})) for src in params.sources}
    plans = [(src, resolve(src, ctx)) for src in params.sources]  # all checked before any read
    scratch = ctx.out("data/ingest/.spill")  # in the output's temp dir: swept if killed
    spill = shards.Spill(scratch / "read", ctx.runtime.spill_chars)
    entries = shards.Entries()
    unread: list[tuple[int, ReadCache, str, str, str, str]] = []  # cached objects, not read
    per_source = {}
    for src, units in plans:
        tally = _read(src, units, params, ctx, caches[src.name], spill, entries, unread)
        per_source[src.name] = {"kind": src.kind, **tally}
        cache = caches[src.name]
        if cache.hits or cache.reads:
            ctx.log.info("source %s: %d objects read, %d unchanged ones from the ingest cache",
                         src.name, cache.reads, cache.hits)
            cache.write_manifest()
    held = shards.heldout_mask(
        entries, params.heldout_fraction, params.heldout_min_per_domain, ctx.base.seed
    )
    metrics: dict = {
        "read": sum(s["read"] for s in per_source.values()),
        "kept": len(entries),
        "truncated": sum(s["truncated"] for s in per_source.values()),
        "skipped": {r: sum(s["skipped"].get(r, 0) for s in per_source.values()) for r in REASONS},
    }
    outputs = {split: shards.ShardedOutput(ctx.out(out), params.shard_docs, params.row_group_docs)
               for split, out in (("corpus", CORPUS), ("heldout", HELDOUT))}
    shard_cache = ShardCache(cache_dir / ".shards" if cache_dir else None)
    table = entries.table
    order = shards.bucket_order(table)
    held_sorted = held[order]
    splits = {"corpus": False, "heldout": True}
    split_of = {h: split for split, h in splits.items()}
    buckets, starts = np.unique(table["bucket"][order], return_index=True)
    spans = list(zip(buckets.tolist(), starts.tolist(), [*starts[1:].tolist(), len(order)],
                     strict=True))
    settings = _layout(params)
    keys = {b: {split: _bucket_key(settings, split, table[order[lo:hi][held_sorted[lo:hi] == h]],
                                   entries.objects)
                for split, h in splits.items() if (held_sorted[lo:hi] == h).any()}
            for b, lo, hi in spans}
    cached = {b: {split: shard_cache.get(k) for split, k in ks.items()} for b, ks in keys.items()}
    reuse = {b for b, got in cached.items() if all(v is not None for v in got.values())}
    # the unread objects of the buckets to rebuild: their text from the ingest cache (the first
    # spill's buffer written out first: one run of text in memory at a time)
    spill.flush()
    again = shards.Spill(scratch / "again", ctx.runtime.spill_chars)
    for bucket, cache, source, domain, rel, version in unread:
        if bucket not in reuse:
            for rec in cache.records(rel, version):
                if not rec.reason:
                    again.add(shards.Doc(bucket, shards.doc_id(source, rel, rec.index), source,
                                         domain, rel, rec.text[:params.max_doc_chars]))
    stream = heapq.merge(spill.merged(), again.merged(), key=lambda d: (d.bucket, d.doc_id))
    for b, lo, hi in ctx.progress(spans, len(spans), "ingest buckets"):
        if b in reuse:
            for split, (files, meta) in cached[b].items():
                outputs[split].adopt(b, files, meta)
            continue
        for i, h in zip(order[lo:hi], held_sorted[lo:hi], strict=True):
            split = split_of[bool(h)]
            want = shards.Entries.doc_id(table[i])
            doc = next((d for d in stream if d.bucket == b and d.doc_id == want), None)
            if doc is None:
                raise RuntimeError(f"ingest: document {want} of bucket {b} missing from the spill")
            outputs[split].add(doc)
        for split, output in outputs.items():
            files, meta = output.end_bucket()
            if files:
                shard_cache.put(keys[b][split], files, meta)
    shutil.rmtree(scratch)
    if shard_cache.hits or shard_cache.stored:
        ctx.log.info("ingest: %d of %d buckets rebuilt, %d copied from the shard cache",
                     len(spans) - len(reuse), len(spans), len(reuse))
    manifests = {split: output.close({"split": split, "ingest": dict(metrics)})
                 for split, output in outputs.items()}  # ingest-wide metrics, before the split
    for split, m in manifests.items():
        metrics[split] = {"docs": m["docs"], "chars": m["chars"], "shards": len(m["shards"])}
    none = {"docs": 0, "chars": 0}
    metrics["domains"] = {
        dom: {split: m["domains"].get(dom, none) for split, m in manifests.items()}
        for dom in sorted(entries.domains[c] for c in np.unique(entries.table["domain"]))
    }
    metrics["sources"] = per_source
    return metrics


def _layout(params: Params) -> str:
    """What a bucket's shard bytes depend on besides its documents: the settings that shape
    them and the code that writes them."""
    from stages.ingest import shards

    code = hashlib.sha256(Path(shards.__file__).read_bytes() + Path(__file__).read_bytes())
    return json.dumps({"max_doc_chars": params.max_doc_chars, "shard_docs": params.shard_docs,
                       "row_group_docs": params.row_group_docs, "code": code.hexdigest()})


def _bucket_key(settings: str, split: str, rows: np.ndarray, objects: list[str]) -> str | None:
    """The key of one split of a bucket in the shard cache: its documents (ids, in order) and
    the identities of the objects they come from; None if one has none (not from a cached file
    or S3 object: built-in and HF sources are rebuilt every run)."""
    if (rows["obj"] < 0).any():
        return None
    codes = np.unique(rows["obj"]).tolist()
    used = sorted(objects[o] for o in codes)
    rank = {identity: r for r, identity in enumerate(used)}
    local = np.zeros(max(codes) + 1, dtype="<u4")
    local[codes] = [rank[objects[o]] for o in codes]
    h = hashlib.sha256(f"{settings}\n{split}\n".encode())
    h.update("\n".join(used).encode())
    h.update(np.ascontiguousarray(rows[["hi", "lo"]]).tobytes())
    h.update(local[rows["obj"]].tobytes())
    return h.hexdigest()


def _read(src: Source, units: list[Unit], params: Params, ctx: StageContext, cache: ReadCache,
          spill, entries, unread: list) -> dict:
    """One source's documents: those of objects read into the spill, those of objects unchanged
    in the ingest cache only as entries (their text is read later if their bucket is rebuilt,
    noted in `unread`); the kept ones (capped to max_docs / max_chars by doc id) in `entries`;
    returns its tally."""
    from stages.ingest.shards import Doc, bucket_of, doc_id, id_order

    read, skipped = 0, Counter()
    first = len(entries)
    limit = params.max_doc_chars
    of_path: dict[str, tuple[int, int]] = {}  # path -> (bucket, object code): once per object
    for unit in ctx.progress(units, len(units), f"ingest {src.name}"):
        todo = []
        for rel, version in unit.objects:
            meta = cache.meta(rel, version)
            if meta is None:
                todo.append((rel, version))
                continue
            b = bucket_of(src.name, rel, params.buckets)
            unread.append((b, cache, src.name, unit.domain, rel, version))
            read += meta.num_rows
            reasons = meta["reason"]
            skipped.update({r["values"]: r["counts"] for r in reasons.value_counts().to_pylist()
                            if r["values"] is not None})
            ok = meta.filter(pc.is_null(reasons))
            n = ok["n_chars"].to_numpy()
            entries.extend(ok["id_hi"].to_numpy(), ok["id_lo"].to_numpy(), src.name, unit.domain,
                           b, entries.object_code(cache.identity(rel, version)),
                           np.minimum(n, limit), n > limit)
        versions = dict(todo)
        for rec in unit.read(todo, cache) if unit.objects else unit.read():
            read += 1
            if rec.reason:  # final where the record was made (`readers.document`)
                skipped[rec.reason] += 1
                continue
            if rec.path not in of_path:
                identity = cache.identity(rec.path, versions[rec.path]) if unit.objects else None
                of_path[rec.path] = (bucket_of(src.name, rec.path, params.buckets),
                                     entries.object_code(identity))
            b, obj = of_path[rec.path]
            i = doc_id(src.name, rec.path, rec.index)
            text = rec.text[:limit]
            spill.add(Doc(b, i, src.name, unit.domain, rec.path, text))
            entries.add(i, src.name, unit.domain, b, obj, len(text), len(rec.text) > limit)
    mine = entries.table[first:]
    if src.max_docs or src.max_chars:
        ranked = id_order(mine)[: src.max_docs]
        n = len(ranked)
        if src.max_chars:
            n = int(np.searchsorted(np.cumsum(mine["n_chars"][ranked]), src.max_chars, "right"))
        skipped["capped"] += len(mine) - n
        keep = np.ones(len(entries), dtype=bool)
        keep[first:] = False
        keep[first + ranked[:n]] = True
        entries.keep(keep)
        mine = entries.table[first:]
    n_trunc = int(mine["truncated"].sum())
    summary = ", ".join(f"{r}={n}" for r, n in sorted(skipped.items()))
    log = ctx.log.warning if n_trunc or set(skipped) - {"capped"} else ctx.log.info
    log(
        "source %s: read %d, kept %d (%d truncated), skipped %d%s",
        src.name,
        read,
        len(mine),
        n_trunc,
        sum(skipped.values()),
        f": {summary}" if summary else "",
    )
    return {
        "read": read,
        "kept": len(mine),
        "truncated": n_trunc,
        "skipped": dict(sorted(skipped.items())),
    }
