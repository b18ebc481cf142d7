"""Decontamination, exact and near-duplicate removal, and SoftDedup sampling weights.

In order, each step on what the previous one kept:
1. decontamination: documents sharing any `decontam_ngram`-gram of normalised words with the
   held-out evaluation texts are removed;
2. exact duplicates: same text after NFKC, lower-casing and whitespace collapsing;
3. near duplicates: MinHash (rensa) of word `shingle_size`-gram shingles (lower-cased, accents and
   punctuation dropped, digits as 0), LSH with `bands` x `rows` (by default the shape that finds
   a pair at `jaccard_threshold` with probability >= 1 - `false_negative_rate`, the most rows per
   band among those), every candidate pair verified by its true shingle Jaccard >=
   `jaccard_threshold` (not the signatures' estimate), then union-find, so chains A~B~C collapse
   even when A and C are not similar;
4. SoftDedup weights for the survivors (see `softdedup`), a `weight` column of the output.
Which member of a duplicate group is kept is `keep`: `longest` (default; ties: smallest doc_id)
or `first`, the earliest in input order (shard order, then row order), which is what datatrove's
MinHash dedup keeps.

Memory: per document only a few scalars stay in memory (~0.2 KB with the grouping's transients);
texts are streamed shard by shard; signatures, their LSH band keys and the tokens go to scratch
files per unit, read back one band at a time for the candidate pairs, for the candidates only
when pairs are verified (shingles rebuilt from the tokens) and for the report's examples.
"""

from __future__ import annotations

import json
import shutil
import unicodedata
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, field_validator, model_validator

from stages.dedup import minhash, report, softdedup
from stages.executor import Executor
from stages.params import StrictModel
from stages.registry import ROOT
from stages.textstats import (
    ngram_hashes,
    ngram_valid,
    normalized_hashes,
    shingle_rows,
    stable_hashes,
)
from stages.textstats.doc_cache import DocCache, Fresh, version
from stages.textstats.shards import (
    ShardWriter,
    Unit,
    list_shards,
    read_batches,
    units,
    write_manifest,
)

CORPUS = "data/filter/corpus"
HELDOUT = "data/ingest/heldout"
OUT = "data/dedup/corpus"
EXAMPLES = "data/dedup/examples.json"
PLOT = "reports/dedup/weights.png"
S_CURVE = "reports/dedup/lsh_s_curve.png"


class SoftDedup(StrictModel):
    order: int = Field(4, ge=1, le=8, description="n-gram order of the commonness model")
    buckets_log2: int = Field(22, ge=8, le=30, description="log2 of hashed table size per order")
    concentration: float = Field(1.0, gt=0, description="Dirichlet interpolation strength")
    clip: tuple[float, float] = Field((0.1, 10.0), description="weight range, x the median")

    @field_validator("clip")
    @classmethod
    def _ordered(cls, clip: tuple[float, float]) -> tuple[float, float]:
        if not 0 < clip[0] <= 1 <= clip[1]:
            raise ValueError("need 0 < low <= 1 <= high")
        return clip


class Params(StrictModel):
    shingle_size: int = Field(5, ge=1, description="words per MinHash shingle")
    num_perm: int = Field(112, ge=1, description="MinHash permutations")
    jaccard_threshold: float = Field(0.7, gt=0, le=1, description="true shingle Jaccard at "
                                     "which a candidate pair is a near duplicate")
    false_negative_rate: float = Field(0.05, gt=0, lt=1, description="the most often LSH may "
                                       "miss a pair at the threshold: picks bands x rows")
    bands: int | None = Field(None, ge=1, description="LSH bands (with rows: overrides the "
                              "shape from false_negative_rate)")
    rows: int | None = Field(None, ge=1, description="signature rows per LSH band")
    decontam_ngram: int = Field(13, ge=1, description="n-gram length matched against held-out")
    keep: Literal["longest", "first"] = Field(
        "longest", description="member kept per duplicate group: `longest` (ties: smallest "
        "doc_id) or `first`, the earliest in input order (shard, then row; datatrove's choice)")
    softdedup: SoftDedup = SoftDedup()
    examples: int = Field(5, ge=0, description="examples per duplicate kind in the report")
    example_chars: int = Field(300, ge=1, description="text characters per example")

    @model_validator(mode="after")
    def _lsh_fits(self) -> Params:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both bands and rows, or neither (the shape then follows from "
                             "jaccard_threshold and false_negative_rate)")
        bands, rows = self.lsh_shape()
        if bands * rows > self.num_perm:
            raise ValueError(f"bands x rows = {bands * rows} exceeds num_perm = {self.num_perm}")
        return self

    def lsh_shape(self) -> tuple[int, int]:
        """(bands, rows): the params' own, or the shape that meets the false-negative rate."""
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        return minhash.lsh_shape(self.num_perm, self.jaccard_threshold, self.false_negative_rate)


def _exact_key(text: str) -> str:
    """What exact duplicates share (hashed to 64 bits: collisions ~1e-8 at a million docs)."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def heldout_ngrams(shards: list[Path], n: int) -> np.ndarray:
    """Sorted hashes of every n-gram of normalised words in the held-out texts."""
    found = [np.zeros(0, dtype=np.uint64)]
    for shard in shards:
        for table in read_batches(shard, ["text"]):
            h, offsets = normalized_hashes(t or "" for t in table["text"].to_pylist())
            found.append(ngram_hashes(h, n)[n - 1][ngram_valid(offsets, n)])
    return np.unique(np.concatenate(found))


def text_features(texts: list[str], params: Params, seed: int) -> dict[str, np.ndarray]:
    """What dedup computes per text, whatever the rest of the corpus: exact key, MinHash
    signature, whether it has shingles, and its normalised word hashes (`h`, `counts`)."""
    h, offsets = normalized_hashes(texts)
    shingles, rows = shingle_rows(h, offsets, params.shingle_size)
    return {"exact": stable_hashes(map(_exact_key, texts), len(texts)),
            "sig": minhash.signatures(shingles, rows, params.num_perm, seed),
            "shingled": np.diff(rows) > 0, "h": h, "counts": np.diff(offsets)}


def heldout_hits(h: np.ndarray, counts: np.ndarray, heldout: np.ndarray, n: int) -> np.ndarray:
    """Per text, how many of its word n-grams occur in the held-out texts."""
    offsets = np.r_[0, np.cumsum(counts)]
    starts = np.flatnonzero(ngram_valid(offsets, n))
    found = np.isin(ngram_hashes(h, n)[n - 1][starts], heldout)
    doc = np.searchsorted(offsets, starts[found], side="right") - 1
    return np.bincount(doc, minlength=len(counts))


def scan_texts(texts: list[str], heldout: np.ndarray, params: Params, seed: int) -> dict:
    """Per text: held-out n-gram hits and its `text_features`."""
    features = text_features(texts, params, seed)
    hits = heldout_hits(features["h"], features["counts"], heldout, params.decontam_ngram)
    return {**features, "hits": hits}


def _feature_table(features: dict[str, np.ndarray]) -> pa.Table:
    """`text_features` as Arrow columns, the form the document cache keeps."""
    sig = features["sig"]
    return pa.table({
        "exact": features["exact"], "shingled": features["shingled"],
        "sig": pa.FixedSizeListArray.from_arrays(pa.array(sig.ravel()), sig.shape[1]),
        "h": pa.LargeListArray.from_arrays(pa.array(np.r_[0, np.cumsum(features["counts"])]),
                                           pa.array(features["h"], pa.uint64()))})


def _features(table: pa.Table, num_perm: int) -> dict[str, np.ndarray]:
    """`text_features` back from `_feature_table`'s columns."""
    h = table["h"].combine_chunks()
    return {"exact": table["exact"].to_numpy(), "shingled": table["shingled"].to_numpy(),
            "sig": table["sig"].combine_chunks().flatten().to_numpy().reshape(-1, num_perm),
            "h": h.flatten().to_numpy(), "counts": pc.list_value_length(h).to_numpy()}


def shingle_sets(h: np.ndarray, counts: np.ndarray, docs: np.ndarray, n: int
                 ) -> list[np.ndarray]:
    """Sorted unique shingle hashes of the documents `docs`, from their normalised word hashes
    (`h`, `counts` words per document, as `scan_texts` returns them)."""
    if not len(docs):
        return []
    offsets = np.r_[0, np.cumsum(counts)]
    sel = counts[docs]
    words = np.repeat(offsets[docs] - np.r_[0, np.cumsum(sel)[:-1]], sel) + np.arange(sel.sum())
    shingles, rows = shingle_rows(h[words], np.r_[0, np.cumsum(sel)], n)
    doc = np.repeat(np.arange(len(docs)), np.diff(rows))
    order = np.lexsort((shingles, doc))  # one sort for all documents, then split per document
    shingles, doc = shingles[order], doc[order]
    new = np.r_[True, (shingles[1:] != shingles[:-1]) | (doc[1:] != doc[:-1])][: len(doc)]
    shingles, doc = shingles[new], doc[new]
    return np.split(shingles, np.searchsorted(doc, np.arange(1, len(docs))))


VERIFY_DOCS = 100_000  # documents whose shingle sets are held at once while pairs are verified


def pair_jaccards(a: np.ndarray, b: np.ndarray, sets_of: Callable[[np.ndarray], list],
                  max_docs: int) -> np.ndarray:
    """True shingle Jaccard of every candidate pair (a[i], b[i]), verified in runs of consecutive
    pairs that involve at most `max_docs` documents: the shingle sets held (~1 KB a document)
    stay bounded however many documents have near duplicates. `sets_of(docs)` reads them."""
    out = np.empty(len(a))
    step = max(1, max_docs // 2)
    for lo in range(0, len(a), step):
        part = slice(lo, lo + step)
        involved = np.unique(np.r_[a[part], b[part]])
        sets = dict(zip(involved.tolist(), sets_of(involved), strict=True))
        out[part] = minhash.jaccard(sets, a[part], b[part])
    return out


def duplicates(alive: np.ndarray, exact: np.ndarray, keys: Callable[[int], np.ndarray],
               shingled: np.ndarray, rank: np.ndarray, params: Params,
               shingles: Callable[[np.ndarray], list]) -> tuple[np.ndarray, np.ndarray, dict]:
    """Representatives among the `alive` documents: exact groups first, then MinHash near groups
    of what survives; each group keeps its member with the smallest `rank`. `keys(band)` gives
    every document's LSH bucket key in a band (`minhash.band_keys`), one band at a time;
    `shingles(docs)` the documents' sorted unique shingle hashes (`shingle_sets`), for the true
    Jaccard of every candidate pair.

    Returns (exact_rep, near_rep, lsh) where `x_rep[i] != i` marks document i as a duplicate of
    `x_rep[i]`, and `lsh` has the candidate and verified pair counts.
    """
    index = np.arange(len(alive))
    live = np.flatnonzero(alive)
    exact_rep = index.copy()
    exact_group = np.unique(exact[live], return_inverse=True)[1]
    exact_rep[live] = live[_representatives(exact_group, rank[live])]
    cands = np.flatnonzero(alive & (exact_rep == index) & shingled)
    bands, _ = params.lsh_shape()
    a, b = minhash.candidate_pairs((keys(band)[cands] for band in range(bands)), len(cands))
    pair_jaccard = pair_jaccards(a, b, lambda docs: shingles(cands[docs]), VERIFY_DOCS)
    verified = pair_jaccard >= params.jaccard_threshold
    near_rep = index.copy()
    root = minhash.components(len(cands), a[verified], b[verified])
    near_rep[cands] = cands[_representatives(root, rank[cands])]
    return exact_rep, near_rep, {"candidates": cands, "candidate_pairs": len(a),
                                 "verified_pairs": int(verified.sum()),
                                 "pair_jaccard": pair_jaccard}


def _scan(unit: Unit, scratch: Path, params: Params, seed: int, cache: DocCache
          ) -> tuple[dict, list[Fresh]]:
    """Pass 1 over a unit: contamination and exact keys back to the stage; MinHash signatures
    (those of texts seen before from the document cache), their LSH band keys and the tokens to
    scratch (`Scratch`). Returns the newly computed rows too."""
    heldout = np.load(scratch / "heldout.npy")
    parts: dict[str, list] = {k: [v] for k, v in _empty(params).items()}
    fresh = []
    for table in unit.read(["doc_id", "text", "n_chars"]):
        texts = [t or "" for t in table["text"].to_pylist()]
        merged, rows = cache.compute(
            texts, lambda ts: _feature_table(text_features(ts, params, seed)))
        fresh.append(rows)
        features = _features(merged, params.num_perm)
        features["hits"] = heldout_hits(features["h"], features["counts"], heldout,
                                        params.decontam_ngram)
        parts["doc_id"].append(np.array([d.encode() for d in table["doc_id"].to_pylist()],
                                        dtype="S"))
        parts["n_chars"].append(table["n_chars"].to_numpy())
        for key, value in features.items():
            parts[key].append(value)
    out = {k: np.concatenate(v) for k, v in parts.items()}
    np.savez(scratch / f"{unit.name}.npz", h=out.pop("h"), counts=out.pop("counts"))
    sig = out.pop("sig")
    np.save(scratch / f"{unit.name}.sig.npy", sig)
    np.save(scratch / f"{unit.name}.keys.npy", minhash.band_keys(sig, *params.lsh_shape()))
    return out, fresh


def lsh_report(params: Params) -> dict:
    """The LSH shape and its S-curve: the chance a pair of each Jaccard becomes a candidate."""
    bands, rows = params.lsh_shape()
    points = [0.3, 0.5, 0.6, 0.7, 0.8, 0.9]
    return {"bands": bands, "rows": rows, "candidate_probability": {
        f"{j:.1f}": round(float(minhash.candidate_probability(j, bands, rows)), 6)
        for j in points}}


class Scratch:
    """What pass 1 left on disk per unit, read by global document index (units in order,
    `bounds` their first rows): LSH band keys one band at a time, signatures, shingle sets.
    Only what is asked for is in memory, never every document's signature."""

    def __init__(self, folder: Path, units: list[Unit], bounds: np.ndarray, shingle_size: int):
        self.folder, self.units, self.bounds, self.n = folder, units, bounds, shingle_size

    def _file(self, u: int, kind: str) -> Path:
        return self.folder / f"{self.units[u].name}.{kind}"

    def keys(self, band: int) -> np.ndarray:
        """Every document's bucket key in one LSH band."""
        return np.concatenate([np.zeros(0, np.uint64)] + [
            np.load(self._file(u, "keys.npy"), mmap_mode="r")[band]
            for u in range(len(self.units))])

    def signature(self, doc: int) -> np.ndarray:
        u = int(np.searchsorted(self.bounds, doc, side="right")) - 1
        return np.array(np.load(self._file(u, "sig.npy"), mmap_mode="r")[doc - self.bounds[u]])

    def shingles(self, docs: np.ndarray) -> list[np.ndarray]:
        """`shingle_sets` of the documents, from each unit's scratch word hashes."""
        unit = np.searchsorted(self.bounds, docs, side="right") - 1
        out: list = [None] * len(docs)
        for u in np.unique(unit).tolist():
            data = np.load(self._file(u, "npz"))
            sel = np.flatnonzero(unit == u)
            for i, found in zip(sel.tolist(), shingle_sets(
                    data["h"], data["counts"], docs[sel] - self.bounds[u], self.n), strict=True):
                out[i] = found
        return out


def _empty(params: Params) -> dict[str, np.ndarray]:
    """Zero-row versions of the per-document arrays of a scan (and of its scratch tokens)."""
    return {"doc_id": np.zeros(0, "S1"), "n_chars": np.zeros(0, np.int64),
            "exact": np.zeros(0, np.uint64),
            "sig": np.zeros((0, params.num_perm), np.uint32), "shingled": np.zeros(0, bool),
            "hits": np.zeros(0, np.int64), "h": np.zeros(0, np.uint64),
            "counts": np.zeros(0, np.int64)}


def _kept_tokens(path: Path, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(path)
    counts = data["counts"]
    h = data["h"][np.repeat(keep, counts)]
    return h, np.concatenate([[0], np.cumsum(counts[keep])])


def _count(item: tuple[Path, list[tuple[Path, np.ndarray]]], params: SoftDedup
           ) -> tuple[Path, int]:
    """A group of units' n-gram counts, saved to scratch (a worker's tables travel as a file,
    not as a pickled copy in the stage's process); returns the file and the token count."""
    out, group = item
    tables = np.zeros((params.order, 1 << params.buckets_log2), dtype=np.uint32)
    total = 0
    for path, keep in group:
        h, offsets = _kept_tokens(path, keep)
        softdedup.count(tables, h, offsets)
        total += len(h)
    np.save(out, tables)
    return out, total


def _sum_tables(parts: list[Path], out: Path, shape: tuple[int, int]) -> None:
    """The workers' count tables summed into `out` a slice at a time (4 MB): memory never holds
    a whole table (64 MB each by default), let alone one per worker."""
    np.lib.format.open_memmap(out, mode="w+", dtype=np.uint32, shape=shape).flush()
    step, size = 1 << 20, shape[0] * shape[1]
    for lo in range(0, size, step):
        total = np.zeros(min(step, size - lo), dtype=np.uint32)
        for part in parts:
            total += np.load(part, mmap_mode="r").reshape(-1)[lo : lo + step]
        np.load(out, mmap_mode="r+").reshape(-1)[lo : lo + step] = total
    for part in parts:
        part.unlink()


def _score(item: tuple[Path, np.ndarray], lm: Path, total: int, params: SoftDedup) -> np.ndarray:
    h, offsets = _kept_tokens(*item)
    return softdedup.mean_log_prob(h, offsets, np.load(lm, mmap_mode="r"), total,
                                   params.concentration)


def _write(item: tuple[Path, np.ndarray, np.ndarray, list[int]], out_dir: Path,
           chars: int) -> tuple[int, dict[int, str]]:
    """Pass 4: the kept rows with their weights; returns row count and the wanted texts."""
    src, keep, weight, wanted = item
    schema = pq.read_schema(src).append(pa.field("weight", pa.float64()))
    wanted_set, texts, offset, done = set(wanted), {}, 0, 0
    with ShardWriter(out_dir / src.name, schema) as writer:
        for table in read_batches(src, schema.names[:-1]):
            rows = np.arange(offset, offset + table.num_rows)
            offset += table.num_rows
            for r in wanted_set.intersection(rows.tolist()):
                texts[r] = (table["text"][r - int(rows[0])].as_py() or "")[:chars]
            mask = keep[rows]
            kept = table.filter(pa.array(mask))
            weights = pa.array(weight[done : done + kept.num_rows])
            writer.write(kept.append_column("weight", weights))
            done += kept.num_rows
    return writer.rows, texts


def _representatives(group: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """For every element, the element of its group with the smallest rank."""
    order = np.lexsort((rank, group))
    first = np.r_[True, group[order][1:] != group[order][:-1]] if len(order) else order > 0
    rep = np.empty_like(order)
    rep[order] = order[first][np.cumsum(first) - 1]
    return rep


def run(params: Params, ctx) -> dict:
    with ctx.executor() as pool:
        return _run(params, ctx, pool)


def _run(params: Params, ctx, pool: Executor) -> dict:
    shards = list_shards(ctx.dep(CORPUS))
    out_dir = ctx.out(OUT)
    out_dir.mkdir(parents=True)
    scratch = out_dir / "_scratch"
    scratch.mkdir()
    heldout = heldout_ngrams(list_shards(ctx.dep(HELDOUT)), params.decontam_ngram)
    np.save(scratch / "heldout.npy", heldout)

    # Pass 1: contamination, exact keys and signatures of every document.
    work = units(shards)
    cache = DocCache(ctx.root / ctx.runtime.doc_cache if ctx.runtime.doc_cache else None,
                     "dedup-" + version({"shingle_size": params.shingle_size,
                                         "num_perm": params.num_perm, "seed": ctx.base.seed},
                                        [ROOT / f for f in ctx.stage.code_files()]))
    scan = partial(_scan, scratch=scratch, params=params, seed=ctx.base.seed, cache=cache)
    scanned, computed = [], 0
    for result, fresh in ctx.progress(pool.map(scan, work), len(work), "dedup scan"):
        scanned.append(result)
        computed += cache.store(fresh)
    bounds = np.cumsum([0] + [len(s["doc_id"]) for s in scanned])  # rows of each unit
    cat = {k: np.concatenate([v, *(s[k] for s in scanned)]) for k, v in _empty(params).items()
           if k not in ("h", "counts", "sig")}
    del scanned  # the per-unit copies
    doc_ids = cat.pop("doc_id")  # bytes (UTF-8): their order is the ids' order as text
    n, index = len(doc_ids), np.arange(len(doc_ids))
    if params.keep == "first":  # input order: shards by name, rows in order
        rank = index.copy()
    else:  # longest first, then smallest doc_id
        rank = np.empty(n, dtype=np.int64)
        rank[np.lexsort((doc_ids, -cat["n_chars"]))] = index

    contaminated = cat["hits"] > 0
    alive = np.flatnonzero(~contaminated)
    on_disk = Scratch(scratch, work, bounds, params.shingle_size)
    exact_rep, near_rep, lsh = duplicates(~contaminated, cat["exact"], on_disk.keys,
                                          cat["shingled"], rank, params, on_disk.shingles)
    exact_dup, near_dup, cands = exact_rep != index, near_rep != index, lsh["candidates"]
    keep = ~contaminated & ~exact_dup & ~near_dup
    ctx.log.info("dedup: %d contaminated, %d exact and %d near duplicates of %d documents; "
                 "%d distinct texts scanned, the rest from the document cache",
                 contaminated.sum(), exact_dup.sum(), near_dup.sum(), n, computed)

    # Passes 2-3: the commonness model over the kept documents, then their weights.
    sd = params.softdedup
    items = [(scratch / f"{u.name}.npz", keep[bounds[i] : bounds[i + 1]])
             for i, u in enumerate(work)]
    groups = [(scratch / f"counts-{i}.npy", items[i :: pool.workers])
              for i in range(min(pool.workers, len(items)))]
    counted = list(pool.map(partial(_count, params=sd), groups))
    total = sum(c for _, c in counted)
    _sum_tables([path for path, _ in counted], scratch / "lm.npy",
                (sd.order, 1 << sd.buckets_log2))
    score = partial(_score, lm=scratch / "lm.npy", total=total, params=sd)
    scores = list(ctx.progress(pool.map(score, items), len(items), "dedup weights"))
    weight = np.zeros(n)
    weight[keep] = softdedup.weights(np.concatenate([np.zeros(0), *scores]), sd.clip)

    # Pass 4: write the kept documents with their weights, collecting the examples' texts.
    by_weight = np.flatnonzero(keep)[np.lexsort((doc_ids[keep], weight[keep]))]
    examples = {
        "exact": report.largest_groups(exact_rep, exact_dup, doc_ids, params.examples),
        "near": report.largest_groups(near_rep, near_dup, doc_ids, params.examples,
                                     on_disk.signature),
        "decontaminated": [{"index": i, "heldout_ngram_hits": int(cat["hits"][i])}
                           for i in report.first_by_id(contaminated, doc_ids, params.examples)],
        "lowest_weight": [{"index": int(i), "weight": float(weight[i])}
                          for i in by_weight[: params.examples]],
        "highest_weight": [{"index": int(i), "weight": float(weight[i])}
                           for i in by_weight[::-1][: params.examples]],
        "group_sizes": {"exact": report.sizes(exact_rep, alive),
                        "near": report.sizes(near_rep, cands)},
    }
    wanted = report.indices(examples)
    first_row: dict[Path, int] = {}
    for u, start in zip(work, bounds[:-1], strict=True):
        first_row.setdefault(u.path, int(start))
    spans = list(zip(first_row, first_row.values(), [*list(first_row.values())[1:], n],
                     strict=True))
    write_items = [(src, keep[lo:hi], weight[lo:hi][keep[lo:hi]],
                    [w - lo for w in sorted(wanted) if lo <= w < hi]) for src, lo, hi in spans]
    write = partial(_write, out_dir=out_dir, chars=params.example_chars)
    written = pool.map(write, write_items)  # submitted: the plots are drawn while workers write
    report.weight_histogram(weight[keep], ctx.out(PLOT))
    report.s_curve(*params.lsh_shape(), params.jaccard_threshold, lsh["pair_jaccard"],
                   ctx.out(S_CURVE))
    texts, rows = {}, []
    for (src, lo, _), (count, got) in zip(spans, written, strict=True):
        rows.append((src.name, count))
        texts.update({lo + r: t for r, t in got.items()})
    shutil.rmtree(scratch)
    write_manifest(out_dir, rows, pq.read_schema(shards[0]).names + ["weight"] if shards else [])
    ctx.out(EXAMPLES).write_text(json.dumps(report.render(examples, doc_ids, texts), indent=2,
                                            sort_keys=True, ensure_ascii=False) + "\n")

    near_sizes = examples["group_sizes"]["near"]
    clusters = sum(near_sizes.values())
    kept = int(keep.sum())
    return {
        "docs_in": n,
        "decontaminated": int(contaminated.sum()),
        "exact_duplicates_removed": int(exact_dup.sum()),
        "near_duplicates_removed": int(near_dup.sum()),
        "docs_kept": kept,
        "kept_fraction": round(kept / n, 6) if n else 0.0,
        "exact_groups": sum(examples["group_sizes"]["exact"].values()),
        "near_clusters": clusters,
        "near_cluster_max_size": max(near_sizes, default=0),
        "near_cluster_mean_size": round(sum(k * v for k, v in near_sizes.items())
                                        / max(1, clusters), 6),
        "lsh": lsh_report(params),
        "lsh_candidate_pairs": lsh["candidate_pairs"],
        "verified_pairs": lsh["verified_pairs"],
        "heldout_ngrams": len(heldout),
        "lm_tokens": total,
        "weights_sum": round(float(weight.sum()), 6),
        "weight_min": round(float(weight[keep].min()), 6) if kept else 0.0,
        "weight_max": round(float(weight[keep].max()), 6) if kept else 0.0,
    }
