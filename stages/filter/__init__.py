"""Thresholds applied to stored signals: the filtered corpus, per-rule counts, removed samples.

Reads the signals written by `signals` and never computes one, so a threshold edit re-runs only
this cheap step. Each domain gets only its own rule groups (`apply`): prose the Gopher, C4,
FineWeb, language and toxicity rules, code the code rules. Decisions are per document (C4's line
removals only count toward its sentence rule; text is never edited). A removed document is counted
under the first rule it fails, in the order of `apply[domain]` and then of the group's fields, so
per-rule counts add up to the removed total; `failing_by_rule` counts every failure.

The `quality` group reads the quality classifier's scores (`data/quality/scores`, stage
`quality`); its `top_fraction` is resolved first, per domain, to the score of the last document
in that fraction of the ones passing every other rule (`quality_cuts` in the metrics).

The bias audit (`stages.filter.bias`) asks of every rule that removes documents whether it
removes those mentioning an identity group more often than the rest; flagged rules are logged,
in the metrics (`bias_audit`) and a Dagster warning; `data/filter/bias_samples.jsonl` holds
removed identity-term documents per rule for a human to read.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, field_validator

from stages.filter import bias
from stages.filter.rules import (
    C4,
    GROUPS,
    Code,
    FineWeb,
    GopherQuality,
    GopherRepetition,
    Language,
    Quality,
    Rule,
    Toxicity,
    rules_of,
)
from stages.params import StrictModel
from stages.textstats.shards import (
    ShardWriter,
    list_shards,
    read_batches,
    write_manifest,
)

CORPUS = "data/ingest/corpus"
SIGNALS = "data/signals"
SCORES = "data/quality/scores"
QUALITY = "quality_score"
OUT = "data/filter/corpus"
SAMPLES = "data/filter/removed_samples.jsonl"
BIAS_SAMPLES = "data/filter/bias_samples.jsonl"
PROSE_GROUPS = ["gopher_quality", "gopher_repetition", "c4", "fineweb", "language", "toxicity",
                "quality"]


class Params(StrictModel):
    apply: dict[str, list[str]] = Field(
        default_factory=lambda: {"prose": PROSE_GROUPS, "code": ["code", "quality"]},
        description="rule groups applied to each domain, in attribution order",
    )
    gopher_quality: GopherQuality = GopherQuality()
    gopher_repetition: GopherRepetition = GopherRepetition()
    c4: C4 = C4()
    fineweb: FineWeb = FineWeb()
    language: Language = Language()
    toxicity: Toxicity = Toxicity()
    code: Code = Code()
    quality: Quality = Quality()
    samples_per_rule: int = Field(5, ge=0, description="removed documents reported per rule")
    bias_audit: bias.Audit = bias.Audit()
    sample_chars: int = Field(400, ge=1, description="text characters kept per removed sample")

    @field_validator("apply")
    @classmethod
    def _known_groups(cls, apply: dict[str, list[str]]) -> dict[str, list[str]]:
        for domain, groups in apply.items():
            unknown = sorted(set(groups) - set(GROUPS))
            if unknown:
                raise ValueError(f"{domain}: unknown rule groups {unknown}; known: {list(GROUPS)}")
        return apply

    def rules(self, cuts: dict[str, float] | None = None) -> dict[str, list[Rule]]:
        """Active rules per domain, in attribution order; a `top` rule becomes a `min` rule at
        the domain's cut, or is left out where `cuts` is None (to find the cuts)."""
        out = {}
        for domain, groups in self.apply.items():
            rules = [r for g in groups for r in rules_of(g, getattr(self, g))]
            out[domain] = [r if r.kind != "top" else Rule(r.name, r.column, "min", cuts[domain])
                           for r in rules if r.kind != "top" or cuts is not None]
        return out

    def needs_cuts(self) -> bool:
        return any(r.kind == "top" for g in {g for gs in self.apply.values() for g in gs}
                   for r in rules_of(g, getattr(self, g)))


def decide(sig: pa.Table, domains: np.ndarray, rules: dict[str, list[Rule]],
           failing: Counter | None, each: dict[str, tuple] | None = None) -> np.ndarray:
    """Name of the first failed rule per row ("" = kept); counts every failure in `failing` and
    puts each rule's (rows it applies to, rows failing it) in `each`.

    Also what `synth` applies to generated text."""
    first = np.full(len(domains), "", dtype=object)
    for domain in sorted(set(domains)):
        if domain not in rules:
            raise ValueError(f"domain {domain!r} has no rule groups in filter.apply")
        mask = domains == domain
        for rule in rules[domain]:
            fails = rule.fails(sig) & mask
            if failing is not None:
                failing[rule.name] += int(fails.sum())
            if each is not None:
                applies, failed = each.get(rule.name, (mask & False, mask & False))
                each[rule.name] = (applies | mask, failed | fails)
            first[fails & (first == "")] = rule.name
    return first


def _signals(name: str, signals_dir: Path, scores_dir: Path, columns: list[str]) -> pa.Table:
    """One shard's signal columns that the rules read, the quality score joined from its own
    shards."""
    own = [c for c in columns if c != QUALITY]
    table = pq.read_table(signals_dir / name, columns=["doc_id", *own])
    if QUALITY in columns:
        scores = pq.read_table(scores_dir / name, columns=["doc_id", QUALITY])
        if not scores["doc_id"].equals(table["doc_id"]):
            raise ValueError(f"{name}: quality scores do not match the signals; re-run `quality`")
        table = table.append_column(QUALITY, scores[QUALITY])
    return table


def quality_cuts(shards: list[Path], signals_dir: Path, scores_dir: Path,
                 params: Params) -> dict[str, float]:
    """Per domain with a `quality.top_fraction` rule: the score of the last document in that
    fraction (best first) of the documents passing every other rule of the domain."""
    rules = params.rules(cuts=None)
    columns = sorted({r.column for rs in rules.values() for r in rs} | {QUALITY})
    passing: dict[str, list[np.ndarray]] = {}
    for src in shards:
        sig = _signals(src.name, signals_dir, scores_dir, columns)
        domains = np.array(pq.read_table(src, columns=["domain"])["domain"].to_pylist(),
                           dtype=object)
        first = decide(sig, domains, rules, failing=None)
        scores = sig[QUALITY].to_numpy()
        for domain in sorted(set(domains)):
            passing.setdefault(domain, []).append(scores[(domains == domain) & (first == "")])
    cuts = {}
    for domain, groups in sorted(params.apply.items()):
        if "quality" not in groups or params.quality.top_fraction is None:
            continue
        scores = np.sort(np.concatenate(passing.get(domain, [np.zeros(0)])))[::-1]
        k = math.ceil(params.quality.top_fraction * len(scores))
        cuts[domain] = float(scores[k - 1]) if k else 0.0
    return cuts


def _shard(src: Path, signals_dir: Path, scores_dir: Path, out_dir: Path, params: Params,
           cuts: dict[str, float]) -> dict:
    """Filter one shard; returns counts and the removed samples with the smallest doc ids."""
    rules = params.rules(cuts)
    by_name = {r.name: r for rs in rules.values() for r in rs}
    columns = sorted({r.column for r in by_name.values()})
    signals = _signals(src.name, signals_dir, scores_dir, columns)
    schema = pq.read_schema(src)
    counts: dict[str, Counter] = {k: Counter() for k in ("in", "kept", "chars_in", "chars_kept")}
    removed, failing, samples = Counter(), Counter(), {}
    audit: dict[str, Counter] = {}
    audit_samples: dict[str, list] = {}
    offset = 0
    with ShardWriter(out_dir / src.name, schema) as writer:
        for table in read_batches(src, schema.names):
            sig = signals.slice(offset, table.num_rows)
            offset += table.num_rows
            if not sig["doc_id"].equals(table["doc_id"]):
                raise ValueError(f"{src.name}: signals do not match the corpus; re-run `signals`")
            domains = np.array(table["domain"].to_pylist(), dtype=object)
            each: dict[str, tuple] = {}
            first = decide(sig, domains, rules, failing, each)
            texts = [t or "" for t in table["text"].to_pylist()]
            groups = bias.mentions(texts)
            any_term = np.logical_or.reduce(list(groups.values()))
            keep = first == ""
            writer.write(table.filter(pa.array(keep)))
            chars = table["n_chars"].to_numpy()
            for domain in sorted(set(domains)):
                mask = domains == domain
                for key, rows in (("in", mask), ("kept", mask & keep)):
                    counts[key][domain] += int(rows.sum())
                    counts[f"chars_{key}"][domain] += int(chars[rows].sum())
            removed.update(first[~keep])
            doc_ids = np.array(table["doc_id"].to_pylist(), dtype=object)
            for name, (applies, fails) in each.items():
                bias.count(applies, fails, groups, audit.setdefault(name, Counter()))
                rows = np.flatnonzero(fails & any_term)
                rows = rows[np.argsort(doc_ids[rows], kind="stable")[: params.bias_audit.samples]]
                audit_samples[name] = sorted(audit_samples.get(name, []) + [
                    {"rule": name, "doc_id": doc_ids[i], "domain": domains[i],
                     "terms": bias.matched(texts[i]), "text": texts[i][: params.sample_chars]}
                    for i in rows], key=lambda x: x["doc_id"])[: params.bias_audit.samples]
            for name in sorted(set(first[~keep])):
                rows = np.flatnonzero(first == name)
                rows = rows[np.argsort(doc_ids[rows], kind="stable")[: params.samples_per_rule]]
                rule = by_name[name]
                samples.setdefault(name, []).extend(
                    {"rule": name, "doc_id": doc_ids[i], "domain": domains[i],
                     "value": sig[rule.column][int(i)].as_py(),
                     "threshold": list(rule.threshold) if rule.kind == "in" else rule.threshold,
                     "text": table["text"][int(i)].as_py()[: params.sample_chars]}
                    for i in rows
                )
                samples[name] = sorted(samples[name], key=lambda s: s["doc_id"])[
                    : params.samples_per_rule]
    return {"counts": counts, "removed": removed, "failing": failing, "samples": samples,
            "audit": audit, "audit_samples": audit_samples, "rows": writer.rows,
            "columns": schema.names}


def run(params: Params, ctx) -> dict:
    shards = list_shards(ctx.dep(CORPUS))
    signals_dir = ctx.dep(SIGNALS)
    scores_dir = ctx.dep(SCORES)
    for directory, stage in ((signals_dir, "signals"), (scores_dir, "quality")):
        missing = [s.name for s in shards if not (directory / s.name).exists()]
        if missing:
            raise ValueError(f"{directory.name} missing for shards {missing[:5]}; re-run the "
                             f"{stage} stage")
    cuts = quality_cuts(shards, signals_dir, scores_dir, params) if params.needs_cuts() else {}
    for domain, cut in cuts.items():
        ctx.log.info("filter: %s keeps quality score >= %.4f (top %g of what passes the other "
                     "rules)", domain, cut, params.quality.top_fraction)
    out_dir = ctx.out(OUT)
    out_dir.mkdir(parents=True)
    work = partial(_shard, signals_dir=signals_dir, scores_dir=scores_dir, out_dir=out_dir,
                   params=params, cuts=cuts)
    counts: dict[str, Counter] = {k: Counter() for k in ("in", "kept", "chars_in", "chars_kept")}
    removed, failing, samples, rows, columns = Counter(), Counter(), {}, [], []
    audit: dict[str, Counter] = {}
    audit_samples: dict[str, list] = {}
    with ctx.executor() as pool:
        results = ctx.progress(pool.map(work, shards), len(shards), "filter")
        for src, s in zip(shards, results, strict=True):
            for key in counts:
                counts[key].update(s["counts"][key])
            removed.update(s["removed"])
            failing.update(s["failing"])
            for name, items in s["samples"].items():
                samples[name] = sorted(samples.get(name, []) + items, key=lambda x: x["doc_id"])[
                    : params.samples_per_rule]
            for name, c in s["audit"].items():
                audit.setdefault(name, Counter()).update(c)
            for name, items in s["audit_samples"].items():
                audit_samples[name] = sorted(audit_samples.get(name, []) + items,
                                             key=lambda x: x["doc_id"])[: params.bias_audit.samples]
            rows.append((src.name, s["rows"]))
            columns = s["columns"]
    write_manifest(out_dir, rows, columns)
    order = [r.name for rs in params.rules(cuts).values() for r in rs]
    order = list(dict.fromkeys(order))
    ctx.out(SAMPLES).write_text("".join(
        json.dumps(item, sort_keys=True, ensure_ascii=False) + "\n"
        for name in order for item in samples.get(name, [])
    ))
    ctx.out(BIAS_SAMPLES).write_text("".join(
        json.dumps(item, sort_keys=True, ensure_ascii=False) + "\n"
        for name in order for item in audit_samples.get(name, []) if failing[name]
    ))
    audit_report = bias.report({name: audit[name] for name in order if name in audit}, failing,
                               params.bias_audit)
    for flag in audit_report["flagged"]:
        ctx.log.warning("bias audit: %s removes documents of this group more often than the rest "
                        "(filter.bias_audit.max_ratio %g)", flag, params.bias_audit.max_ratio)
    docs_in, kept = sum(counts["in"].values()), sum(counts["kept"].values())
    ctx.log.info("filter: kept %d of %d documents", kept, docs_in)
    return {
        "docs_in": docs_in,
        "docs_kept": kept,
        "docs_removed": docs_in - kept,
        "kept_fraction": round(kept / docs_in, 6) if docs_in else 0.0,
        "chars_in": sum(counts["chars_in"].values()),
        "chars_kept": sum(counts["chars_kept"].values()),
        "by_domain": {
            d: {"in": counts["in"][d], "kept": counts["kept"][d],
                "removed": counts["in"][d] - counts["kept"][d]}
            for d in sorted(counts["in"])
        },
        "removed_by_rule": {name: removed[name] for name in order},
        "failing_by_rule": {name: failing[name] for name in order},
        "quality_cuts": cuts,
        "bias_audit": audit_report,
    }
