"""Make stages that `dvc repro` recorded outside Dagster visible in Dagster.

For each stage whose dvc.lock entry matches the current code, params and inputs, but whose latest
Dagster materialization carries another data version, code version or input versions, report a
runless materialization with DVC's data version and the provenance tags Dagster's staleness uses,
carrying the metadata a materialization from the UI carries (metrics, plots inline, output size
and files: `assets.stage_assets.result_metadata`), and the asset's checks evaluated as the UI
runs them. Either front end's result reads the same in the UI.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from dagster import AssetCheckEvaluation, AssetKey, AssetMaterialization, DagsterInstance

from orchestration import ledger
from stages import params as params_mod
from stages.registry import STAGES

# Dagster's documented event tags for data/code versions and their provenance.
DATA_VERSION_TAG = "dagster/data_version"
CODE_VERSION_TAG = "dagster/code_version"
USER_PROVIDED_TAG = "dagster/data_version_is_user_provided"
INPUT_VERSION_PREFIX = "dagster/input_data_version/"
INPUT_POINTER_PREFIX = "dagster/input_event_pointer/"  # which input event was read: none here


def _recorded_tags(instance: DagsterInstance, name: str) -> dict[str, str]:
    event = instance.get_latest_materialization_event(AssetKey(name))
    if event is None or event.asset_materialization is None:
        return {}
    return dict(event.asset_materialization.tags or {})


def pending_materializations(root: Path, instance: DagsterInstance) -> list[AssetMaterialization]:
    """Runless materializations that bring Dagster in line with dvc.lock."""
    from assets.stage_assets import result_metadata

    lock = ledger.read_lock(root)
    raw = params_mod.read_params(root)
    events = []
    for stage in STAGES:
        fp = ledger.fingerprint(stage, root, lock, raw)
        if not fp.current:
            continue  # DVC itself has this stage stale; Dagster shows it stale as well
        versions = {
            DATA_VERSION_TAG: fp.data_version,
            CODE_VERSION_TAG: ledger.code_version(stage, root, raw),
            **{INPUT_VERSION_PREFIX + up: v for up, v in fp.input_versions.items() if v},
        }
        recorded = _recorded_tags(instance, stage.name)
        if all(recorded.get(k) == v for k, v in versions.items()):
            continue
        tags = {
            **versions,
            USER_PROVIDED_TAG: "true",
            **{INPUT_POINTER_PREFIX + up: "NULL" for up in fp.input_versions},
        }
        events.append(
            AssetMaterialization(
                asset_key=stage.name,
                description="recorded by `dvc repro` outside Dagster (from dvc.lock)",
                metadata={"source": "dvc.lock",
                          **result_metadata(stage, root, fp.data_version, executed=True)},
                tags=tags,
            )
        )
    return events


def check_evaluations(root: Path, name: str) -> list[AssetCheckEvaluation]:
    """The asset checks of stage `name`, evaluated as the UI's `stage_checks` evaluates them."""
    from assets.stage_assets import check_names, check_result

    stage = next(s for s in STAGES if s.name == name)
    lock, raw = ledger.read_lock(root), params_mod.read_params(root)
    results = [check_result(stage, check, root, lock, raw) for check in check_names(stage)]
    return [AssetCheckEvaluation(asset_key=AssetKey(name), check_name=r.check_name,
                                 passed=r.passed, metadata=r.metadata, severity=r.severity)
            for r in results]


def pending_events(root: Path, instance: DagsterInstance
                   ) -> list[AssetMaterialization | AssetCheckEvaluation]:
    """`pending_materializations`, each followed by its asset's check evaluations."""
    return [e for m in pending_materializations(root, instance)
            for e in (m, *check_evaluations(root, m.asset_key.to_user_string()))]


def sync_to_instance(root: Path, instance: DagsterInstance | None = None) -> Iterator[str]:
    instance = instance or DagsterInstance.get()
    for event in pending_events(root, instance):
        instance.report_runless_asset_event(event)
        name = event.asset_key.to_user_string()
        if isinstance(event, AssetMaterialization):
            yield f"{name}: recorded data version {event.tags[DATA_VERSION_TAG]}"
        elif not event.passed:
            yield f"{name}: check {event.check_name} failed"
