"""Refine's data: the phase-2 mix (curated top-textbook documents, synthetic documents, phase-1
replay) and the supervised reasoning examples, as batches that are a function of (seed, step)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from stages.refine.config import Params
from stages.train import corpus, sft
from stages.train.batches import Split, epoch_batch, global_batch, inputs_targets

SOURCES = ("curated", "synthetic", "replay")


def textbook_top(dedup: Path, signals: Path, fraction: float) -> list[tuple[str, str, float]]:
    """Per domain, the `fraction` of curated documents with the highest textbook score (ties by
    doc id), in corpus order, as (doc_id, text, 1.0)."""
    scores = {}
    for shard in sorted(signals.glob("part-*.parquet")):
        t = pq.read_table(shard, columns=["doc_id", "textbook_score"]).to_pydict()
        scores.update(zip(t["doc_id"], t["textbook_score"], strict=True))
    docs = list(corpus.read_docs(dedup, ["doc_id", "domain", "text"]))
    keep: set[str] = set()
    for domain in sorted({d["domain"] for d in docs}):
        ranked = sorted((d["doc_id"] for d in docs if d["domain"] == domain),
                        key=lambda i: (-scores[i], i))
        keep.update(ranked[:max(1, math.ceil(fraction * len(ranked)))])
    return [(d["doc_id"], d["text"], 1.0) for d in docs if d["doc_id"] in keep]


def synthetic_docs(generated: Path, templates: list[str]) -> list[tuple[str, str, float]]:
    """synth's accepted documents whose template or a `/`-part of it is listed (all if none)."""
    want = set(templates)
    return [(d["doc_id"], d["text"], 1.0)
            for d in corpus.read_docs(generated, ["doc_id", "text", "template"])
            if not want or d["template"] in want or want & set(d["template"].split("/"))]


def counts(p: Params, size: int, available: dict[str, bool]) -> dict[str, int]:
    """Sequences per step from each source: shares of `size` by largest remainder."""
    shares = {s: getattr(p.mix, s) if available[s] else 0.0 for s in SOURCES}
    total = sum(shares.values())
    if total <= 0:
        raise ValueError("refine: every source with a share in refine.mix is empty")
    exact = {s: size * v / total for s, v in shares.items()}
    out = {s: int(v) for s, v in exact.items()}
    for s in sorted(SOURCES, key=lambda s: (out[s] - exact[s], SOURCES.index(s)))[
            :size - sum(out.values())]:
        out[s] += 1
    return out


class Mixture:
    """Phase-2 batches: each step takes its share of sequences from every source, each source
    read in its own seeded epoch permutations."""

    def __init__(self, splits: dict[str, Split], per_step: dict[str, int], seed: int, pad: int):
        self.splits, self.per_step, self.seed, self.pad = splits, per_step, seed, pad

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        xs, ys = [], []
        for i, (name, n) in enumerate(self.per_step.items()):
            if n:
                idx = global_batch(self.splits[name], step, n, self.seed + 7919 * (i + 1),
                                   "uniform")
                x, y = inputs_targets(self.splits[name], idx, self.pad)
                xs.append(x)
                ys.append(y)
        return {"input_ids": torch.cat(xs), "targets": torch.cat(ys)}


class Examples:
    """SFT batches: seeded epoch permutations of the examples, padded to each batch's longest."""

    def __init__(self, examples: list, seed: int):
        self.examples, self.seed = examples, seed

    def steps(self, epochs: int, size: int) -> int:
        return math.ceil(epochs * len(self.examples) / size)

    def batch(self, step: int, size: int) -> dict[str, torch.Tensor]:
        idx = epoch_batch(len(self.examples), step, size, self.seed)
        x, y = sft.rows([self.examples[i] for i in np.asarray(idx)])
        return {"input_ids": x, "targets": y}
