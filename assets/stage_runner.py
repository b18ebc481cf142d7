"""Run a stage's command as a subprocess, streaming its log lines into the Dagster run log.

A stage that fails is told apart from one whose worker *crashed*: a process killed by a signal
(the OOM killer's SIGKILL, SIGSEGV, SIGBUS, a preemption's SIGTERM, NCCL's SIGABRT, ...) is not a
bug in the stage and may succeed when run again; a Python exception or invalid params will not.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections import deque
from pathlib import Path

from dagster import Failure, MetadataValue

from orchestration.dvc_cli import venv_env

# torch.distributed.elastic (behind `accelerate launch`/torchrun) exits 1 whatever happened to its
# workers; the ChildFailedError it prints names the root cause (the first worker that failed) and
# its exit code, negative when a signal killed it. The other workers listed under "Failures:" are
# the ones the agent SIGTERMed afterwards, so only the root cause tells crash from exception.
_ELASTIC_ROOT = re.compile(r"^Root Cause \(first observed failure\):")
_ELASTIC_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)")
_ELASTIC_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")


class StageCrashed(Failure):
    """The stage (or one of its training workers) was killed by a signal, not failed by an error."""

    def __init__(self, cause: str, signum: int, **kwargs):
        super().__init__(**kwargs)
        self.cause = cause
        self.signum = signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class _ElasticRootCause:
    """Follows a log for elastic's ChildFailedError report; remembers the root cause's exit code."""

    def __init__(self) -> None:
        self._in_root = False
        self.rank: str | None = None
        self.exitcode: int | None = None

    def feed(self, line: str) -> None:
        if _ELASTIC_ROOT.match(line):
            self._in_root, self.rank, self.exitcode = True, None, None
        elif self._in_root:
            if m := _ELASTIC_RANK.match(line):
                self.rank = m.group(1)
            elif m := _ELASTIC_EXIT.match(line):
                self.exitcode = int(m.group(1))
                self._in_root = False


def crash_cause(code: int, elastic: _ElasticRootCause | None = None) -> tuple[str, int] | None:
    """(description, signal number) when exit status `code` means a crashed worker, else None.

    Crashes: death by a signal (negative code), a shell-reported signal (128 + N; `sh -c` reports
    its child's death so), or exit 1 from an elastic launcher whose root-cause worker died by a
    signal. Exit codes 1 and 2 otherwise (a Python exception, invalid params) are failures.
    """
    if code < 0:
        return f"killed by {signal_name(-code)}", -code
    if 128 < code < 128 + 65:
        return f"killed by {signal_name(code - 128)} (exit code {code})", code - 128
    if code != 0 and elastic is not None and elastic.exitcode is not None and elastic.exitcode < 0:
        signum = -elastic.exitcode
        return f"training worker (rank {elastic.rank}) killed by {signal_name(signum)}", signum
    return None


def run_streamed(cmd: str, root: Path, log) -> float:
    """Run `cmd` in `root` (the same command dvc.yaml runs); return its wall time in seconds.

    Raises `StageCrashed` when a signal killed the stage or one of its workers, `Failure` on any
    other non-zero exit.
    """
    env = venv_env()
    env["PYTHONUNBUFFERED"] = "1"
    tail: deque[str] = deque(maxlen=40)
    elastic = _ElasticRootCause()
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
            elastic.feed(line)
            log.info(line)
        code = proc.wait()
    except BaseException:
        os.killpg(proc.pid, 9)  # a cancelled run must not leave the stage running
        proc.wait()
        raise
    elapsed = time.monotonic() - started
    if code != 0:
        metadata = {"exit_code": code, "log_tail": MetadataValue.text("\n".join(tail))}
        crash = crash_cause(code, elastic)
        if crash is not None:
            cause, signum = crash
            raise StageCrashed(
                cause,
                signum,
                description=f"`{cmd}` {cause}",
                metadata={**metadata, "signal": signal_name(signum)},
            )
        # an error in the stage or its params: running it again cannot help, whatever the policy
        raise Failure(
            description=f"`{cmd}` exited with {code}", metadata=metadata, allow_retries=False
        )
    return elapsed
