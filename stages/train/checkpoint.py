"""Atomic, resumable training checkpoints in a persistent directory.

A checkpoint is a directory `step-<8 digits>` holding what `accelerate` saves (model, optimizer,
registered scheduler, every process's RNG states) plus `trainer_state.json` (step, data position,
the curve so far, and the identity of the run). It is written under `.step-<n>.tmp-<launch>` and
renamed into place once every file is on disk, so a directory named `step-*` is always complete;
temporaries left by a killed run are deleted, never loaded. Checkpoints of another configuration
(different identity: params, data, code or seed changed) are deleted before training starts.

A snapshot (`snapshot-<name>`) is the exported model at one step (e.g. the end of a WSD stable
phase, which continued training starts from), written the same atomic way and kept until the
run ends, when it is copied into the output.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from stages import atomic

STATE = "trainer_state.json"
PREFIX = "step-"
SNAPSHOT = "snapshot-"


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
    for leftover in sorted([*root.glob(f".{PREFIX}*"), *root.glob(f".{SNAPSHOT}*")]):
        log.info("removing incomplete checkpoint %s (left by a killed run)", leftover.name)
        shutil.rmtree(leftover)
    snapshots = [p for p in root.glob(f"{SNAPSHOT}*") if p.is_dir()]
    for ckpt in sorted([*complete(root), *snapshots]):
        if not (ckpt / STATE).is_file() or read_state(ckpt).get("identity") != identity:
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
    if keep_last:
        for old in complete(final.parent)[:-keep_last]:
            shutil.rmtree(old)


def snapshot(root: Path, name: str) -> Path | None:
    path = root / f"{SNAPSHOT}{name}"
    return path if (path / STATE).is_file() else None


def save_snapshot(root: Path, name: str, step: int, identity: str, launch: str, export) -> None:
    """`export(directory)` writes the model; the directory appears complete or not at all."""
    tmp = root / f".{SNAPSHOT}{name}.tmp-{launch}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    export(tmp)
    final = root / f"{SNAPSHOT}{name}"
    if final.exists():
        shutil.rmtree(final)
    commit(tmp, final, {"identity": identity, "step": step}, keep_last=0)


def copy_snapshot(root: Path, name: str, dest: Path) -> None:
    src = snapshot(root, name)
    if src is None:
        raise RuntimeError(f"{root}: snapshot {name!r} is missing; delete {root} and re-run")
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(STATE))
