"""Crash retries: a stage killed by a signal is retried by Dagster; a stage that errors is not."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from dagster import AssetSelection, DagsterEventType, Failure, materialize

from assets.stage_runner import StageCrashed, _ElasticRootCause, crash_cause, run_streamed
from orchestration.definitions import build_definitions
from stages.registry import stage
from tests.conftest import set_params, temp_instance

# The end of what `accelerate launch` (torch.distributed.elastic) prints when it exits 1.
ELASTIC_REPORT = """torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
w.py FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-11-30_01:30:23
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 29285)  (SIGTERM)
  error_file: <N/A>
  traceback : Signal 15 (SIGTERM) received by PID 29285
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-30_01:30:23
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : {root} (pid: 29286) {name}
  error_file: <N/A>
  traceback : whatever
============================================================"""


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, line: str) -> None:
        self.lines.append(line)


def _elastic(root_exitcode: int) -> _ElasticRootCause:
    scanner = _ElasticRootCause()
    for line in ELASTIC_REPORT.format(root=root_exitcode, name="").splitlines():
        scanner.feed(line)
    return scanner


def test_crash_or_error_by_exit_status():
    assert crash_cause(-signal.SIGKILL) == ("killed by SIGKILL", signal.SIGKILL)
    assert crash_cause(-signal.SIGSEGV)[1] == signal.SIGSEGV
    assert crash_cause(128 + signal.SIGBUS) == ("killed by SIGBUS (exit code 135)", signal.SIGBUS)
    assert crash_cause(1) is None and crash_cause(2) is None
    # elastic exits 1 either way; only its root cause (not the SIGTERMed siblings) decides
    assert crash_cause(1, _elastic(-9)) == ("training worker (rank 1) killed by SIGKILL", 9)
    assert crash_cause(1, _elastic(1)) is None


def test_run_streamed_raises_crash_only_for_signals(tmp_path: Path):
    with pytest.raises(StageCrashed) as crash:
        run_streamed("echo started; kill -SEGV $$", tmp_path, _Log())
    assert crash.value.signum == signal.SIGSEGV and "SIGSEGV" in crash.value.description
    with pytest.raises(Failure) as failure:
        run_streamed("echo 'error: bad params' >&2; exit 2", tmp_path, _Log())
    assert not isinstance(failure.value, StageCrashed)
    assert not failure.value.allow_retries
    assert "error: bad params" in failure.value.metadata["log_tail"].value


@pytest.mark.slow
def test_real_elastic_worker_kill_is_a_crash(tmp_path: Path):
    """What `accelerate launch` really prints when a worker is SIGKILLed (as pretrain runs it)."""
    (tmp_path / "w.py").write_text(
        "import os, signal, time\n"
        "if os.environ['RANK'] == '1':\n    os.kill(os.getpid(), signal.SIGKILL)\n"
        "time.sleep(30)\n"
    )
    cmd = (
        f"{sys.executable} -m accelerate.commands.launch --multi_gpu --num_processes 2 "
        "--num_machines 1 --mixed_precision no --dynamo_backend no "
        "--num_cpu_threads_per_process 1 w.py"
    )
    with pytest.raises(StageCrashed) as crash:
        run_streamed(cmd, tmp_path, _Log())
    assert crash.value.cause == "training worker (rank 1) killed by SIGKILL"
    assert crash.value.metadata["exit_code"].value == 1


def _descendants() -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _stage_pids(name: str) -> list[int]:
    """This test's `python -m stages run <name>` processes (not the `sh -c` around them)."""
    argv = f"-m\0stages\0run\0{name}".encode()
    pids = []
    for pid in _descendants():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if argv in cmdline and not cmdline.startswith(b"/bin/sh"):
            pids.append(pid)
    return pids


class _Killer(threading.Thread):
    """SIGKILLs the stage while it writes its temp output, at most `times` distinct processes.

    `group=True` kills the stage's process group (Popen sees -9); otherwise only the stage
    process, and the `sh -c` around it reports 137 (128 + SIGKILL).
    """

    def __init__(self, root: Path, name: str, times: int, group: bool) -> None:
        super().__init__(daemon=True)
        self.out = root / stage(name).out
        self.name_, self.times, self.group = name, times, group
        self.killed: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        pattern = f".{self.out.name}.tmp-*"
        while len(self.killed) < self.times and not self.stop.is_set():
            if list(self.out.parent.glob(pattern)):
                for pid in _stage_pids(self.name_):
                    if pid not in self.killed:
                        try:
                            if self.group:
                                os.killpg(os.getpgid(pid), signal.SIGKILL)
                            else:
                                os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            continue
                        self.killed.append(pid)
            time.sleep(0.01)


def _materialize_ingest(project: Path, instance, killer: _Killer | None = None):
    assets = build_definitions(project).assets
    if killer is not None:
        killer.start()
    try:
        return materialize(
            assets,
            instance=instance,
            selection=AssetSelection.assets("ingest"),
            raise_on_error=False,
        )
    finally:
        if killer is not None:
            killer.stop.set()
            killer.join()


def _events(result, kind: DagsterEventType) -> list:
    return [e for e in result.all_events if e.event_type == kind]


def _log_messages(instance, run_id: str) -> list[str]:
    return [e.user_message for e in instance.all_logs(run_id)]


@pytest.mark.slow
def test_sigkilled_stage_is_retried_and_succeeds(project: Path, tmp_path: Path):
    set_params(project, orchestration={"crash_retries": 2, "crash_retry_wait_s": 0})
    instance = temp_instance(tmp_path / "dagster_home")
    killer = _Killer(project, "ingest", times=1, group=True)
    result = _materialize_ingest(project, instance, killer)

    assert len(killer.killed) == 1
    assert result.success
    assert len(_events(result, DagsterEventType.STEP_UP_FOR_RETRY)) == 1
    assert len(_events(result, DagsterEventType.STEP_RESTARTED)) == 1
    assert len(_events(result, DagsterEventType.STEP_START)) == 1  # a retry is a restart
    (mat,) = result.get_asset_materialization_events()
    assert mat.materialization.metadata["executed"].value is True
    logs = _log_messages(instance, result.run_id)
    assert any("ingest crashed: killed by SIGKILL; retry 1 of 2 in 0s" in m for m in logs)


@pytest.mark.slow
def test_crash_retries_are_bounded(project: Path, tmp_path: Path):
    set_params(project, orchestration={"crash_retries": 1, "crash_retry_wait_s": 0.5})
    instance = temp_instance(tmp_path / "dagster_home")
    killer = _Killer(project, "ingest", times=2, group=False)
    started = time.monotonic()
    result = _materialize_ingest(project, instance, killer)

    assert len(killer.killed) == 2
    assert not result.success
    assert time.monotonic() - started > 0.5  # the retry waited crash_retry_wait_s
    assert len(_events(result, DagsterEventType.STEP_UP_FOR_RETRY)) == 1
    (failure,) = _events(result, DagsterEventType.STEP_FAILURE)
    error = failure.step_failure_data.error
    assert error.message.startswith("Exceeded max_retries of 1")
    assert "killed by SIGKILL (exit code 137)" in error.cause.message
    assert failure.step_failure_data.user_failure_data.metadata["signal"].value == "SIGKILL"
    logs = _log_messages(instance, result.run_id)
    assert any("no retries left (1)" in m for m in logs)


@pytest.mark.slow
def test_stage_error_is_not_retried(project: Path, tmp_path: Path):
    set_params(project, orchestration={"crash_retries": 2, "crash_retry_wait_s": 0})
    instance = temp_instance(tmp_path / "dagster_home")
    assets = build_definitions(project).assets  # loaded while params.yaml is still valid
    set_params(project, ingest={"no_such_key": 1})  # `python -m stages run ingest` exits 2
    result = materialize(
        assets, instance=instance, selection=AssetSelection.assets("ingest"), raise_on_error=False
    )

    assert not result.success
    assert _events(result, DagsterEventType.STEP_UP_FOR_RETRY) == []
    assert _events(result, DagsterEventType.STEP_RESTARTED) == []
    (failure,) = _events(result, DagsterEventType.STEP_FAILURE)
    assert "exited with 2" in failure.step_failure_data.user_failure_data.description
    tail = failure.step_failure_data.user_failure_data.metadata["log_tail"].value
    assert "ingest.no_such_key" in tail
