"""The arrays of a packaged model, extracted once per machine and memory-mapped afterwards.

The two offline classifiers ship as a pickle (alt-profanity-check: scikit-learn objects, whose
import alone takes over a second) and an xz-compressed archive (py3langid: half a second to
decompress). Every worker process of every `signals` run paid that before scoring a document.
Their arrays are a pure function of the packaged files, so they are extracted once into
`$SLM_MODEL_CACHE` (default `~/.cache/slm-pipeline/models`), keyed by a hash of those files and of
the extraction's version, and each process maps the `.npy` files read-only (the page cache is
shared between workers). The cache never affects a result; where it cannot be written (a
read-only home) the arrays are extracted in memory each time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "slm-pipeline"
    return Path(os.environ.get("SLM_MODEL_CACHE", default / "models"))


def load(name: str, version: int, sources: list[Path],
         extract: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """`extract()`'s arrays, from the cache when `sources` and `version` are unchanged."""
    h = hashlib.sha256(f"{name}:{version}".encode())
    for source in sources:
        h.update(Path(source).read_bytes())
    target = cache_dir() / f"{name}-{h.hexdigest()[:16]}"
    if target.is_dir():
        return {p.stem: np.load(p, mmap_mode="r") for p in sorted(target.glob("*.npy"))}
    arrays = extract()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        for key, value in arrays.items():
            np.save(tmp / f"{key}.npy", np.asarray(value), allow_pickle=False)
        try:
            tmp.rename(target)  # atomic; another process may have won the race: keep its copy
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass  # no writable cache here: extract again next time
    return arrays
