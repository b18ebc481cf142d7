"""Run a stage's command as a subprocess, streaming its log lines into the Dagster run log."""

from __future__ import annotations

import os
import subprocess
import time
from collections import deque
from pathlib import Path

from dagster import Failure, MetadataValue

from orchestration.dvc_cli import venv_env


def run_streamed(cmd: str, root: Path, log) -> float:
    """Run `cmd` in `root` (the same command dvc.yaml runs); return its wall time in seconds."""
    env = venv_env()
    env["PYTHONUNBUFFERED"] = "1"
    tail: deque[str] = deque(maxlen=40)
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        shell=True,
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            log.info(line)
        code = proc.wait()
    except BaseException:
        os.killpg(proc.pid, 9)  # a cancelled run must not leave the stage running
        proc.wait()
        raise
    elapsed = time.monotonic() - started
    if code != 0:
        raise Failure(
            description=f"`{cmd}` exited with {code}",
            metadata={"log_tail": MetadataValue.text("\n".join(tail))},
        )
    return elapsed
