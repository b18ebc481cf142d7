"""Corpus refresh: the schedule re-ingests; downstream follows only on a new ingest data version."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import AssetKey, AssetSelection, build_schedule_context, evaluate_automation_conditions

from orchestration.definitions import REFRESH_SCHEDULE, build_definitions
from stages.registry import STAGES
from tests.conftest import set_params, temp_instance
from tests.pipeline_helpers import dagster_materialize

pytestmark = pytest.mark.slow

DOC = """Gradient descent takes repeated steps in the direction of the negative gradient of a
function. The size of each step is the learning rate: too large and the iterates diverge, too
small and progress is slow. Momentum keeps a running average of past gradients."""


def _refresh(root: Path, instance) -> dict[str, bool]:
    """Evaluate the schedule's tick as the daemon would and run its request."""
    defs = build_definitions(root)
    schedule = defs.get_schedule_def(REFRESH_SCHEDULE)
    requests = schedule.evaluate_tick(build_schedule_context(instance=instance)).run_requests
    assert len(requests) == 1
    return dagster_materialize(
        root, instance, selection=AssetSelection.assets("ingest"), run_config=requests[0].run_config
    )


def _requested(root: Path, instance, cursor):
    result = evaluate_automation_conditions(build_definitions(root), instance, cursor=cursor)
    keys = {s.name for s in STAGES if result.get_num_requested(AssetKey(s.name))}
    return keys, result.cursor


def test_schedule_cron_comes_from_params(project: Path):
    set_params(project, orchestration={"refresh_cron": "15 4 * * 1"})
    schedule = build_definitions(project).get_schedule_def(REFRESH_SCHEDULE)
    assert schedule.cron_schedule == "15 4 * * 1"


def test_refresh_propagates_only_on_new_data(project: Path, tmp_path: Path):
    notes = project / "notes"
    notes.mkdir()
    (notes / "gd.md").write_text(DOC)
    set_params(
        project,
        ingest={
            "sources": [
                {"name": "notes", "kind": "local", "paths": ["notes"]},
                {"name": "builtin-prose", "kind": "builtin", "parts": ["pydoc_topics"]},
            ]
        },
        adapt={"corpus": {"by": "domain", "name": "prose"}},  # this corpus has no code
    )
    instance = temp_instance(tmp_path / "dagster_home")
    assert all(dagster_materialize(project, instance).values())
    requested, cursor = _requested(project, instance, None)
    assert requested == set()

    # same corpus: ingest runs (forced) but its data version is unchanged -> nothing follows
    assert _refresh(project, instance) == {"ingest": True}
    requested, cursor = _requested(project, instance, cursor)
    assert requested == set()

    # new corpus: a changed source file -> new data version -> every direct consumer is requested
    (notes / "gd.md").write_text(DOC + "\nNesterov momentum evaluates the gradient ahead.\n")
    assert _refresh(project, instance) == {"ingest": True}
    requested, cursor = _requested(project, instance, cursor)
    assert requested == {"signals", "quality", "filter", "dedup", "synth", "tokenize", "refine",
                         "adapt"}
