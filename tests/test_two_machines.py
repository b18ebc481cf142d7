"""Two machines sharing artifacts through the DVC S3 remote (moto on 127.0.0.1): a worker with only
the repository pulls a stage's inputs, runs it, pushes; the launcher takes the new dvc.lock, pulls,
and finds the stage up to date in DVC and in Dagster. A push killed midway never leaves the remote
with an object a pull would accept for the wrong bytes."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import time
from pathlib import Path

import pytest

from orchestration.dvc_cli import venv_env
from orchestration.sync import sync_to_instance
from tests.conftest import set_params, sh, temp_instance
from tests.pipeline_helpers import dagster_unsynced, dvc_changed

pytestmark = pytest.mark.slow


def _git_commit(root: Path, message: str) -> None:
    sh("git", "add", "-A", cwd=root)
    sh("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", message, cwd=root)


def _keys(client, bucket: str) -> set[str]:
    return {o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])}


def _objects(client, bucket: str) -> dict[str, bytes]:
    return {k: client.get_object(Bucket=bucket, Key=k)["Body"].read()
            for k in sorted(_keys(client, bucket))}


def _assert_whole(objects: dict[str, bytes]) -> None:
    """Every object on the remote is content-addressed: its bytes hash to its key."""
    for key, body in objects.items():
        want = "".join(key.split("/files/md5/")[1].split("/")).removesuffix(".dir")
        assert hashlib.md5(body).hexdigest() == want, f"{key} holds other bytes"


def _digest(path: Path) -> dict[str, str]:
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_worker_runs_a_stage_and_the_launcher_sees_it_current(project: Path, tmp_path: Path,
                                                              s3_server: str, s3_bucket):
    import boto3

    launcher, bucket = project, s3_bucket("two-machines")
    sh("dvc", "remote", "add", "-d", "storage", f"s3://{bucket}/cache", cwd=launcher)
    sh("dvc", "remote", "modify", "storage", "endpointurl", s3_server, cwd=launcher)
    sh("dvc", "repro", "signals", cwd=launcher)
    sh("dvc", "push", cwd=launcher)
    _git_commit(launcher, "ingest and signals")

    worker = tmp_path / "worker"  # a second machine: the repository only, no data, no cache
    sh("git", "clone", "-q", str(launcher), str(worker), cwd=tmp_path)
    assert not (worker / "data" / "ingest").exists() and not (worker / ".dvc" / "cache").exists()
    out = sh("python", "-m", "orchestration", "run-on-worker", "quality", cwd=worker).stdout
    assert "pulled data/ingest, data/signals" in out
    _git_commit(worker, "quality, run on the worker")

    sh("git", "pull", "-q", str(worker), "HEAD", cwd=launcher)
    sh("dvc", "pull", "quality", cwd=launcher)
    assert _digest(launcher / "data/quality") == _digest(worker / "data/quality")
    assert not {"ingest", "signals", "quality"} & dvc_changed(launcher)
    instance = temp_instance(tmp_path / "dagster_home")
    list(sync_to_instance(launcher, instance))  # what the dvc_lock_sync sensor does
    assert dagster_unsynced(launcher, instance) == set()

    # A new classifier on the worker, whose push is killed midway: the remote holds only whole,
    # content-addressed objects, so the launcher's pull either fails or gets the right bytes.
    client = boto3.client("s3", endpoint_url=s3_server)
    before = _keys(client, bucket)
    set_params(worker, quality={"c": 0.25})
    sh("dvc", "repro", "--single-item", "quality", cwd=worker)
    push = subprocess.Popen(["dvc", "push", "quality"], cwd=worker, env=venv_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while push.poll() is None and _keys(client, bucket) == before:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    push.send_signal(signal.SIGKILL)
    push.wait()
    _assert_whole(_objects(client, bucket))
    _git_commit(worker, "quality with c = 0.25")
    sh("git", "pull", "-q", str(worker), "HEAD", cwd=launcher)
    pulled = sh("dvc", "pull", "quality", cwd=launcher, check=False)
    if pulled.returncode == 0:  # the push got everything there before the kill
        assert _digest(launcher / "data/quality") == _digest(worker / "data/quality")
    sh("dvc", "push", "quality", cwd=worker)  # the worker pushes again: now it completes
    sh("dvc", "pull", "quality", cwd=launcher)
    assert _digest(launcher / "data/quality") == _digest(worker / "data/quality")
    _assert_whole(_objects(client, bucket))
    assert "quality" not in dvc_changed(launcher)
