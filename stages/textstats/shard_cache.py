"""Whole output shards kept across runs, so a refresh copies what did not change.

A unit of work (an `ingest` bucket, a `signals` shard) whose output files are a pure function of a
key (a hash of everything they depend on: input bytes or identities, settings, code) stores those
files under `<directory>/<key[:2]>/<key>/` with a `meta.json` (the unit's counts, so the stage's
metrics need no re-reading). A later run with the same key copies them into its output instead
of recomputing them. Entries appear complete or not at all (written to a temp directory, then
renamed); files are hard-linked in when the file system allows (no second copy on disk) and
copied out, so nothing the stage's output or DVC does to its files reaches the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

META = "meta.json"


def file_key(version: str, path: Path) -> str:
    """A key for a shard computed from one input file: the version of the computation and the
    file's bytes."""
    h = hashlib.sha256(version.encode())
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class ShardCache:
    """`get`/`put` of a unit's output files and metadata by key; `directory=None` keeps nothing.
    `hits` and `stored` count units for the stage's log."""

    def __init__(self, directory: Path | None):
        self.directory = directory
        self.hits = self.stored = 0

    def _entry(self, key: str) -> Path:
        return self.directory / key[:2] / key

    def get(self, key: str | None) -> tuple[list[Path], dict] | None:
        """The cached files (in the order stored) and metadata for `key`, or None."""
        if self.directory is None or key is None:
            return None
        entry = self._entry(key)
        try:
            meta = json.loads((entry / META).read_text())
        except FileNotFoundError:
            return None
        self.hits += 1
        return [entry / name for name in meta["files"]], meta["meta"]

    def put(self, key: str | None, files: list[Path], meta: dict) -> None:
        """Keep `files` (distinct names) and `meta` under `key`, atomically."""
        if self.directory is None or key is None:
            return
        entry = self._entry(key)
        if entry.exists():
            return
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{key[:8]}-"))
        for f in files:
            try:
                os.link(f, tmp / f.name)
            except OSError:
                shutil.copyfile(f, tmp / f.name)
        (tmp / META).write_text(json.dumps({"files": [f.name for f in files], "meta": meta},
                                           sort_keys=True))
        try:
            tmp.rename(entry)
        except OSError:  # another run stored the same key meanwhile: same bytes
            shutil.rmtree(tmp)
            return
        self.stored += 1

    @staticmethod
    def restore(files: list[Path], directory: Path, names: list[str] | None = None) -> list[Path]:
        """Copy cached `files` into `directory` (as `names`, default their own); the new paths."""
        out = []
        for f, name in zip(files, names or [f.name for f in files], strict=True):
            shutil.copyfile(f, directory / name)
            out.append(directory / name)
        return out
