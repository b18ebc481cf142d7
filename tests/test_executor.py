"""The data-parallel executor: local processes and a real Ray cluster (a head and a worker node on
127.0.0.1) give byte-identical stage outputs, a worker killed mid-stage is retried by Ray with the
output unchanged, and the choice never makes a stage stale."""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest

from stages.executor import open_executor
from stages.params import Runtime
from stages.registry import STAGES
from tests.conftest import ray_token_env, sh, stop_ray
from tests.curation_helpers import docstrings, file_bytes, make_root, row, run, set_params

pytestmark = pytest.mark.slow
STAGES_RUN = ("signals", "quality", "filter", "dedup", "tokenize")
TOKENIZE = {"corpus": "dedup", "vocab_size": 400, "seq_len": 64}  # no synth/mix upstream


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray cluster of two nodes on this machine, one CPU each, started as a team would start
    one (`ray start --head`, then `ray start --address` on a worker node), its ports guarded by
    a token of its own (`ray_token_env`)."""
    from orchestration.webserver import free_port

    port = free_port()
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths
    auth = ray_token_env(temp_dir)
    head = sh("ray", "start", "--head", "--port", str(port), "--num-cpus", "1",
              "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir",
              str(temp_dir), cwd=Path.cwd(), env=auth)
    address = re.search(r"ray start --address='([^']+)'", head.stdout + head.stderr).group(1)
    saved = {k: os.environ.get(k) for k in auth}
    os.environ.update(auth)  # what joins the cluster (stages, the tests' drivers) presents it
    try:
        sh("ray", "start", "--address", address, "--num-cpus", "1", "--disable-usage-stats",
           cwd=Path.cwd())
        yield address
    finally:
        stop_ray(temp_dir)
        for k, v in saved.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


def _square_dying_once(marker: Path, item: int) -> int:
    """Squares; the first time it sees item 3 its worker process is SIGKILLed."""
    if item == 3 and not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return item * item


def test_ray_retries_a_killed_worker_and_keeps_order(ray_cluster, tmp_path):
    from functools import partial

    runtime = Runtime(executor="ray", ray_address=ray_cluster)
    with open_executor(runtime, workers=2) as pool:
        assert pool.workers == 2  # the cluster's CPUs, over both nodes
        got = list(pool.map(partial(_square_dying_once, tmp_path / "died"), range(8)))
    assert got == [i * i for i in range(8)]
    assert (tmp_path / "died").exists()  # the task was killed once, then re-run


def _corpus() -> list[dict]:
    texts = docstrings(20)
    return [row(t, f"d{i}") for i, t in enumerate(texts[:240])] + [
        row(texts[i], f"dup{i}") for i in range(0, 60, 3)]  # exact duplicates for dedup


def _kill_one_ray_worker(stop: threading.Event, killed: list[int]) -> None:
    """Kill the first Ray worker process seen running a task (`ray::_call`)."""
    import psutil

    while not stop.is_set() and not killed:
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if any("ray::_call" in part for part in (proc.info["cmdline"] or [])):
                proc.kill()
                killed.append(proc.info["pid"])
                return
        time.sleep(0.01)


def test_local_and_ray_outputs_are_identical_even_after_a_killed_worker(ray_cluster, tmp_path):
    local = make_root(tmp_path / "local", _corpus(), runtime={"workers": 2}, tokenize=TOKENIZE)
    (local / "data/mix/corpus").mkdir(parents=True)
    remote = tmp_path / "ray"
    shutil.copytree(local, remote)
    run(local, *STAGES_RUN)
    set_params(remote, runtime={"executor": "ray", "ray_address": ray_cluster})
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_one_ray_worker, args=(stop, killed))
    killer.start()
    try:
        run(remote, *STAGES_RUN)
    finally:
        stop.set()
        killer.join()
    assert killed, "no Ray worker was seen running a task"
    for out in ("data/signals", "data/quality", "data/filter", "data/dedup", "data/tokenize"):
        assert file_bytes(remote / out) == file_bytes(local / out), out
    for name in STAGES_RUN:
        assert ((remote / f"reports/{name}/metrics.json").read_bytes()
                == (local / f"reports/{name}/metrics.json").read_bytes())


def test_the_executor_is_runtime_not_identity(monkeypatch):
    assert not any(p.startswith(("runtime", "executor")) for s in STAGES for p in s.params)
    assert Runtime().executor == "local"
    monkeypatch.setenv("SLM_EXECUTOR", "spark")
    with pytest.raises(ValueError, match="unknown executor 'spark'"):
        open_executor(Runtime(), 1)


def _mark_and_square(folder: Path, item: int) -> int:
    (folder / str(item)).touch()
    return item * item


def test_local_workers_hold_a_bounded_number_of_items_in_flight(tmp_path):
    """Items run ahead of the caller by at most 2 x workers (a slower caller never gets a queue
    of every result), results come in input order, and all of them come."""
    from functools import partial

    from stages.executor import LocalProcesses

    with LocalProcesses(2) as pool:
        results = pool.map(partial(_mark_and_square, tmp_path), range(20))
        deadline = time.monotonic() + 60
        while len(list(tmp_path.iterdir())) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # room for more to start, if anything would start them
        assert len(list(tmp_path.iterdir())) == 4
        assert list(results) == [i * i for i in range(20)]
    assert len(list(tmp_path.iterdir())) == 20


def test_the_document_cache_leaves_no_connection_open(tmp_path):
    """Storing and reading close their SQLite connections (an unclosed one kept its page cache
    until a garbage collection: the stage's process grew with every batch it stored)."""
    import gc
    import sqlite3

    import pyarrow as pa

    from stages.textstats.doc_cache import DocCache

    def open_connections() -> int:
        return sum(isinstance(o, sqlite3.Connection) for o in gc.get_objects())

    cache = DocCache(tmp_path, "v1")
    compute = lambda texts: pa.table({"n": [len(t) for t in texts]})  # noqa: E731
    gc.collect()
    gc.disable()
    try:
        before = open_connections()
        for batch in (["a", "bb"], ["bb", "ccc"]):
            table, fresh = cache.compute(batch, compute)
            cache.store([fresh])
            assert table["n"].to_pylist() == [len(t) for t in batch]
        assert open_connections() == before
    finally:
        gc.enable()
