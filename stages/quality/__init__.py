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
params retrains. Scoring streams the corpus shard by shard; only the labelled texts are held.
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from stages.params import StrictModel
from stages.quality import report
from stages.quality.classifier import Classifier, Features, fit, held_out, top_ngrams
from stages.runner import StageInputError
from stages.textstats.shards import ShardWriter, list_shards, units, write_manifest

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
    features: Features = Features()
    c: float = Field(1.0, gt=0, description="inverse L2 regularisation strength")
    top_ngrams: int = Field(15, ge=0, description="most rewarded / penalised n-grams reported")


def _index(corpus: Path, signals: Path) -> dict[str, np.ndarray]:
    """doc_id, source, domain and textbook score of every corpus document, in corpus order."""
    cols: dict[str, list] = {"doc_id": [], "source": [], "domain": [], "textbook_score": []}
    for shard in list_shards(corpus):
        t = pq.read_table(shard, columns=["doc_id", "source", "domain"])
        s = pq.read_table(signals / shard.name, columns=["doc_id", "textbook_score"])
        if not s["doc_id"].equals(t["doc_id"]):
            raise StageInputError(f"{shard.name}: signals do not match the corpus; re-run "
                                  "`signals`")
        for key in ("doc_id", "source", "domain"):
            cols[key] += t[key].to_pylist()
        cols["textbook_score"] += s["textbook_score"].to_pylist()
    return {k: np.array(v, dtype=np.float64 if k == "textbook_score" else object)
            for k, v in cols.items()}


def _labels(idx: dict[str, np.ndarray], domain: str, p: Params, seed: int) -> dict:
    """Row indices of one domain's positives and negatives, each split train / held-out."""
    rows = np.flatnonzero(idx["domain"] == domain)
    positive = np.isin(idx["source"][rows], p.positives.sources)
    k = math.ceil(p.positives.textbook_top_fraction * len(rows))
    ranked = sorted(range(len(rows)), key=lambda i: (-idx["textbook_score"][rows[i]],
                                                     idx["doc_id"][rows[i]]))
    positive[ranked[:k]] = True
    pos, rest = rows[positive], rows[~positive]
    rng = np.random.default_rng([seed, *domain.encode()])
    n_neg = min(len(rest), round(p.negatives_per_positive * len(pos)))
    neg = np.sort(rng.permutation(rest)[:n_neg])
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
    out = {}
    for shard in list_shards(corpus):
        for batch in pq.ParquetFile(shard).iter_batches(columns=["doc_id", "text"]):
            for doc_id, text in zip(*batch.to_pydict().values(), strict=True):
                if doc_id in wanted:
                    out[doc_id] = text
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
    missing = sorted(set(params.positives.sources) - set(idx["source"]))
    if missing:
        raise StageInputError(f"quality.positives.sources: no corpus documents from {missing}; "
                              f"the corpus's sources are {sorted(set(idx['source']))}")
    domains = sorted(set(idx["domain"]))
    splits = {d: _labels(idx, d, params, seed) for d in domains}
    wanted = {idx["doc_id"][i] for s in splits.values() for part in s.values()
              for rows in part for i in rows}
    texts = _texts(corpus, wanted)
    models = ctx.out(MODELS)
    models.mkdir(parents=True)
    metrics, held_scores = {}, {}
    for d in domains:
        (pos_train, pos_held), (neg_train, neg_held) = splits[d]["pos"], splits[d]["neg"]
        train = np.concatenate([pos_train, neg_train])
        labels = np.r_[np.ones(len(pos_train)), np.zeros(len(neg_train))].astype(int)
        train_texts = [texts[idx["doc_id"][i]] for i in train]
        clf = fit(train_texts, labels, params.features, params.c, seed)
        clf.save(models, d)
        held = np.concatenate([pos_held, neg_held])
        held_labels = np.r_[np.ones(len(pos_held)), np.zeros(len(neg_held))].astype(int)
        scores = clf.score([texts[idx["doc_id"][i]] for i in held])
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
    for d in domains:
        mine = scores[idx["domain"] == d]
        metrics[d]["scores"] = {"docs": len(mine), "mean": round(float(mine.mean()), 6),
                                **{f"p{q}": round(float(np.percentile(mine, q)), 6)
                                   for q in (10, 25, 50, 75, 90)}}
    plot = ctx.out(PLOT)
    plot.parent.mkdir(parents=True, exist_ok=True)
    report.histograms({d: scores[idx["domain"] == d] for d in domains}, held_scores, plot)
    (ctx.out(OUT) / "classifier.json").write_text(json.dumps(
        {"domains": domains, "params": params.model_dump(mode="json"), "seed": seed},
        indent=2, sort_keys=True) + "\n")
    return {"docs": len(scores), "domains": metrics}
