"""Shared fixtures: a temporary copy of the project with git + DVC initialised, tiny params."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from orchestration.dvc_cli import venv_env
from stages.profiles import merge

REPO = Path(__file__).resolve().parent.parent
EXCLUDE_TOP = {"data", "reports", "dvc.lock", ".dagster_home", "docs"}


def sh(
    *cmd: str, cwd: Path, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run a command with this interpreter's bin dir first on PATH (so `python`/`dvc` are ours)."""
    full_env = {**venv_env(), **(env or {})}
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc



def ray_token_env(temp_dir: Path) -> dict[str, str]:
    """The environment for a Ray cluster guarded by its own token (in `temp_dir`), for the
    `ray start` of every node and every process that joins. Explicit, because `ray start --head`
    turns token authentication on only when a token already exists (~/.ray/auth_token, which a
    local `ray.init()` leaves behind): without this a fresh machine's head ran unguarded and
    refused the nodes that presented a token."""
    token = temp_dir / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


def stop_ray(temp_dir: Path) -> None:
    """Stop the Ray processes of the cluster started with `--temp-dir temp_dir`, and only those
    (`ray stop` would stop every Ray process on the machine, a user's own cluster included)."""
    import psutil

    roots = [p for p in psutil.process_iter(["cmdline"])
             if any(str(temp_dir) in part for part in (p.info["cmdline"] or []))]
    ours = {p.pid: p for root in roots for p in [root, *root.children(recursive=True)]}
    for proc in ours.values():  # agents rename themselves (`ray::...`): found as children
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(list(ours.values()), timeout=30)
    shutil.rmtree(temp_dir, ignore_errors=True)

def copy_project(dest: Path) -> Path:
    """Copy the project's source files (tracked and new, not ignored) without outputs or state."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, listed):
        if rel.split("/", 1)[0] in EXCLUDE_TOP or not (REPO / rel).is_file():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    return dest


def set_params(root: Path, **sections) -> None:
    """Deep-merge the given sections into root/params.yaml."""
    path = root / "params.yaml"
    data = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump(merge(data, sections), sort_keys=False))


# The tiny profile: enough real text for every stage, seconds to process.
TINY = yaml.safe_load((REPO / "profiles" / "tiny.yaml").read_text())


def tiny_project_through(dest: Path, stages: tuple[str, ...]) -> Path:
    """A tiny-profile project copy at `dest` with `stages` run in process (no DVC needed)."""
    from stages.runner import run_stage

    root = copy_project(dest)
    set_params(root, **TINY)
    for name in stages:
        run_stage(name, root)
    return root


# Every stage before pretrain, in order (what a training stage's tests start from).
UPSTREAM = ("ingest", "signals", "quality", "filter", "dedup", "synth", "mix", "tokenize")


@pytest.fixture(scope="session")
def pretrained_project(tmp_path_factory) -> Path:
    """A tiny-profile project run through pretrain, once per test session. Shared: copy it
    (`copy_tree`) before running anything in it."""
    return tiny_project_through(tmp_path_factory.mktemp("lineage") / "project",
                                (*UPSTREAM, "pretrain"))


def copy_tree(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True)
    return dest


def temp_instance(path: Path):
    """A persistent (SQLite) Dagster instance in `path`, telemetry off."""
    from dagster import DagsterInstance

    path.mkdir(parents=True, exist_ok=True)
    return DagsterInstance.local_temp(str(path), overrides={"telemetry": {"enabled": False}})


def new_project(dest: Path) -> Path:
    """A fresh project copy with git and DVC initialised and the tiny profile in params.yaml."""
    root = copy_project(dest)
    set_params(root, **TINY)
    sh("git", "init", "-q", cwd=root)
    if not (root / ".dvc" / "config").exists():
        sh("dvc", "init", "-q", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init", cwd=root)
    return root


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return new_project(tmp_path / "project")


@pytest.fixture(scope="session")
def reproduced_project(tmp_path_factory) -> Path:
    """A new project after one `dvc repro` of the whole lineage, once per test session. Shared:
    use `reproduced`, a private copy."""
    root = new_project(tmp_path_factory.mktemp("reproduced") / "project")
    sh("dvc", "repro", cwd=root)
    return root


@pytest.fixture
def reproduced(reproduced_project: Path, tmp_path: Path) -> Path:
    """A private copy of `reproduced_project` (git, DVC cache, outputs and dvc.lock)."""
    return copy_tree(reproduced_project, tmp_path / "project")


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3-compatible server on 127.0.0.1; fake credentials only in the environment."""
    from moto.server import ThreadedMotoServer

    from orchestration.webserver import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
    )
    yield f"http://127.0.0.1:{port}"
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_server):
    """Factory: create a fresh bucket on the test server and return its name."""
    import uuid

    import boto3

    client = boto3.client("s3", endpoint_url=s3_server)

    def make(prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=name)
        return name

    return make
