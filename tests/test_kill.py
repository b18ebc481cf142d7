"""A stage killed mid-run (SIGKILL) leaves nothing that DVC or Dagster records as complete."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestration import ledger
from orchestration.dvc_cli import venv_env
from stages.registry import stage
from tests.conftest import set_params, sh
from tests.pipeline_helpers import dvc_changed

pytestmark = pytest.mark.slow


def _kill_when_writing(cmd: list[str], root: Path, out: Path) -> None:
    """Start `cmd`, SIGKILL its whole process group once the stage's temp output appears."""
    env = venv_env()
    proc = subprocess.Popen(
        cmd,
        cwd=root,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not list(out.parent.glob(f".{out.name}.tmp-*")):
        assert proc.poll() is None, "stage finished before it could be killed; make it bigger"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("front_end", ["stage", "dvc"])
def test_sigkill_leaves_no_complete_output(project: Path, front_end: str):
    ingest = stage("ingest")
    out = project / ingest.out
    if front_end == "dvc":
        sh("dvc", "repro", "ingest", cwd=project)  # a recorded earlier result ...
        set_params(project, base={"seed": 1})  # ... made stale, re-run and killed
        cmd = ["dvc", "repro", "ingest"]
    else:
        cmd = [sys.executable, "-m", "stages", "run", "ingest"]
    _kill_when_writing(cmd, project, out)

    assert not ledger.fingerprint(ingest, project).current
    assert "ingest" in dvc_changed(project)
    if front_end == "stage":
        assert not out.exists()  # the temp dir never became the output

    sh("dvc", "repro", "ingest", cwd=project)
    assert ledger.fingerprint(ingest, project).current
    assert "ingest" not in dvc_changed(project)
    assert not list(out.parent.glob(f".{out.name}.tmp-*")), "killed run's temp output was swept"
