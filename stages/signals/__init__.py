"""Per-document quality signals, computed once per corpus version and read by `filter`.

One output shard per corpus shard, the same rows in the same order, keyed by `doc_id`, no text.
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


def run(params: Params, ctx) -> dict:
    shards = list_shards(ctx.dep(CORPUS))
    work = units(shards)
    out_dir = ctx.out(OUT)
    out_dir.mkdir(parents=True)
    docs, langs, flags, sums, rows = Counter(), Counter(), Counter(), {}, []
    writer, columns = None, []
    cache = DocCache(ctx.root / ctx.runtime.doc_cache if ctx.runtime.doc_cache else None,
                     version(params.model_dump(mode="json"),
                             [ROOT / f for f in ctx.stage.code_files()]))
    computed = 0
    with ctx.executor() as pool:
        results = ctx.progress(pool.map(partial(_unit, params=params, cache=cache), work),
                               len(work), "signals")
        for unit, (table, s, fresh) in zip(work, results, strict=True):
            computed += cache.store(fresh)
            if writer is None or writer.path != out_dir / unit.path.name:
                if writer is not None:
                    rows.append((writer.path.name, writer.close()))
                writer = ShardWriter(out_dir / unit.path.name, table.schema)
            writer.write(table)
            columns = table.schema.names
            docs.update(s["docs"])
            langs.update(s["langs"])
            flags.update(s["flags"])
            for domain, col_sums in s["sums"].items():
                sums.setdefault(domain, Counter()).update(col_sums)
    if writer is not None:
        rows.append((writer.path.name, writer.close()))
    write_manifest(out_dir, rows, columns)
    ctx.log.info("signals: %d documents in %d shards; %d distinct texts computed, the rest "
                 "from the document cache", sum(docs.values()), len(shards), computed)
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
