"""`dvc.lock` as the ledger: data versions, code versions, and why a stage is stale.

Only the documented `dvc.lock` format is read; hashes of data outputs are DVC's own (never
recomputed here). Code dependencies are plain files whose DVC md5 is the md5 of their bytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestration import lock_yaml
from stages import params as params_mod
from stages.registry import Stage, producer_of

LOCK_FILE = "dvc.lock"


_lock_file = params_mod.ParsedOnce(lambda _, text: lock_yaml.loads(text.decode("utf-8")) or {})


def read_lock_file(root: Path) -> dict[str, Any]:
    """The whole dvc.lock (`{}` when there is none), parsed once per content of the file in this
    process. Shared: treat it as read-only."""
    path = root / LOCK_FILE
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return {}
    return _lock_file(path, text)


def read_lock(root: Path) -> dict[str, dict[str, Any]]:
    """Stage name -> its dvc.lock entry (empty when nothing has been recorded); read-only."""
    return read_lock_file(root).get("stages", {})


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def external_md5(path: Path) -> str:
    """The md5 DVC records for an input no stage produces (e.g. a generator model): a file's
    md5, or a directory's `.dir` hash computed by DVC's own library (dvc-data), never re-derived
    here."""
    if path.is_file():
        return file_md5(path)
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem
    from dvc_objects.fs.memory import MemoryFileSystem

    odb = HashFileDB(MemoryFileSystem(), "/odb")
    _, _, obj = build(odb, str(path.resolve()), LocalFileSystem(), "md5", dry_run=True)
    return obj.hash_info.value


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def declared_params(stage: Stage, raw: dict[str, Any]) -> dict[str, Any]:
    return {key: params_mod.lookup(raw, key) for key in stage.params}


def code_version(stage: Stage, root: Path, raw_params: dict[str, Any]) -> str:
    """Hash of the command, the code files' bytes and the declared params' values.

    Paths are repo-relative and nothing runtime-specific is included, so the version is the same
    on every machine and checkout.
    """
    h = hashlib.sha256(stage.cmd.encode())
    for rel in stage.code_files(root):
        h.update(f"\0{rel}\0{file_md5(root / rel)}".encode())
    h.update(_canonical(declared_params(stage, raw_params)).encode())
    for dep in stage.deps:  # inputs no stage produces have no data version: their content counts
        if producer_of(dep) is None and (root / dep).exists():
            h.update(f"\0{dep}\0{external_md5(root / dep)}".encode())
    return h.hexdigest()[:24]


def recorded_out_md5(entry: dict[str, Any] | None, path: str) -> str | None:
    for out in (entry or {}).get("outs", []):
        if out.get("path") == path:
            return out.get("md5")
    return None


def data_version(stage: Stage, lock: dict[str, dict[str, Any]]) -> str | None:
    """The md5 DVC recorded for the stage's data output, or None if never recorded."""
    return recorded_out_md5(lock.get(stage.name), stage.out)


@dataclass(frozen=True)
class Fingerprint:
    """What the ledger says about one stage against the current workspace."""

    stage: str
    reasons: tuple[str, ...]  # empty = dvc.lock matches the current code, params and inputs
    data_version: str | None
    input_versions: dict[str, str | None]  # upstream stage -> data version recorded as input

    @property
    def current(self) -> bool:
        return not self.reasons


def _param_diffs(key: str, old: Any, new: Any) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            if old.get(k, "<absent>") != new.get(k, "<absent>"):
                out += _param_diffs(f"{key}.{k}", old.get(k, "<absent>"), new.get(k, "<absent>"))
        return out
    return [f"param {key}: {json.dumps(old, default=str)} -> {json.dumps(new, default=str)}"]


def fingerprint(
    stage: Stage,
    root: Path,
    lock: dict[str, dict[str, Any]] | None = None,
    raw_params: dict[str, Any] | None = None,
) -> Fingerprint:
    """Compare the stage's dvc.lock entry with the current command, code, params and inputs."""
    lock = read_lock(root) if lock is None else lock
    raw_params = params_mod.read_params(root) if raw_params is None else raw_params
    entry = lock.get(stage.name)
    inputs = {p.name: data_version(p, lock) for d in stage.deps if (p := producer_of(d))}
    if entry is None:
        return Fingerprint(stage.name, ("never run: no dvc.lock entry",), None, inputs)
    reasons: list[str] = []
    if entry.get("cmd") != stage.cmd:
        reasons.append(f"command changed: {entry.get('cmd')!r} -> {stage.cmd!r}")
    recorded = {d["path"]: d.get("md5") for d in entry.get("deps", [])}
    code = stage.code_files(root)
    for rel in code:
        if rel not in recorded:
            reasons.append(f"code added: {rel}")
        elif recorded[rel] != file_md5(root / rel):
            reasons.append(f"code changed: {rel}")
    for rel in sorted(set(recorded) - set(code) - set(stage.deps)):
        reasons.append(f"dependency removed: {rel}")
    for dep in stage.deps:
        producer = producer_of(dep)
        current = data_version(producer, lock) if producer else None
        if dep not in recorded:
            reasons.append(f"input added: {dep}")
        elif producer and current is None:
            reasons.append(f"input {dep}: {producer.name} has not been recorded yet")
        elif producer and recorded[dep] != current:
            reasons.append(f"input changed: {dep} (new output of {producer.name})")
        elif not producer and (root / dep).exists() and recorded[dep] != external_md5(root / dep):
            reasons.append(f"input changed: {dep} (external)")
    old_params = (entry.get("params") or {}).get(params_mod.PARAMS_FILE, {})
    for key, value in declared_params(stage, raw_params).items():
        if key not in old_params:
            reasons.append(f"param added: {key}")
        elif old_params[key] != value:
            reasons += _param_diffs(key, old_params[key], value)
    for out in stage.all_outs:
        if recorded_out_md5(entry, out) is None:
            reasons.append(f"output not recorded: {out}")
        elif not (root / out).exists():
            reasons.append(f"output missing from workspace: {out}")
    return Fingerprint(stage.name, tuple(reasons), data_version(stage, lock), inputs)
