"""The domain corpus: curated documents with one curation label, and held-out documents with and
without it, packed with the pipeline's tokenizer (`stages.train.corpus`) into splits the batches
and evaluation windows read.

- `train`: the curated documents of the domain, every one (epochs when the budget exceeds them).
- `domain`: held-out documents of the domain (what adaptation should improve).
- `other`: held-out documents of every other label (what adaptation may forget).

The held-out sets take documents in doc_id order (content hashes: a fixed pseudo-random order),
each one that still fits in `eval.max_bytes` of text, so one large file does not crowd the rest
out of the budget.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from stages.adapt.config import CorpusParams
from stages.train.corpus import load_tokenizer, pack, read_docs

Doc = tuple[str, str, float]  # doc_id, text, weight


def select(directory: Path, p: CorpusParams, inside: bool, weighted: bool) -> Iterator[Doc]:
    """Documents whose `p.by` column is `p.name` (`inside`) or is not, in shard order."""
    columns = ["doc_id", "text", p.by, *(["weight"] if weighted else [])]
    for row in read_docs(directory, columns):
        if (row[p.by] == p.name) == inside:
            yield row["doc_id"], row["text"], float(row["weight"]) if weighted else 1.0


def fitting(docs: Iterable[Doc], max_bytes: int) -> Iterator[Doc]:
    """Documents in order, each one that still fits in `max_bytes` of UTF-8 text (the first one
    always; 0 = all)."""
    used = 0
    for doc in docs:
        size = len(doc[1].encode("utf-8"))
        if not max_bytes or not used or used + size <= max_bytes:
            used += size
            yield doc


def pack_domain(p: CorpusParams, corpus: Path, heldout: Path, tokens: Path, out: Path,
                max_bytes: int) -> dict[str, dict]:
    """Pack `train`, `domain` and `other` (see above) into `out/<name>`; returns their indexes
    (`other` only if there are such documents). Stops with the labels there are if the domain
    has no curated or no held-out documents."""
    sp = load_tokenizer(tokens / "tokenizer")
    seq_len = json.loads((tokens / "train" / "index.json").read_text())["seq_len"]
    extra = {"selection": {p.by: p.name}}
    sets = {"train": (corpus, select(corpus, p, True, True)),
            "domain": (heldout, fitting(select(heldout, p, True, False), max_bytes)),
            "other": (heldout, fitting(select(heldout, p, False, False), max_bytes))}
    indexes = {}
    for name, (src, docs) in sets.items():
        index = pack(docs, sp, seq_len, out / name, extra)
        if index["docs"]:
            indexes[name] = index
        elif name != "other":
            labels = Counter(row[p.by] for row in read_docs(src, [p.by]))
            raise ValueError(f"adapt.corpus: no document of {src} has {p.by} {p.name!r}; there "
                             f"are {dict(sorted(labels.items()))} (documents per {p.by})")
    return indexes
