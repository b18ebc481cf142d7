"""Throughput of signals + filter + dedup against datatrove doing the same work, same corpus.

Corpus (fixed by the interpreter's stdlib): every stdlib docstring as a prose document, every
function and method as a code document, 3% exact and 3% near duplicates injected; 50k documents.
Both sides filter every document with the same rules (Gopher quality + repetition, C4) and
deduplicate every document (not only the few that pass those prose rules, so that MinHash does
real work) with 5-word shingles and 14 bands x 8 rows. Ours also computes all its other signals
(language, toxicity, textbook score, FineWeb, code) and SoftDedup weights on the way. Each side
runs in its own process tree with the same worker count; peak memory is the largest total RSS of
that tree. Agreement: share of documents on which both sides decide the same (keep or remove),
and the Jaccard similarity of the removed sets. Kept sets are compared like for like: ours runs
with `dedup.keep: first` (its default, `longest`, keeps the longest copy), so both sides keep the
copy read first, i.e. the smallest (shard, row) position. Both read the same shards in the same
order (sorted shard names; datatrove task i reads shard i, its (file, doc) ids are that order),
which the benchmark checks (`same_document_order`). Cluster-level agreement is the share of
injected duplicate pairs that both sides collapse (not both copies kept), whichever copy they
keep; pair agreement is also broken down by true Jaccard, since near the LSH threshold (~0.72)
any MinHash dedup decides by chance.

    python bench/curation_throughput.py [--docs 50000] [--workers 2] [--workdir DIR]

Needs the `bench` extra (datatrove[processing], orjson, spacy) and psutil; runs offline.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARDS = 8
SAME_RULES = ["gopher_quality", "gopher_repetition", "c4"]


def build_corpus(out: Path, n_docs: int, seed: int = 0) -> dict[str, list[list[str]]]:
    """Write the fixed benchmark corpus as ingest does (zstd parquet shards, 1000-row groups);
    return the injected (original, copy) doc-id pairs by kind."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    prose: dict[str, None] = {}
    code: dict[str, None] = {}
    for path in sorted(stdlib.rglob("*.py")):
        if "site-packages" in path.parts:
            continue
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        lines = source.splitlines(keepends=True)
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                if doc := ast.get_docstring(node):
                    prose.setdefault(doc)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                chunk = "".join(lines[node.lineno - 1 : node.end_lineno])
                if 100 <= len(chunk) <= 20_000:
                    code.setdefault(chunk)
    rng = np.random.default_rng(seed)
    n_dups = int(0.03 * n_docs)
    base_code = n_docs - 2 * n_dups - len(prose)
    picked = sorted(rng.choice(len(code), size=base_code, replace=False))
    codes = list(code)
    docs = [("prose", t) for t in prose] + [("code", codes[i]) for i in picked]
    originals = len(docs)
    pairs: dict[str, list[tuple[int, int]]] = {"exact": [], "near": []}
    for i in rng.choice(originals, size=n_dups, replace=False):  # exact copies
        pairs["exact"].append((int(i), len(docs)))
        docs.append(docs[i])
    for i in rng.choice(originals, size=n_dups, replace=False):  # ~1% of words replaced
        words = docs[i][1].split(" ")
        for j in rng.choice(len(words), size=max(1, len(words) // 100), replace=False):
            words[j] = f"w{rng.integers(10**6)}"
        pairs["near"].append((int(i), len(docs)))
        docs.append((docs[i][0], " ".join(words)))
    order = rng.permutation(len(docs))
    ids = [hashlib.blake2b(f"bench/{k}".encode(), digest_size=16).hexdigest()
           for k in range(len(docs))]
    id_of = dict(zip(order.tolist(), ids, strict=True))
    rows = [{"doc_id": ids[k], "source": "bench", "domain": docs[i][0], "path": f"doc{k}",
             "text": docs[i][1], "n_chars": len(docs[i][1])} for k, i in enumerate(order)]
    out.mkdir(parents=True)
    per = -(-len(rows) // SHARDS)
    for s in range(SHARDS):
        table = pa.Table.from_pylist(rows[s * per : (s + 1) * per])
        pq.write_table(table, out / f"part-{s:05d}.parquet", compression="zstd",
                       row_group_size=1000)
    return {kind: [[id_of[a], id_of[b]] for a, b in found] for kind, found in pairs.items()}


def run_ours(root: Path, workers: int) -> dict:
    from stages import registry
    from stages.runner import run_stage

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params = {k: params[k] for k in ("base", "runtime", "orchestration", "signals", "quality",
                                     "filter", "dedup")}
    params["runtime"] = {**params["runtime"], "workers": workers, "progress": False,
                         "log_level": "WARNING"}
    params["filter"]["apply"] = {"prose": SAME_RULES, "code": SAME_RULES}
    params["dedup"]["keep"] = "first"  # datatrove keeps the copy it reads first
    params["dedup"] |= {"bands": 14, "rows": 8}  # datatrove's LSH shape, not ours (22 x 5)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    registry.STAGES = tuple(s for s in registry.STAGES
                            if s.name in ("signals", "quality", "filter", "dedup"))
    times = {}
    for name in ("signals", "quality", "filter", "dedup"):
        if name == "dedup":  # deduplicate the whole corpus, as datatrove's MinHash does below
            filtered = doc_ids(root / "data/filter/corpus")
            shutil.rmtree(root / "data/filter/corpus")
            shutil.copytree(root / "data/ingest/corpus", root / "data/filter/corpus")
        start = time.perf_counter()
        run_stage(name, root)
        times[name] = time.perf_counter() - start
    times.pop("quality")  # filter's input, but no rule of SAME_RULES reads it: not datatrove's work
    return {"times": times, "filtered": filtered, "deduped": doc_ids(root / "data/dedup/corpus")}


def doc_ids(directory: Path) -> list[str]:
    return [i for p in sorted(directory.glob("part-*.parquet"))
            for i in pq.read_table(p, columns=["doc_id"])["doc_id"].to_pylist()]


def run_datatrove(root: Path, workers: int) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import JsonlWriter

    work = root / "datatrove"
    config = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8)

    def execute(pipeline, tasks):
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=workers,
                              logging_dir=str(work / f"logs{time.perf_counter_ns()}")).run()

    def reader():
        return ParquetReader(str(root / "data/ingest/corpus"), id_key="doc_id",
                             glob_pattern="part-*.parquet")

    times = {}
    start = time.perf_counter()
    execute([reader(), GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(),
             JsonlWriter(str(work / "filtered"))], SHARDS)
    times["filters"] = time.perf_counter() - start
    start = time.perf_counter()
    execute([reader(), MinhashDedupSignature(str(work / "sigs"), config=config)], SHARDS)
    execute([MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=config)],
            config.num_buckets)
    execute([MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=config)], 1)
    execute([reader(), MinhashDedupFilter(str(work / "remove")), JsonlWriter(str(work / "out"))],
            SHARDS)
    times["minhash"] = time.perf_counter() - start

    def ids(folder: str) -> list[str]:
        return [json.loads(line)["id"] for p in sorted((work / folder).glob("*.jsonl.gz"))
                for line in gzip.open(p, "rt")]

    return {"times": times, "filtered": ids("filtered"), "deduped": ids("out")}


def measured(side: str, root: Path, workers: int) -> dict:
    """Run one side in a fresh process tree; add its peak total RSS."""
    log = open(root / f"{side}.log", "w")
    proc = subprocess.Popen([sys.executable, __file__, "--side", side, "--workdir", str(root),
                             "--workers", str(workers)], stdout=log, stderr=log)
    peak, tree = 0, psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            rss = sum(p.memory_info().rss for p in [tree, *tree.children(recursive=True)])
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.2)
    log.close()
    if proc.returncode:
        raise RuntimeError(f"{side} failed ({proc.returncode}); see {root / f'{side}.log'}")
    return {**json.loads((root / f"{side}.json").read_text()), "peak_rss_mb": peak / 2**20}


def agreement(ours: list[str], theirs: list[str], universe: set[str]) -> tuple[float, float]:
    """Share of documents with the same keep/remove decision; Jaccard of the removed sets."""
    a, b = universe - set(ours), universe - set(theirs)
    return 1 - len(a ^ b) / len(universe), len(a & b) / max(1, len(a | b))


def in_order(ids: list[str], position: dict[str, int]) -> bool:
    """Whether `ids` (a side's output, shard by shard) follow the input corpus order."""
    at = np.array([position[i] for i in ids])
    return bool(np.all(np.diff(at) > 0))


def jaccard(a: str, b: str) -> float:
    """Exact Jaccard of the two texts' 5-word shingle sets (our normalisation)."""
    from stages.textstats import normalized_hashes, shingle_rows

    sets = [set(shingle_rows(*normalized_hashes([t]), 5)[0].tolist()) for t in (a, b)]
    return len(sets[0] & sets[1]) / max(1, len(sets[0] | sets[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=REPO / "tmp" / "curation-bench")
    parser.add_argument("--side", choices=["ours", "datatrove"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        run = run_ours if args.side == "ours" else run_datatrove
        result = run(args.workdir, args.workers)
        (args.workdir / f"{args.side}.json").write_text(json.dumps(result))
        return

    shutil.rmtree(args.workdir, ignore_errors=True)
    corpus = args.workdir / "data/ingest/corpus"
    injected = build_corpus(corpus, args.docs)
    (args.workdir / "data/ingest/heldout").mkdir()
    universe = set(doc_ids(corpus))
    texts = dict(zip(doc_ids(corpus), (t for p in sorted(corpus.glob("part-*.parquet"))
                                       for t in pq.read_table(p)["text"].to_pylist()), strict=True))
    mb = sum(len(t.encode()) for t in texts.values()) / 1e6
    ours = measured("ours", args.workdir, args.workers)
    theirs = measured("datatrove", args.workdir, args.workers)

    t_ours, t_theirs = sum(ours["times"].values()), sum(theirs["times"].values())
    figures = {"docs": len(universe), "corpus_mb": round(mb, 2), "workers": args.workers}
    for side, res, total in (("ours", ours, t_ours), ("datatrove", theirs, t_theirs)):
        for stage, seconds in res["times"].items():
            figures[f"{side}_{stage}_s"] = round(seconds, 1)
        figures[f"{side}_total_s"] = round(total, 1)
        figures[f"{side}_docs_per_s_per_core"] = round(len(universe) / total / args.workers, 1)
        figures[f"{side}_mb_per_s_per_core"] = round(mb / total / args.workers, 3)
        figures[f"{side}_peak_rss_mb"] = round(res["peak_rss_mb"])
        figures[f"{side}_kept_by_filters"] = len(res["filtered"])
        figures[f"{side}_removed_as_duplicates"] = len(universe) - len(res["deduped"])
        kept = set(res["deduped"])
        for kind, found in injected.items():  # collapsed: not both copies kept
            collapsed = sum(not (a in kept and b in kept) for a, b in found)
            figures[f"{side}_injected_{kind}_pairs_collapsed"] = f"{collapsed}/{len(found)}"
    figures["speedup"] = round(t_theirs / t_ours, 2)
    figures["ours_dedup_keep"] = "first (as datatrove: earliest shard/row of each cluster)"
    position = {d: k for k, d in enumerate(doc_ids(corpus))}
    figures["same_document_order"] = all(in_order(res[key], position) for res in (ours, theirs)
                                         for key in ("filtered", "deduped"))
    for step, key in (("filter", "filtered"), ("dedup", "deduped")):
        same, removed_jaccard = agreement(ours[key], theirs[key], universe)
        figures[f"{step}_agreement"] = round(same, 4)
        figures[f"{step}_removed_jaccard"] = round(removed_jaccard, 4)
    both = [set(ours["deduped"]), set(theirs["deduped"])]
    bands: dict[str, list] = {"J>=0.8": [], "0.5<=J<0.8": [], "J<0.5": []}
    for a, b in (p for found in injected.values() for p in found):
        j = jaccard(texts[a], texts[b])
        band = "J>=0.8" if j >= 0.8 else "0.5<=J<0.8" if j >= 0.5 else "J<0.5"
        bands[band].append((a, b))
    injected_pairs = [p for found in injected.values() for p in found]
    collapsed = [[not (a in k and b in k) for k in both] for a, b in injected_pairs]
    both_collapse = sum(x and y for x, y in collapsed)
    either = sum(x or y for x, y in collapsed)
    figures["dedup_cluster_agreement"] = round(both_collapse / max(1, len(injected_pairs)), 4)
    figures["dedup_cluster_agreement_detail"] = (
        f"{both_collapse}/{len(injected_pairs)} injected pairs collapsed by both "
        f"({both_collapse}/{either} of those collapsed by either)")
    for band, pairs in bands.items():
        same = sum(len({(a in k and b in k) for k in both}) == 1 for a, b in pairs)
        figures[f"dedup_injected_pair_agreement_{band}"] = f"{same}/{len(pairs)}"
    for name, value in figures.items():
        print(f"{name}: {value}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
