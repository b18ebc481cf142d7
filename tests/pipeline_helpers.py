"""Driving both front ends in tests: Dagster in-process on a persistent instance, DVC by its CLI."""

from __future__ import annotations

import json
from pathlib import Path

from dagster import AssetSelection, DagsterInstance, materialize
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver

from orchestration.definitions import build_definitions
from tests.conftest import sh


def stage_assets(root: Path) -> list:
    """Definitions are rebuilt each time, as a webserver reload would: code versions change."""
    return list(build_definitions(root).assets)


def dagster_materialize(
    root: Path, instance: DagsterInstance, selection: AssetSelection | None = None, run_config=None
) -> dict[str, bool]:
    """Materialize via Dagster; return stage -> whether the stage command actually ran."""
    assets = stage_assets(root)
    result = materialize(assets, instance=instance, selection=selection, run_config=run_config)
    assert result.success
    return {
        mat.asset_key.to_user_string(): mat.metadata["executed"].value
        for mat in result.get_asset_materialization_events()
        for mat in [mat.materialization]
    }


def dagster_unsynced(root: Path, instance: DagsterInstance) -> set[str]:
    assets = stage_assets(root)
    resolver = get_stale_status_resolver(instance, assets)
    return {
        key.to_user_string()
        for a in assets
        for key in a.keys
        if resolver.get_status(key) == StaleStatus.STALE
    }


def dvc_changed(root: Path) -> set[str]:
    out = sh("dvc", "status", "--json", cwd=root).stdout
    return {name.split(":")[-1] for name in json.loads(out or "{}")}


def dvc_repro(root: Path, *args: str) -> set[str]:
    """Run `dvc repro`; return the stages it actually ran."""
    out = sh("dvc", "repro", *args, cwd=root).stdout
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
