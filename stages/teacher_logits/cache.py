"""Reading the teacher cache (`data/teacher_logits`): what `distill` imports of this stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def rows_digest(tokens: np.ndarray) -> str:
    """xxh3-128 of token rows: `distill` checks it reads the sequences that were scored."""
    import xxhash

    return xxhash.xxh3_128_hexdigest(np.ascontiguousarray(tokens, dtype=np.int64).tobytes())


def open_cache(directory: Path) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """(index, logp, idx, seq_ids) of a cache, the arrays memory-mapped read-only."""
    index = json.loads((directory / "index.json").read_text())
    files = index["files"]
    return index, *(np.load(directory / files[k], mmap_mode="r")
                    for k in ("logp", "idx", "seq_ids"))
