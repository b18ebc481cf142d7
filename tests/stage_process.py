"""A stage as a separate process, as DVC and Dagster run it: started, finished, or SIGKILLed
right after a checkpoint (what the resume tests of every training stage do)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from orchestration.dvc_cli import venv_env
from stages.train.checkpoint import complete, read_state


def start(root: Path, stage: str, **popen) -> subprocess.Popen:
    """`python -m stages run <stage>` in `root`, in a process group of its own."""
    return subprocess.Popen([sys.executable, "-m", "stages", "run", stage], cwd=root,
                            env=venv_env(), start_new_session=True, **popen)


def run(root: Path, stage: str) -> tuple[int, str]:
    """Run the stage to its end: its exit code and its output (stdout and stderr)."""
    proc = start(root, stage, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate()
    return proc.returncode, out


def run_ok(root: Path, stage: str) -> dict:
    """Run the stage; it must succeed. Its metrics."""
    code, out = run(root, stage)
    assert code == 0, out
    return json.loads((root / f"reports/{stage}/metrics.json").read_text())


def kill_after_checkpoint(root: Path, stage: str, checkpoints: str, newer_than: int) -> int:
    """Start the stage; SIGKILL it as soon as a checkpoint in `checkpoints` (relative to `root`)
    newer than step `newer_than` is complete. Returns that checkpoint's step."""
    proc = start(root, stage, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while True:
        done = complete(root / checkpoints)
        if done and read_state(done[-1])["step"] > newer_than:
            break
        assert proc.poll() is None, f"{stage} finished before it could be killed; make it longer"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return read_state(done[-1])["step"]


def resume_pair(src: Path, tmp: Path, stage: str, checkpoints: str, out: str,
                **sections) -> tuple[Path, Path]:
    """For a resume test: a copy of `src` without the stage's checkpoints and output and with
    `sections` merged into its params, and a reference copy of it where the stage ran
    uninterrupted. Returns (project, reference)."""
    import shutil

    from stages.runner import run_stage
    from tests.conftest import copy_tree, set_params

    project = copy_tree(src, tmp / "project")
    shutil.rmtree(project / checkpoints)
    shutil.rmtree(project / out)
    set_params(project, **sections)
    reference = copy_tree(project, tmp / "reference")
    run_stage(stage, reference)
    return project, reference


def assert_same_bytes(a: Path, b: Path, names: tuple[str, ...]) -> None:
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
