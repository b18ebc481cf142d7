"""Dagster on a cluster is configuration: deploy/k8s/dagster.yaml resolves against Dagster's and
dagster-k8s's own schemas, and the k8s step executor is chosen by the environment, with GPU stages
asking their pods for a GPU. (No Kubernetes cluster here: docs/cluster.md says what ran.)"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config

from orchestration.definitions import EXECUTOR_ENV, build_definitions
from stages.registry import STAGES
from tests.conftest import REPO, TINY, copy_project, set_params

DEPLOY = REPO / "deploy" / "k8s"
ENV = {"DAGSTER_PG_HOST": "postgres", "DAGSTER_PG_USER": "dagster", "DAGSTER_PG_PASSWORD": "x"}


def test_the_k8s_instance_config_resolves(monkeypatch):
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    config, custom_class = dagster_instance_config(str(DEPLOY))
    assert custom_class is None
    entry = config["run_launcher"]
    cls = getattr(importlib.import_module(entry["module"]), entry["class"])
    result = process_config(cls.config_type(), entry["config"])
    assert result.success, result.errors
    launcher = config["run_launcher"]["config"]
    assert {"name": "project", "mountPath": "/opt/slm-pipeline"} in launcher["volume_mounts"]
    assert "SLM_DAGSTER_EXECUTOR=k8s" in launcher["env_vars"]
    assert config["concurrency"]["pools"]["default_limit"] == 1  # the gpu pool
    storage = config["storage"]["postgres"]["postgres_db"]
    assert storage["password"] == {"env": "DAGSTER_PG_PASSWORD"}  # never a literal secret


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    root = copy_project(tmp_path / "project")
    set_params(root, **TINY)
    return root


def test_step_executor_is_chosen_by_configuration(tiny_root, monkeypatch):
    monkeypatch.delenv(EXECUTOR_ENV, raising=False)
    local = build_definitions(tiny_root).resolve_implicit_global_asset_job_def()
    assert local.executor_def.name == "multiprocess_forkserver"
    monkeypatch.setenv(EXECUTOR_ENV, "k8s")
    defs = build_definitions(tiny_root)
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.executor_def.name == "k8s"
    gpu = {s.name for s in STAGES if s.gpu}
    for node in job.graph.node_defs:
        tags = node.tags.get("dagster-k8s/config")
        if node.name in gpu:
            pod = json.loads(tags) if isinstance(tags, str) else tags
            assert pod["container_config"]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
        else:
            assert tags is None
    monkeypatch.setenv(EXECUTOR_ENV, "celery")
    with pytest.raises(ValueError, match="unknown Dagster executor 'celery'"):
        build_definitions(tiny_root)
