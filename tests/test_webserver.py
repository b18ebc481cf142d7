"""The Dagster UI for real: dagster-webserver on 127.0.0.1, driven over GraphQL as the UI does."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestration import ledger
from orchestration.webserver import webserver
from stages.registry import stage

pytestmark = pytest.mark.slow


def test_materialize_button_and_staleness(project: Path, tmp_path: Path):
    with webserver(project, tmp_path / "dagster_home") as ui:
        before = ui.staleness()
        assert before["ingest"][0] == "MISSING"

        run_id = ui.materialize(["ingest"])
        assert ui.wait(run_id) == "SUCCESS"

        after = ui.staleness()
        assert after["ingest"] == ("FRESH", [])
        # the Dagster run left the stage recorded in dvc.lock
        assert ledger.fingerprint(stage("ingest"), project).current

        params = yaml.safe_load((project / "params.yaml").read_text())
        params["ingest"]["heldout_fraction"] = 0.1
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        ui.reload()  # the UI's "Reload definitions": code versions are recomputed
        status, causes = ui.staleness()["ingest"]
        assert status == "STALE"
        assert causes == ["has a new code version"]
