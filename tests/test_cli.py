"""The command both front ends run, and the `why` explainer, as a user sees them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import set_params, sh

pytestmark = pytest.mark.slow


def test_invalid_params_fail_before_any_work(project: Path):
    set_params(project, ingest={"heldout_fraktion": 0.1}, runtime={"workers": -1})
    proc = sh("python", "-m", "stages", "run", "ingest", cwd=project, check=False)
    assert proc.returncode == 2
    assert "ingest.heldout_fraktion" in proc.stderr
    assert "runtime.workers" in proc.stderr
    assert not (project / "data").exists()


def test_unknown_section_is_an_error(project: Path):
    set_params(project, ingset={"sources": []})
    proc = sh("python", "-m", "stages", "check", cwd=project, check=False)
    assert proc.returncode == 2 and "ingset: unknown section" in proc.stderr


def test_why_names_the_changed_param_and_input(project: Path):
    sh("dvc", "repro", "signals", cwd=project)
    assert sh("python", "-m", "orchestration", "why", "ingest", cwd=project).returncode == 0
    set_params(project, ingest={"heldout_fraction": 0.05})
    proc = sh("python", "-m", "orchestration", "why", "ingest", cwd=project, check=False)
    assert proc.returncode == 1
    assert "param ingest.heldout_fraction: 0.02 -> 0.05" in proc.stdout
    sh("dvc", "repro", "--single-item", "ingest", cwd=project)
    proc = sh("python", "-m", "orchestration", "why", "signals", cwd=project, check=False)
    assert "input changed: data/ingest (new output of ingest)" in proc.stdout


def test_dagster_loads_from_the_project_root(project: Path):
    """`dagster dev` finds the definitions through `[tool.dagster]` in pyproject.toml."""
    proc = sh("dagster", "definitions", "validate", cwd=project, env={"DAGSTER_HOME": ""})
    assert "Validation successful for code location slm_pipeline" in proc.stdout + proc.stderr
