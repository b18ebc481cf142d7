"""Training batches and evaluation windows over packed token splits (`stages.tokenize.pack`).

Which sequences a step trains on is a pure function of (seed, step): resuming at step s needs no
sampler state, and every process computes the same global batch and takes its own slice of it.

- `uniform`: each epoch is a seeded permutation of the sequences (sampling without replacement).
- `softdedup`: sequences drawn with replacement with probability proportional to their SoftDedup
  weight (He et al. 2024): common, template-like text is seen less often, rare text more often.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stages.tokenize.pack import open_split
from stages.train.task import EvalSet

IGNORE = -100  # target id the loss skips (PAD)


@dataclass
class Split:
    """A memory-mapped packed split: `tokens` (sequences x seq_len) and per-sequence `weights`."""

    dir: Path
    index: dict
    tokens: np.ndarray
    weights: np.ndarray

    @classmethod
    def open(cls, directory: Path) -> Split:
        index, tokens, weights = open_split(directory)
        if len(weights) != index["sequences"]:
            raise ValueError(f"{directory}: {len(weights)} weights for {index['sequences']} "
                             "sequences; re-run the tokenize stage")
        return cls(directory, index, tokens, weights)

    @property
    def sequences(self) -> int:
        return int(self.index["sequences"])

    @property
    def seq_len(self) -> int:
        return int(self.index["seq_len"])


def global_batch(split: Split, step: int, size: int, seed: int, sampling: str) -> np.ndarray:
    """Indices of the `size` sequences that global step `step` trains on."""
    n = split.sequences
    if sampling == "softdedup":
        p = split.weights.astype(np.float64)
        rng = np.random.default_rng([seed, step])
        return rng.choice(n, size=size, replace=True, p=p / p.sum())
    return epoch_batch(n, step, size, seed)


def epoch_batch(n: int, step: int, size: int, seed: int) -> np.ndarray:
    """Items step*size .. (step+1)*size - 1 of the stream of seeded epoch permutations of
    range(n): every item once per epoch, a pure function of (seed, step)."""
    positions = np.arange(step * size, (step + 1) * size)
    out = np.empty(size, dtype=np.int64)
    for epoch in np.unique(positions // n):
        sel = positions // n == epoch
        out[sel] = np.random.default_rng([seed, int(epoch)]).permutation(n)[positions[sel] % n]
    return out


def inputs_targets(split: Split, idx: np.ndarray, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, shifted targets) of the sequences `idx`; PAD targets are ignored by the loss."""
    seqs = torch.from_numpy(split.tokens[idx].astype(np.int64))
    targets = seqs[:, 1:].clone()
    targets[targets == pad_id] = IGNORE
    return seqs[:, :-1], targets


def eval_windows(split: Split, pad_id: int, max_bytes: int = 0, window: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(inputs, targets, UTF-8 bytes) of windows that predict every token but the first once.

    `max_bytes` > 0 keeps, in stream order, each document of the split that still fits in that
    many bytes (the first always): the same texts whatever the tokenizer, so bits per byte stay
    comparable across runs, and a long document does not crowd out the short ones after it. The
    kept documents' tokens (EOS included) form one stream; window j reads it from token j*L - 1
    (the previous window's last token gives context) and predicts tokens j*L .. j*L + L - 1; L
    is `window`, or the split's sequence length when 0.
    """
    stream = torch.from_numpy(np.asarray(split.tokens, dtype=np.int64).reshape(-1))
    if max_bytes:
        import pyarrow.parquet as pq

        docs = pq.read_table(split.dir / split.index["docs_file"]).to_pydict()
        spans, n_bytes = [], 0
        for start, n, size in zip(docs["token_start"], docs["n_tokens"], docs["n_bytes"],
                                  strict=True):
            if not spans or n_bytes + size <= max_bytes:
                spans.append(stream[start:start + n])
                n_bytes += size
        flat = torch.cat(spans)
    else:
        flat, n_bytes = stream[:split.index["tokens"]], split.index["bytes"]
    n_tokens = len(flat)
    length = window or split.seq_len
    inputs, targets = [], []
    for start in range(0, n_tokens, length):
        lo = max(start - 1, 0)
        inp, tgt = flat[lo:start + length - 1], flat[lo + 1:start + length]
        # the first and the last window are short: pad them (padded targets are ignored)
        inputs.append(F.pad(inp, (0, length - len(inp)), value=pad_id))
        targets.append(F.pad(tgt, (0, length - len(tgt)), value=IGNORE))
    x, y = torch.stack(inputs), torch.stack(targets)
    y[y == pad_id] = IGNORE
    return x, y, n_bytes


def eval_set(split: Split, pad_id: int, max_bytes: int = 0, window: int = 0) -> EvalSet:
    """The evaluation windows of a packed text split, scored in bits per byte."""
    return EvalSet(*eval_windows(split, pad_id, max_bytes, window))


def eval_sets(splits: dict[str, Path], pad_id: int, max_bytes: int = 0, window: int = 0
              ) -> dict[str, EvalSet]:
    """`eval_set` of each packed split directory, by name; empty splits are left out."""
    opened = {name: Split.open(path) for name, path in splits.items()}
    return {name: eval_set(split, pad_id, max_bytes, window) for name, split in opened.items()
            if split.sequences}
