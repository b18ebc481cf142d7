"""The generation cache: every generation (and every sandboxed code run) stored under its key.

A key is the SHA-256 of the canonical JSON of what determines the result: for a generation the
backend, its model fingerprint, the full prompt, the sampling params and the seed; never an API
key, a concurrency or a URL. One JSON file per entry (`<dir>/<kk>/<key>.json`), written to a
temporary name and renamed, so a killed stage keeps every entry it completed and never leaves a
partial one. The cache lives outside the stage's output (`runtime.synth_cache`, default
`.cache/synth`): DVC re-running the stage does not delete it, and it never affects a result.

Sharing (`runtime.synth_cache_url`, an `s3://bucket/prefix` of any S3-compatible store,
credentials from the environment): the remote is listed once; a local miss that the remote has is
downloaded, and `flush` uploads every entry this run used that the remote lacks. Two machines
pointing at the same prefix query a backend once between them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stages import atomic


def make_key(fields: dict[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of `fields`."""
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class GenerationCache:
    """Content-addressed JSON records on local disk, optionally shared through S3."""

    def __init__(self, directory: Path, remote: str | None = None,
                 endpoint_url: str | None = None):
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.remote = remote.rstrip("/") if remote else None
        self.hits = self.misses = self.downloaded = self.uploaded = 0
        self._used: set[str] = set()
        self._fs = None
        self._remote_keys: set[str] = set()
        if self.remote:
            import s3fs

            self._fs = s3fs.S3FileSystem(
                client_kwargs={"endpoint_url": endpoint_url} if endpoint_url else {})
            prefix = self.remote.removeprefix("s3://")
            try:
                found = self._fs.find(prefix) if self._fs.exists(prefix) else []
            except Exception as exc:  # noqa: BLE001 - any store error: say which remote
                raise RuntimeError(f"generation cache remote {self.remote} is unreachable: "
                                   f"{type(exc).__name__}: {exc}") from exc
            self._remote_keys = {Path(p).stem for p in found if p.endswith(".json")}

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def _remote_path(self, key: str) -> str:
        return f"{self.remote}/{key[:2]}/{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        if not path.exists() and key in self._remote_keys:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_bytes(path, self._fs.cat_file(self._remote_path(key)))
            self.downloaded += 1
        if not path.exists():
            self.misses += 1
            return None
        self.hits += 1
        self._used.add(key)
        return json.loads(path.read_text())

    def put(self, key: str, record: dict[str, Any]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(path, record)
        self._used.add(key)

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """The cached value for `key`, computing and storing it on a miss."""
        record = self.get(key)
        if record is None:
            record = {"value": compute()}
            self.put(key, record)
        return record["value"]

    def flush(self) -> None:
        """Upload the entries this run used that the remote does not have yet."""
        if not self._fs:
            return
        missing = sorted(self._used - self._remote_keys)
        if missing:
            self._fs.put([os.fspath(self._path(k)) for k in missing],
                         [self._remote_path(k) for k in missing])
            self._remote_keys.update(missing)
            self.uploaded += len(missing)
