"""Atomic outputs: everything is written under a temporary sibling and renamed when complete.

A stage killed at any point leaves either the previous output or none, never a partial one that
DVC or Dagster could take for finished. Temporaries are named `.<name>.tmp-<pid>` and are swept
before the next run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"


def tmp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}{TMP_MARK}{os.getpid()}")


def sweep(final: Path) -> None:
    """Remove temporaries left next to `final` by killed runs."""
    parent = final.parent
    if not parent.is_dir():
        return
    for leftover in sorted(parent.glob(f".{final.name}{TMP_MARK}*")) + sorted(
        parent.glob(f".{final.name}.old-*")
    ):
        _remove(leftover)


def publish(tmp: Path, final: Path) -> None:
    """Move a finished temporary into place, replacing any previous output."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.is_dir() and not final.is_symlink():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        _remove(old)
    else:
        os.replace(tmp, final)  # atomic for files, also over an existing file or link
    fsync(final.parent)


def write_bytes(final: Path, data: bytes) -> None:
    tmp = tmp_path(final)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    publish(tmp, final)


def write_json(final: Path, obj: Any) -> None:
    write_bytes(final, canonical_json(obj).encode() + b"\n")


def canonical_json(obj: Any) -> str:
    """Stable JSON: sorted keys, no NaN, fixed separators; the same value gives the same bytes."""
    return json.dumps(obj, sort_keys=True, indent=2, allow_nan=False, ensure_ascii=False)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def fsync(path: Path) -> None:
    """Flush a file's or a directory's entries to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
