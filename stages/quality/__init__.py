"""Model-based quality filtering: a classifier trained in the pipeline, a score for every document.

Per domain, a linear n-gram classifier (`stages.quality.classifier`, DCLM's recipe) learns to tell
a declared high-quality reference from the raw corpus:

- positives: the documents of the ingest sources listed in `positives.sources` (a reference you
  trust: an encyclopedia, a textbook collection) and/or the `positives.textbook_top_fraction` of
  the domain's documents with the highest textbook score (signals; FineWeb-Edu's recipe of
  distilling an annotator into a fast classifier, with the heuristic as annotator);
- negatives: a seeded random sample of the domain's other raw documents, `negatives_per_positive`
  as many.

A seeded `heldout_fraction` of each class is kept out of training for the held-out precision,
recall and ROC AUC in the metrics. Then every corpus document is scored, one shard per corpus
shard, same rows in the same order (`data/quality/scores`), and `filter` keeps by a threshold or a
top fraction per domain (`filter.quality`): changing those re-runs only `filter`; changing these
params retrains. Scoring streams the corpus shard by shard; what is held is ~45 bytes per document
(`Index`) and the labelled texts, at most `max_per_class` per class and domain.
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from stages.params import StrictModel
from stages.quality import report
from stages.quality.classifier import Classifier, Features, fit, held_out, top_ngrams
from stages.runner import StageInputError
from stages.textstats.shards import ShardWriter, list_shards, read_batches, units, write_manifest

CORPUS = "data/ingest/corpus"
SIGNALS = "data/signals"
OUT = "data/quality"
MODELS = "data/quality/classifier"
SCORES = "data/quality/scores"
PLOT = "reports/quality/scores.png"
COLUMN = "quality_score"


class Positives(StrictModel):
    sources: list[str] = Field(default_factory=list, description="ingest sources whose "
                               "documents are the high-quality reference")
    textbook_top_fraction: float = Field(0.1, ge=0, le=1, description="and, per domain, this "
                                         "fraction of documents with the highest textbook score")


class Params(StrictModel):
    positives: Positives = Positives()
    negatives_per_positive: float = Field(1.0, gt=0, description="random raw documents per "
                                          "positive, per domain")
    heldout_fraction: float = Field(0.2, ge=0, lt=1, description="of each class, for the "
                                    "held-out precision and recall")
    min_examples: int = Field(4, ge=2, description="per domain and class, or the stage fails")
    max_per_class: int | None = Field(
        20_000, ge=2, description="labelled documents per domain and class: a seeded sample "
        "of a class that has more (training holds ~6 KB per labelled document); null: all")
    features: Features = Features()
    c: float = Field(1.0, gt=0, description="inverse L2 regularisation strength")
    top_ngrams: int = Field(15, ge=0, description="most rewarded / penalised n-grams reported")


class Index(NamedTuple):
    """Every corpus document in corpus order, compactly (~45 bytes each): doc id bytes, source
    and domain codes (into `sources`, `domains`), textbook score."""

    doc_id: np.ndarray  # S32: the hex id's ASCII, so byte order is the id's string order
    source: np.ndarray
    domain: np.ndarray
    textbook_score: np.ndarray
    sources: list[str]
    domains: list[str]

    def id(self, row: int) -> str:
        return self.doc_id[row].decode()


def _index(corpus: Path, signals: Path) -> Index:
    cols: dict[str, list[np.ndarray]] = {"doc_id": [], "source": [], "domain": [], "score": []}
    names: dict[str, dict[str, int]] = {"source": {}, "domain": {}}
    for shard in list_shards(corpus):
        t = pq.read_table(shard, columns=["doc_id", "source", "domain"])
        s = pq.read_table(signals / shard.name, columns=["doc_id", "textbook_score"])
        if not s["doc_id"].equals(t["doc_id"]):
            raise StageInputError(f"{shard.name}: signals do not match the corpus; re-run "
                                  "`signals`")
        cols["doc_id"].append(t["doc_id"].to_numpy().astype("S32"))
        for key, codes in names.items():
            enc = t[key].combine_chunks().dictionary_encode()
            local = [codes.setdefault(v, len(codes)) for v in enc.dictionary.to_pylist()]
            cols[key].append(np.asarray(local, np.int32)[enc.indices.to_numpy()])
        cols["score"].append(s["textbook_score"].to_numpy().astype(np.float64))
    empty = {"doc_id": np.zeros(0, "S32"), "score": np.zeros(0)}
    return Index(*(np.concatenate(cols[k] or [empty.get(k, np.zeros(0, np.int32))])
                   for k in ("doc_id", "source", "domain", "score")),
                 list(names["source"]), list(names["domain"]))


def _labels(idx: Index, domain: str, p: Params, seed: int) -> dict:
    """Row indices of one domain's positives and negatives, each split train / held-out."""
    rows = np.flatnonzero(idx.domain == idx.domains.index(domain))
    positive = np.isin(idx.source[rows], [idx.sources.index(s) for s in p.positives.sources
                                          if s in idx.sources])
    k = math.ceil(p.positives.textbook_top_fraction * len(rows))
    ranked = np.lexsort((idx.doc_id[rows], -idx.textbook_score[rows]))  # best first; ties: id
    positive[ranked[:k]] = True
    pos, rest = rows[positive], rows[~positive]
    rng = np.random.default_rng([seed, *domain.encode()])
    n_neg = min(len(rest), round(p.negatives_per_positive * len(pos)))
    neg = np.sort(rng.permutation(rest)[:n_neg])
    if p.max_per_class is not None:  # a seeded sample of each class, of its own stream
        cap = np.random.default_rng([seed, 1, *domain.encode()])
        pos, neg = (np.sort(cap.choice(got, p.max_per_class, replace=False))
                    if len(got) > p.max_per_class else got for got in (pos, neg))
    for name, got in (("positives", pos), ("negatives", neg)):
        if len(got) < p.min_examples:
            raise StageInputError(
                f"quality: domain {domain!r} has {len(got)} {name} (quality.min_examples "
                f"{p.min_examples}); list a reference source in quality.positives.sources or "
                "raise quality.positives.textbook_top_fraction")
    split = {}
    for name, got in (("pos", pos), ("neg", neg)):
        held = np.sort(rng.permutation(got)[: math.floor(p.heldout_fraction * len(got))])
        split[name] = (np.setdiff1d(got, held), held)
    return split


def _texts(corpus: Path, wanted: set[str]) -> dict[str, str]:
    """The labelled documents' texts (only theirs become Python strings)."""
    out, ids = {}, pa.array(sorted(wanted), pa.string())
    for shard in list_shards(corpus):
        for table in read_batches(shard, ["doc_id", "text"]):
            hits = table.filter(pc.is_in(table["doc_id"], value_set=ids))
            out.update(zip(hits["doc_id"].to_pylist(), hits["text"].to_pylist(), strict=True))
    return out


def _score_unit(unit, models: Path, domains: list[str]) -> pa.Table:
    """Scores of one work unit's documents by their domain's classifier."""
    clfs = {d: Classifier.load(models, d) for d in domains}
    ids, scores = [], []
    for table in unit.read(["doc_id", "domain", "text"]):
        dom = np.array(table["domain"].to_pylist(), dtype=object)
        texts = table["text"].to_pylist()
        s = np.zeros(len(texts))
        for d in sorted(set(dom)):
            rows = np.flatnonzero(dom == d)
            s[rows] = clfs[d].score([texts[i] for i in rows])
        ids += table["doc_id"].to_pylist()
        scores.append(s)
    return pa.table({"doc_id": pa.array(ids, pa.string()),
                     COLUMN: pa.array(np.concatenate(scores) if scores else np.zeros(0))})


def run(params: Params, ctx) -> dict:
    corpus, seed = ctx.dep(CORPUS), ctx.base.seed
    idx = _index(corpus, ctx.dep(SIGNALS))
    missing = sorted(set(params.positives.sources) - set(idx.sources))
    if missing:
        raise StageInputError(f"quality.positives.sources: no corpus documents from {missing}; "
                              f"the corpus's sources are {sorted(idx.sources)}")
    domains = sorted(idx.domains)
    splits = {d: _labels(idx, d, params, seed) for d in domains}
    wanted = {idx.id(i) for s in splits.values() for part in s.values() for rows in part
              for i in rows}
    texts = _texts(corpus, wanted)
    models = ctx.out(MODELS)
    models.mkdir(parents=True)
    metrics, held_scores = {}, {}
    for d in domains:
        (pos_train, pos_held), (neg_train, neg_held) = splits[d]["pos"], splits[d]["neg"]
        train = np.concatenate([pos_train, neg_train])
        labels = np.r_[np.ones(len(pos_train)), np.zeros(len(neg_train))].astype(int)
        train_texts = [texts[idx.id(i)] for i in train]
        clf = fit(train_texts, labels, params.features, params.c, seed)
        clf.save(models, d)
        held = np.concatenate([pos_held, neg_held])
        held_labels = np.r_[np.ones(len(pos_held)), np.zeros(len(neg_held))].astype(int)
        scores = clf.score([texts[idx.id(i)] for i in held])
        held_scores[d] = (scores[held_labels == 1], scores[held_labels == 0])
        metrics[d] = {
            "train": {"positives": len(pos_train), "negatives": len(neg_train)},
            "heldout": held_out(scores, held_labels).as_dict() if len(held) else None,
            "top_ngrams": top_ngrams(clf, train_texts, params.top_ngrams),
        }
        ctx.log.info("quality[%s]: trained on %d positives / %d negatives; held-out %s", d,
                     len(pos_train), len(neg_train), metrics[d]["heldout"])
    del texts
    out_dir = ctx.out(SCORES)
    out_dir.mkdir(parents=True)
    shards, rows, all_scores = list_shards(corpus), [], []
    work = units(shards)
    with ctx.executor() as pool:
        tables = ctx.progress(pool.map(partial(_score_unit, models=models, domains=domains), work),
                              len(work), "quality scores")
        writer = None
        for unit, table in zip(work, tables, strict=True):
            if writer is None or writer.path.name != unit.path.name:
                if writer is not None:
                    rows.append((writer.path.name, writer.close()))
                writer = ShardWriter(out_dir / unit.path.name, table.schema)
            writer.write(table)
            all_scores.append(table[COLUMN].to_numpy())
    if writer is not None:
        rows.append((writer.path.name, writer.close()))
    write_manifest(out_dir, rows, ["doc_id", COLUMN])
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    of_domain = {d: idx.domain == idx.domains.index(d) for d in domains}
    for d in domains:
        mine = scores[of_domain[d]]
        metrics[d]["scores"] = {"docs": len(mine), "mean": round(float(mine.mean()), 6),
                                **{f"p{q}": round(float(np.percentile(mine, q)), 6)
                                   for q in (10, 25, 50, 75, 90)}}
    plot = ctx.out(PLOT)
    plot.parent.mkdir(parents=True, exist_ok=True)
    report.histograms({d: scores[of_domain[d]] for d in domains}, held_scores, plot)
    (ctx.out(OUT) / "classifier.json").write_text(json.dumps(
        {"domains": domains, "params": params.model_dump(mode="json"), "seed": seed},
        indent=2, sort_keys=True) + "\n")
    return {"docs": len(scores), "domains": metrics}
