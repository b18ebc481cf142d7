"""Dagster definitions: stage assets, dvc.lock checks, the corpus refresh schedule, the sync sensor.

`dagster dev` in the project root loads this module (see `[tool.dagster]` in pyproject.toml).
"""

from __future__ import annotations

import os
from pathlib import Path

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    ExecutorDefinition,
    RunConfig,
    ScheduleDefinition,
    SensorEvaluationContext,
    SensorResult,
    multiprocess_executor,
    sensor,
)

from assets.stage_assets import StageRunConfig, build_checks, build_stage_assets
from orchestration.sync import pending_events
from stages import params as params_mod

REFRESH_SCHEDULE = "corpus_refresh"
SYNC_SENSOR = "dvc_lock_sync"
EXECUTOR_ENV = "SLM_DAGSTER_EXECUTOR"


def project_root() -> Path:
    """`PIPELINE_ROOT` if set, else the nearest directory upwards holding dvc.yaml."""
    if os.environ.get("PIPELINE_ROOT"):
        return Path(os.environ["PIPELINE_ROOT"]).resolve()
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").exists() and (candidate / "stages").is_dir():
            return candidate
    return Path(__file__).resolve().parent.parent


def step_executor(orch: params_mod.Orchestration) -> ExecutorDefinition:
    """Dagster's executor for a run's steps: configuration ($SLM_DAGSTER_EXECUTOR, else
    `orchestration.executor`), not code. `multiprocess`: a local process per step, forked from
    a server that imported Dagster and this code location once per run (spawned, every step
    paid ~3 s of imports and definitions before its stage started)."""
    kind = os.environ.get(EXECUTOR_ENV) or orch.executor
    if kind == "multiprocess":
        return multiprocess_executor.configured(
            {"start_method": {"forkserver": {}}}, name="multiprocess_forkserver")
    if kind == "k8s":
        from dagster_k8s import k8s_job_executor  # pip install ".[cluster]"

        return k8s_job_executor
    raise ValueError(f"unknown Dagster executor {kind!r} (${EXECUTOR_ENV}): multiprocess or k8s")


def build_definitions(root: Path) -> Definitions:
    models = params_mod.load(root)  # a bad params.yaml fails the code location load, loudly
    orch: params_mod.Orchestration = models["orchestration"]  # type: ignore[assignment]

    refresh = ScheduleDefinition(
        name=REFRESH_SCHEDULE,
        description="Re-ingest the corpus; downstream follows only if its data version changed.",
        cron_schedule=orch.refresh_cron,
        execution_timezone=orch.refresh_timezone,
        target=AssetSelection.assets("ingest"),
        run_config=RunConfig(ops={"ingest": StageRunConfig(force=True)}),
        default_status=DefaultScheduleStatus.RUNNING,
    )

    @sensor(
        name=SYNC_SENSOR,
        minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.RUNNING,
        description="Records stages that `dvc repro` ran outside Dagster (reads dvc.lock), "
        "with their metadata and asset checks.",
    )
    def dvc_lock_sync(context: SensorEvaluationContext) -> SensorResult:
        return SensorResult(asset_events=pending_events(root, context.instance))

    return Definitions(
        assets=build_stage_assets(root),
        asset_checks=[build_checks(root)],
        schedules=[refresh],
        sensors=[dvc_lock_sync],
        executor=step_executor(orch),
    )


defs = build_definitions(project_root())
