"""What the dedup report shows: examples of each duplicate kind, group sizes, the weight plot.

Examples are chosen by index first (largest groups, ties by doc_id) and filled with text in the
final pass over the shards, so the report costs no extra read.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def sizes(rep: np.ndarray, members: np.ndarray) -> dict[int, int]:
    """Histogram {group size: groups} of the groups with two or more members."""
    counts = Counter(int(c) for c in np.unique(rep[members], return_counts=True)[1] if c > 1)
    return dict(sorted(counts.items()))


def largest_groups(rep: np.ndarray, removed: np.ndarray, doc_ids: np.ndarray, k: int,
                   signature: Callable[[int], np.ndarray] | None = None) -> list[dict]:
    """The k largest groups (ties: smallest doc_id): their kept document and up to three removed
    ones, with the signatures' Jaccard estimate when `signature(doc)` is given."""
    reps, counts = np.unique(rep[removed], return_counts=True)
    out = []
    for i in np.lexsort((doc_ids[reps], -counts))[:k].tolist():
        kept = int(reps[i])
        gone = np.flatnonzero(removed & (rep == kept))
        gone = gone[np.argsort(doc_ids[gone], kind="stable")[:3]].tolist()
        out.append({
            "size": int(counts[i]) + 1,
            "kept": {"index": kept},
            "removed": [{"index": j} | ({} if signature is None else {"jaccard_estimate": float(
                (signature(kept) == signature(j)).mean())}) for j in gone],
        })
    return out


def first_by_id(candidates: np.ndarray, doc_ids: np.ndarray, k: int) -> list[int]:
    found = np.flatnonzero(candidates)
    return found[np.argsort(doc_ids[found], kind="stable")[:k]].tolist()


def indices(node: Any) -> set[int]:
    """Every document index an example structure refers to."""
    if isinstance(node, dict):
        return ({node["index"]} if "index" in node else set()).union(
            *(indices(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(indices(v) for v in node))
    return set()


def render(node: Any, doc_ids: np.ndarray, texts: dict[int, str]) -> Any:
    """Replace each `index` by the document's id and text."""
    if isinstance(node, dict):
        out = {k: render(v, doc_ids, texts) for k, v in node.items() if k != "index"}
        if "index" in node:
            out |= {"doc_id": doc_ids[node["index"]].decode(), "text": texts[node["index"]]}
        return out
    if isinstance(node, list):
        return [render(v, doc_ids, texts) for v in node]
    return node


def weight_histogram(weights: np.ndarray, path: Path) -> None:
    """Histogram of the SoftDedup weights as a PNG with stable bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.hist(weights, bins=50, color="#4c72b0")
    ax.axvline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xlabel("SoftDedup weight (mean 1)")
    ax.set_ylabel("documents")
    ax.set_title(f"SoftDedup weights of {len(weights)} documents")
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)


def s_curve(bands: int, rows: int, threshold: float, pair_jaccards: np.ndarray, path: Path) -> None:
    """The LSH S-curve (chance a pair of each Jaccard becomes a candidate) with the threshold,
    over the histogram of the candidate pairs' true Jaccard."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stages.dedup.minhash import candidate_probability

    x = np.linspace(0, 1, 201)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(x, candidate_probability(x, bands, rows), color="#4c72b0",
            label=f"P(candidate), {bands} bands x {rows} rows")
    ax.axvline(threshold, color="black", linewidth=0.8, linestyle="--",
               label=f"verified at true Jaccard >= {threshold:g}")
    ax.set_xlabel("shingle Jaccard of a pair")
    ax.set_ylabel("probability")
    if len(pair_jaccards):
        twin = ax.twinx()
        twin.hist(pair_jaccards, bins=40, range=(0, 1), color="#dd8452", alpha=0.4)
        twin.set_ylabel(f"candidate pairs ({len(pair_jaccards)})")
    ax.set_title("LSH S-curve and the candidate pairs")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)
