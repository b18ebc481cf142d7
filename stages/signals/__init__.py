"""Per-document quality signals, computed once per corpus version and read by `filter`.

One output shard per corpus shard, the same rows in the same order, keyed by `doc_id`, no text.
A corpus shard whose bytes were seen before (with the same params and code) gets its output copied
from the shard cache (`<doc_cache>/signals-shards`), and within the others only the texts the
document cache lacks are computed: a refresh's work follows what changed.
Every document gets every signal whatever its domain: which rules apply to which domain, and at
which thresholds, is the filter's decision, so changing it never recomputes signals.
"""

from __future__ import annotations

from collections import Counter
from functools import partial

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from stages.params import StrictModel
from stages.registry import ROOT
from stages.signals import heuristics, language, textbook, toxicity
from stages.textstats import tokenize
from stages.textstats.doc_cache import DocCache, Fresh, version
from stages.textstats.shard_cache import ShardCache, file_key
from stages.textstats.shards import (
    ShardWriter,
    Unit,
    list_shards,
    units,
    write_manifest,
)

CORPUS = "data/ingest/corpus"
OUT = "data/signals"
SUMMARY = ("gopher_words", "gopher_alpha_words_ratio", "gopher_dup_5gram_char_frac",
           "fineweb_line_punct_ratio", "lang_score", "toxicity", "toxicity_prob", "textbook_score",
           "code_mean_line_length", "code_alnum_frac", "code_comment_frac")


class Params(StrictModel):
    fineweb_short_line_length: int = Field(30, ge=1, description="FineWeb's short-line length")
    langid_max_chars: int = Field(2000, ge=1, description="leading characters read by language ID")
    toxicity_classifier: str = Field("wordlist", description="the `toxicity` column's scorer "
                                     "(signals.toxicity.CLASSIFIERS)")
    toxicity_prob_classifier: str = Field("profanity_check", description="the `toxicity_prob` "
                                          "column's scorer (signals.toxicity.CLASSIFIERS)")

    @field_validator("toxicity_classifier", "toxicity_prob_classifier")
    @classmethod
    def _registered(cls, name: str) -> str:
        if name not in toxicity.CLASSIFIERS:
            known = sorted(toxicity.CLASSIFIERS)
            raise ValueError(f"unknown classifier {name!r}; registered: {known}")
        return name


def compute(texts: list[str], params: Params) -> dict[str, np.ndarray | list]:
    """Every signal for a batch of texts, one column each."""
    tokens = tokenize(texts)
    cols: dict = heuristics.compute(texts, tokens, params.fineweb_short_line_length)
    langs, scores = language.identify(texts, params.langid_max_chars)
    cols["lang"], cols["lang_score"] = langs, scores
    batch = toxicity.Batch(texts, tokens, langs)
    cols["toxicity"] = toxicity.classifier(params.toxicity_classifier).score(batch)
    cols["toxicity_prob"] = toxicity.classifier(params.toxicity_prob_classifier).score(batch)
    cols["textbook_score"] = textbook.score(texts, tokens, cols["gopher_dup_5gram_char_frac"])
    return cols


def _table(cols: dict[str, np.ndarray | list]) -> pa.Table:
    return pa.table({
        k: pa.array(v, pa.string()) if isinstance(v, list) else pa.array(v) for k, v in cols.items()
    })


def _unit(unit: Unit, params: Params, cache: DocCache) -> tuple[pa.Table, dict, list[Fresh]]:
    """Signals of one work unit, per-domain sums for the metrics, and the newly computed rows."""
    tables, docs, langs, flags, sums, fresh = [], Counter(), Counter(), Counter(), {}, []
    for table in unit.read(["doc_id", "domain", "text"]):
        texts = [t or "" for t in table["text"].to_pylist()]
        sig, rows = cache.compute(texts, lambda ts: _table(compute(ts, params)))
        fresh.append(rows)
        cols = {c: sig[c].to_numpy(zero_copy_only=False) for c in sig.column_names}
        tables.append(sig.add_column(0, "doc_id", table["doc_id"].combine_chunks()))
        domains = np.array(table["domain"].to_pylist(), dtype=object)
        for domain in sorted(set(domains)):
            mask = domains == domain
            docs[domain] += int(mask.sum())
            col_sums = sums.setdefault(domain, Counter())
            for col in SUMMARY:
                col_sums[col] += float(cols[col][mask].sum())
        langs.update(np.array(cols["lang"], dtype=object)[domains == "prose"])
        flags.update({"c4_lorem_ipsum": int(cols["c4_lorem_ipsum"].sum()),
                      "c4_curly_bracket": int(cols["c4_curly_bracket"].sum()),
                      "toxicity_above_0": int((cols["toxicity"] > 0).sum()),
                      "toxicity_prob_above_0.5": int((cols["toxicity_prob"] > 0.5).sum())})
    if not tables:  # an empty shard still gets an (empty) signals shard
        empty = _table(compute([], params))
        tables.append(empty.add_column(0, "doc_id", pa.array([], pa.string())))
    summary = {"docs": docs, "langs": langs, "flags": flags, "sums": sums}
    return pa.concat_tables(tables), summary, fresh


def _add(total: dict, part: dict) -> None:
    """Add one unit's or shard's summary into `total` (sums in a fixed order: a shard's sums are
    added up the same way whether it was computed now or copied from the shard cache)."""
    for key in ("docs", "langs", "flags"):
        total.setdefault(key, Counter()).update(part[key])
    for domain, col_sums in part["sums"].items():
        total.setdefault("sums", {}).setdefault(domain, Counter()).update(col_sums)


def run(params: Params, ctx) -> dict:
    shards = list_shards(ctx.dep(CORPUS))
    out_dir = ctx.out(OUT)
    out_dir.mkdir(parents=True)
    cache_dir = ctx.root / ctx.runtime.doc_cache if ctx.runtime.doc_cache else None
    code = version(params.model_dump(mode="json"), [ROOT / f for f in ctx.stage.code_files()])
    cache = DocCache(cache_dir, code)
    # a corpus shard seen before (same bytes, same params and code): its output is copied
    shard_cache = ShardCache(cache_dir / "signals-shards" if cache_dir else None)
    keys = {p: file_key(code, p) if cache_dir else None for p in shards}
    cached = {p: shard_cache.get(keys[p]) for p in shards}
    work = units([p for p in shards if cached[p] is None])
    per_shard = Counter(u.path for u in work)
    total: dict = {"docs": Counter(), "langs": Counter(), "flags": Counter(), "sums": {}}
    rows, columns, computed = [], [], 0
    with ctx.executor() as pool:
        results = iter(ctx.progress(pool.map(partial(_unit, params=params, cache=cache), work),
                                    len(work), "signals"))
        for path in shards:
            if cached[path] is not None:
                files, meta = cached[path]
                ShardCache.restore(files, out_dir, [path.name])
                rows.append((path.name, meta["rows"]))
                columns = meta["columns"]
                _add(total, meta["summary"])
                continue
            summary: dict = {"docs": Counter(), "langs": Counter(), "flags": Counter(),
                             "sums": {}}
            writer = None
            for _ in range(per_shard[path]):  # its units' results, in order
                table, s, fresh = next(results)
                computed += cache.store(fresh)
                if writer is None:
                    writer = ShardWriter(out_dir / path.name, table.schema)
                writer.write(table)
                columns = table.schema.names
                _add(summary, s)
            rows.append((path.name, writer.close()))
            shard_cache.put(keys[path], [writer.path], {
                "rows": rows[-1][1], "columns": columns,
                "summary": {k: dict(v) if k != "sums" else {d: dict(c) for d, c in v.items()}
                            for k, v in summary.items()}})
            _add(total, summary)
    write_manifest(out_dir, rows, columns)
    docs, langs, flags, sums = (total[k] for k in ("docs", "langs", "flags", "sums"))
    ctx.log.info("signals: %d documents in %d shards (%d copied from the shard cache); %d "
                 "distinct texts computed, the rest from the document cache",
                 sum(docs.values()), len(shards), shard_cache.hits, computed)
    return {
        "docs": sum(docs.values()),
        "shards": len(shards),
        "docs_by_domain": dict(sorted(docs.items())),
        "prose_languages": dict(sorted(langs.most_common(10))),
        "flagged": dict(sorted(flags.items())),
        "mean_by_domain": {
            d: {c: round(v / docs[d], 6) for c, v in sorted(sums[d].items())} for d in sorted(sums)
        },
    }
