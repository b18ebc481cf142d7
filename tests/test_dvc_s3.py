"""DVC remote on S3 (moto's server on 127.0.0.1): push, wipe the local cache, pull, same bytes."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from tests.conftest import sh

pytestmark = pytest.mark.slow


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_push_wipe_pull_roundtrip(project: Path, s3_server: str, s3_bucket):
    bucket = s3_bucket("dvc-remote")
    sh("dvc", "repro", "ingest", cwd=project)
    before = _digest(project / "data" / "ingest")
    assert before

    sh("dvc", "remote", "add", "-d", "storage", f"s3://{bucket}/cache", cwd=project)
    sh("dvc", "remote", "modify", "storage", "endpointurl", s3_server, cwd=project)
    sh("dvc", "push", "ingest", cwd=project)

    shutil.rmtree(project / ".dvc" / "cache")
    shutil.rmtree(project / "data" / "ingest")
    sh("dvc", "pull", "ingest", cwd=project)

    assert _digest(project / "data" / "ingest") == before
    status = sh("dvc", "status", "ingest", cwd=project).stdout
    assert "up to date" in status
    # credentials came from the environment and were never written to the DVC config
    assert "testing" not in (project / ".dvc" / "config").read_text()
