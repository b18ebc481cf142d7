"""Mix: the synthetic-augmented corpus = the curated corpus + accepted synthetic documents.

Synthetic documents make up `synthetic_fraction` of the result's tokens, counted as UTF-8 bytes
(the tokenizer is trained on this very output, so bytes are the tokenizer-independent measure;
digits split into single tokens make arithmetic text somewhat denser in tokens). The synthetic
budget is shared between template families (`arithmetic`, `code_trace`, `qa`, ...) in proportion
to `template_weights` (default 1 each; 0 leaves a family out); a family that runs out of documents
passes its share on to the others. Within a family documents are taken in a seeded order. If all
accepted documents together fall short, all are used and the metrics say by how much.

Every row keeps the curated corpus's columns (SoftDedup `weight`; synthetic rows weigh 1) and
carries provenance: `origin` (curated | synthetic), `backend`, `model` (fingerprint), `template`,
`seed_doc_id` (null for curated rows). Same shard format as the curated corpus, so `tokenize`
reads it unchanged. Changing the ratio re-runs only this cheap step; generation stays cached.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, field_validator

from stages.params import StrictModel
from stages.synth import GENERATED, PROVENANCE
from stages.textstats.shards import ShardWriter, list_shards, read_batches, write_manifest

CURATED = "data/dedup/corpus"
OUT = "data/mix/corpus"
SYNTHETIC_SHARD = "part-synthetic-00000.parquet"


class Params(StrictModel):
    synthetic_fraction: float = Field(0.2, ge=0, lt=1,
                                      description="share of the mixed corpus's tokens (bytes)")
    template_weights: dict[str, float] = Field(
        default_factory=dict, description="template family -> weight (default 1; 0 = none)")

    @field_validator("template_weights")
    @classmethod
    def _non_negative(cls, weights: dict[str, float]) -> dict[str, float]:
        if any(w < 0 for w in weights.values()):
            raise ValueError("weights must be >= 0")
        return weights


def family(template: str) -> str:
    return template.split("/", 1)[0]


def allocate(sizes: dict[str, list[int]], weights: dict[str, float], budget: float
             ) -> dict[str, int]:
    """How many leading documents of each family to take: shares of `budget` bytes in
    proportion to the weights, re-sharing what exhausted families leave (water filling)."""
    taken = {f: 0 for f in sizes}
    used = {f: 0 for f in sizes}
    remaining = budget
    while remaining > 0:
        active = [f for f in sorted(sizes) if weights.get(f, 1.0) > 0 and taken[f] < len(sizes[f])]
        total_w = sum(weights.get(f, 1.0) for f in active)
        if not active or total_w == 0:
            break
        spent = 0
        for f in active:
            share = remaining * weights.get(f, 1.0) / total_w
            goal = used[f] + share
            while taken[f] < len(sizes[f]) and used[f] + sizes[f][taken[f]] / 2 <= goal:
                used[f] += sizes[f][taken[f]]
                spent += sizes[f][taken[f]]
                taken[f] += 1
        if spent == 0:
            break
        remaining -= spent
    return taken


def _order(seed: int, doc_id: str) -> bytes:
    return hashlib.blake2b(f"mix:{seed}:{doc_id}".encode(), digest_size=8).digest()


def run(params: Params, ctx) -> dict:
    out_dir = ctx.out(OUT)
    out_dir.mkdir(parents=True)
    generated = pq.read_table(ctx.dep(GENERATED) / "part-00000.parquet")
    schema = generated.schema
    rows, curated_bytes, curated_docs = [], 0, 0
    for shard in list_shards(ctx.dep(CURATED)):
        with ShardWriter(out_dir / shard.name, schema) as writer:
            for table in read_batches(shard, pq.read_schema(shard).names):
                curated_docs += table.num_rows
                curated_bytes += sum(len((t or "").encode()) for t in table["text"].to_pylist())
                for name in PROVENANCE:
                    value = "curated" if name == "origin" else None
                    table = table.append_column(name, pa.array([value] * table.num_rows,
                                                               pa.string()))
                writer.write(table.select(schema.names).cast(schema))
        rows.append((shard.name, writer.rows))

    by_family: dict[str, list[int]] = defaultdict(list)
    synthetic = generated.to_pylist()
    synthetic.sort(key=lambda r: (family(r["template"]), _order(ctx.base.seed, r["doc_id"])))
    for i, row in enumerate(synthetic):
        by_family[family(row["template"])].append(i)
    sizes = {f: [len(synthetic[i]["text"].encode()) for i in idx] for f, idx in by_family.items()}
    f = params.synthetic_fraction
    budget = curated_bytes * f / (1 - f)
    taken = allocate(sizes, params.template_weights, budget)
    chosen = sorted(i for fam, idx in by_family.items() for i in idx[: taken[fam]])
    table = pa.Table.from_pylist([synthetic[i] for i in chosen], schema=schema)
    with ShardWriter(out_dir / SYNTHETIC_SHARD, schema) as writer:
        writer.write(table)
    rows.append((SYNTHETIC_SHARD, writer.rows))
    write_manifest(out_dir, rows, schema.names)

    synth_bytes = sum(sum(sizes[fam][: taken[fam]]) for fam in sizes)
    total = curated_bytes + synth_bytes
    ctx.log.info("mix: %d curated + %d synthetic documents, synthetic share %.3f of bytes",
                 curated_docs, len(chosen), synth_bytes / total if total else 0.0)
    return {
        "curated_docs": curated_docs,
        "curated_bytes": curated_bytes,
        "synthetic_available_docs": len(synthetic),
        "synthetic_available_bytes": sum(map(sum, sizes.values())),
        "synthetic_docs": len(chosen),
        "synthetic_bytes": synth_bytes,
        "synthetic_fraction_target": f,
        "synthetic_fraction": round(synth_bytes / total, 6) if total else 0.0,
        "synthetic_budget_shortfall_bytes": max(0, round(budget - synth_bytes)),
        "docs": curated_docs + len(chosen),
        "synthetic_docs_by_family": {fam: taken[fam] for fam in sorted(taken)},
        "synthetic_bytes_by_family": {fam: sum(sizes[fam][: taken[fam]]) for fam in sorted(taken)},
    }
