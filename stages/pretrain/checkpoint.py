"""Atomic, resumable training checkpoints in a persistent directory.

A checkpoint is a directory `step-<8 digits>` holding what `accelerate` saves (model, optimizer,
registered scheduler, every process's RNG states) plus `trainer_state.json` (step, data position,
the curve so far, and the identity of the run). It is written under `.step-<n>.tmp-<launch>` and
renamed into place once every file is on disk, so a directory named `step-*` is always complete;
temporaries left by a killed run are deleted, never loaded. Checkpoints of another configuration
(different identity: params, tokens or seed changed) are deleted before training starts.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from stages import atomic

STATE = "trainer_state.json"
PREFIX = "step-"


def name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def tmp_dir(root: Path, step: int, launch: str) -> Path:
    return root / f".{name(step)}.tmp-{launch}"


def complete(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and p.name.startswith(PREFIX) and (p / STATE).is_file())


def prepare(root: Path, identity: str, log) -> None:
    """Delete temporaries and checkpoints of another identity (then `complete` lists only
    resumable ones)."""
    root.mkdir(parents=True, exist_ok=True)
    for leftover in sorted(root.glob(f".{PREFIX}*")):
        log.info("removing incomplete checkpoint %s (left by a killed run)", leftover.name)
        shutil.rmtree(leftover)
    for ckpt in complete(root):
        if read_state(ckpt).get("identity") != identity:
            log.info("removing checkpoint %s: trained with other params or data", ckpt.name)
            shutil.rmtree(ckpt)


def read_state(ckpt: Path) -> dict:
    return json.loads((ckpt / STATE).read_text())


def commit(tmp: Path, final: Path, state: dict, keep_last: int) -> None:
    """Write the trainer state, fsync every file, rename into place, prune old checkpoints."""
    (tmp / STATE).write_text(json.dumps(state, sort_keys=True) + "\n")
    for path in sorted(tmp.rglob("*")):
        if path.is_file():
            atomic.fsync(path)
    os.replace(tmp, final)
    atomic.fsync(final.parent)
    for old in complete(final.parent)[:-keep_last]:
        shutil.rmtree(old)
