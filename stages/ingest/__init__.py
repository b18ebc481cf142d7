"""Ingest: documents from the declared sources into sharded Parquet, with a held-out slice.

Every source is resolved (checked to exist, listed) before anything is read or written. Each
record read is either kept (maybe truncated at `max_doc_chars`) or counted under a skip reason,
so `read == kept + sum(skipped)` per source. The held-out slice is chosen per domain by a seeded
hash of the doc id, before any filtering; `data/ingest/heldout` holds it and
`data/ingest/corpus` the rest, both with the schema and manifest of `shards.ShardedOutput`.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from pydantic import Field, model_validator

from stages.ingest.cache import ReadCache
from stages.ingest.readers import REASONS, Unit, problem
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
    shard_docs: int = Field(10_000, ge=1, description="documents per Parquet file")
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

    cache_dir = ctx.root / ctx.runtime.ingest_cache if ctx.runtime.ingest_cache else None
    caches = {src.name: ReadCache(cache_dir, src.name, src.model_dump(
        mode="json", exclude={"max_docs", "max_chars"})) for src in params.sources}
    # every source checked before any is read
    plans = [(src, resolve(src, ctx, caches[src.name])) for src in params.sources]
    scratch = ctx.out("data/ingest/.spill")  # in the output's temp dir: swept if killed
    spill = shards.Spill(scratch, ctx.runtime.spill_chars)
    entries = shards.Entries()
    per_source = {}
    for src, units in plans:
        tally = _read(src, units, params.max_doc_chars, ctx, spill, entries)
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
    # the spill holds every document read, the entries the kept ones: both in doc-id order
    order = shards.id_order(entries.table)
    kept = iter(order)
    nxt = next(kept, None)
    for doc in spill.merged():
        if nxt is not None and doc.doc_id == shards.Entries.doc_id(entries.table[nxt]):
            outputs["heldout" if held[nxt] else "corpus"].add(doc)
            nxt = next(kept, None)
    shutil.rmtree(scratch)
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


def _read(src: Source, units: list[Unit], max_doc_chars: int, ctx: StageContext, spill,
          entries) -> dict:
    """One source's documents into the spill and its kept ones into `entries` (capped to its
    max_docs / max_chars by doc id); returns its tally."""
    from stages.ingest.shards import Doc, doc_id, id_order

    read, skipped = 0, Counter()
    first = len(entries)
    for unit in ctx.progress(units, len(units), f"ingest {src.name}"):
        for rec in unit.read():
            read += 1
            reason = rec.reason or problem(rec.text)
            if reason:
                skipped[reason] += 1
                continue
            i = doc_id(src.name, rec.path, rec.index)
            text = rec.text[:max_doc_chars]
            spill.add(Doc(i, src.name, unit.domain, rec.path, text))
            entries.add(i, src.name, unit.domain, len(text), len(rec.text) > max_doc_chars)
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
