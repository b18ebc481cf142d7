"""Running DVC: the CLI, or its Python API in this process for the per-asset commit; one command
at a time per project, retried on DVC's repo lock."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from orchestration import ledger, lock_yaml

LOCK_ERRORS = ("Unable to acquire lock", "is busy")
_COMMIT_LOCK = threading.Lock()  # the working directory is the process's: one commit at a time


class DvcError(RuntimeError):
    pass


def venv_env() -> dict[str, str]:
    """The environment with this interpreter's bin dir first on PATH (so `python` is ours)."""
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


def dvc_executable() -> str:
    candidate = Path(sys.executable).parent / "dvc"
    return str(candidate) if candidate.exists() else "dvc"


@contextmanager
def project_lock(root: Path):
    """Serialise DVC commands issued by this pipeline (Dagster steps run in parallel)."""
    lock_dir = root / ".dvc" / "tmp"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / "pipeline-orchestration.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def dvc(
    root: Path, *args: str, retries: int = 5, check: bool = True
) -> subprocess.CompletedProcess:
    """Run `dvc <args>` in `root`; retry while another DVC process holds the repo lock."""
    cmd = [dvc_executable(), *args]
    for attempt in range(retries + 1):
        with project_lock(root):
            proc = subprocess.run(
                cmd, cwd=root, env=venv_env(), capture_output=True, text=True, check=False
            )
        busy = any(m in proc.stderr + proc.stdout for m in LOCK_ERRORS)
        if proc.returncode == 0 or not busy or attempt == retries:
            break
        time.sleep(0.5 * 2**attempt)
    if check and proc.returncode != 0:
        raise DvcError(
            f"`dvc {' '.join(args)}` failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}"
        )
    return proc


def commit(root: Path, stage: str, retries: int = 5) -> None:
    """`dvc commit --force <stage>` in this process: DVC's own hashing, cache and lock entry
    (`stage.save`, `stage.commit`, `to_lockfile`, as `dvc.repo.commit` does them), with the lock
    file written by `lock_yaml` (DVC's bytes, only the changed stage re-emitted) and atomically. No
    interpreter start-up per asset (the CLI's ~0.5 s) and no round-trip YAML (DVC's ~0.6 s)."""
    from dvc.lock import LockError
    from dvc.repo import Repo

    dvc_log = logging.getLogger("dvc")
    level = dvc_log.level
    for attempt in range(retries + 1):
        try:
            dvc_log.setLevel(logging.WARNING)  # as --quiet: no "Updating lock file" info line
            # DVC resolves some paths against the working directory: be where the CLI would be
            with project_lock(root), _COMMIT_LOCK, contextlib.chdir(root), Repo(str(root)) as repo:
                _commit_stage(repo, root, stage)
            return
        except LockError:
            if attempt == retries:
                raise
            time.sleep(0.5 * 2**attempt)
        finally:
            dvc_log.setLevel(level)


def _commit_stage(repo, root: Path, target: str) -> None:
    from dvc.repo import lock_repo
    from dvc.stage.serialize import to_lockfile

    with lock_repo(repo):
        stages = []
        for info in repo.stage.collect_granular(target):
            info.stage.save()
            info.stage.commit(filter_info=info.filter_info, relink=True)
            stages.append(info.stage)
        entries = {name: e for st in stages for name, e in to_lockfile(st).items()}
        if _write_lock_entries(root / ledger.LOCK_FILE, entries):
            repo.scm_context.track_file(ledger.LOCK_FILE)  # `git add` where core.autostage is on


def _write_lock_entries(path: Path, entries: dict) -> bool:
    """Set these stages' entries in dvc.lock, atomically; False if it already holds them."""
    data = ledger.read_lock_file(path.parent)
    current = data.get("stages", {})
    if data and all(current.get(name) == entry for name, entry in entries.items()):
        return False
    text = lock_yaml.with_entries(path.read_text() if data else "", data, entries)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True
