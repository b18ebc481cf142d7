"""Staleness parity: after any params edit (or a new file in an external input), Dagster's
unsynced set equals `dvc status`, both front ends re-run exactly the stages whose inputs changed
(early cutoff), and each front end's results leave the other with nothing to do.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from dagster import AssetSelection

from orchestration import ledger
from orchestration.sync import pending_materializations, sync_to_instance
from orchestration.webserver import webserver
from stages.registry import STAGES, stage
from tests.conftest import set_params, temp_instance
from tests.pipeline_helpers import (
    dagster_materialize,
    dagster_unsynced,
    dvc_changed,
    dvc_repro,
)

pytestmark = pytest.mark.slow

ALL = {s.name for s in STAGES}
# A filter threshold is also synth's (its QC applies filter's rules to generated text).
EDITED = {"filter", "synth"}
MODELS = ("pretrain", "refine", "adapt", "teacher_logits", "distill", "qat", "ptq", "gguf",
          "evaluate")
# What a new adapted model re-runs (qat and ptq score on its domain held-out set, ptq and gguf
# quantize it, evaluate scores everything).
AFTER_ADAPT = {"adapt", "teacher_logits", "distill", "qat", "ptq", "gguf", "evaluate"}
AFTER_FILTER = ("dedup", "mix", "tokenize", *MODELS)
# A threshold no document of the tiny corpus is near: filter re-runs, its output bytes stay.
NOOP_EDIT = {"filter": {"gopher_quality": {"max_words": 100_001}}}
# A threshold that removes documents: filter's output changes, so dedup must follow.
REAL_EDIT = {"filter": {"gopher_quality": {"min_words": 120}}}


def _rerun_unsynced_and_downstream(root: Path, instance) -> dict[str, bool]:
    unsynced = dagster_unsynced(root, instance)
    selection = AssetSelection.assets(*unsynced).downstream()
    return dagster_materialize(root, instance, selection=selection)


def test_dagster_first(project: Path, tmp_path: Path):
    # The whole lineage from the UI: one run launched through the real webserver, as the
    # "Materialize all" button does; DVC then finds every stage up to date.
    with webserver(project, tmp_path / "dagster_home") as ui:
        run_id = ui.materialize(sorted(ALL))
        assert ui.wait(run_id, timeout=1800) == "SUCCESS"
        assert {name: status for name, (status, _) in ui.staleness().items()} == dict.fromkeys(
            ALL, "FRESH")
    assert dvc_changed(project) == set()
    instance = temp_instance(tmp_path / "dagster_home")
    assert dagster_unsynced(project, instance) == set()
    assert dagster_materialize(project, instance) == dict.fromkeys(ALL, False)

    set_params(project, **NOOP_EDIT)
    assert dagster_unsynced(project, instance) == EDITED == dvc_changed(project)
    ran = _rerun_unsynced_and_downstream(project, instance)
    # early cutoff: filter and synth (from its cache) wrote the same bytes: nothing else re-runs
    assert ran == dict.fromkeys(EDITED, True) | dict.fromkeys(AFTER_FILTER, False)
    assert dagster_unsynced(project, instance) == set() == dvc_changed(project)

    # A real edit (test_dvc_first makes one upstream; this one is cheaper) re-runs downstream.
    set_params(project, adapt={"optimizer": {"lr": 0.002}})
    assert dagster_unsynced(project, instance) == {"adapt", "evaluate"} == dvc_changed(project)
    ran = _rerun_unsynced_and_downstream(project, instance)
    assert ran == dict.fromkeys(AFTER_ADAPT, True)
    assert dagster_unsynced(project, instance) == set() == dvc_changed(project)
    assert dvc_repro(project) == set()  # what Dagster ran is in dvc.lock: nothing to do
    assert pending_materializations(project, instance) == []  # and the sync sensor has nothing


def test_dvc_first(reproduced: Path, tmp_path: Path):
    project = reproduced  # `dvc repro` ran every stage
    instance = temp_instance(tmp_path / "dagster_home")
    assert dvc_changed(project) == set()
    list(sync_to_instance(project, instance))  # what the dvc_lock_sync sensor does every 30 s
    assert dagster_unsynced(project, instance) == set()
    assert dagster_materialize(project, instance) == dict.fromkeys(ALL, False)

    set_params(project, **NOOP_EDIT)
    assert dagster_unsynced(project, instance) == EDITED == dvc_changed(project)
    assert dvc_repro(project) == EDITED  # DVC's early cutoff: dedup's input bytes unchanged
    synth_run = json.loads((project / "reports/synth/metrics.json").read_text())
    assert synth_run["backend_calls"] == 0  # DVC re-ran synth: its generation cache survived

    assert dagster_unsynced(project, instance) == EDITED  # not yet told about DVC's runs
    list(sync_to_instance(project, instance))
    assert dagster_unsynced(project, instance) == set()
    assert dagster_materialize(project, instance) == dict.fromkeys(ALL, False)

    # A mix-ratio edit stales exactly `mix`, not synth (whose generation cache it would cost);
    # undone, nothing is stale.
    before = yaml.safe_load((project / "params.yaml").read_text())["mix"]["synthetic_fraction"]
    set_params(project, mix={"synthetic_fraction": before / 10})
    assert dagster_unsynced(project, instance) == {"mix"} == dvc_changed(project)
    set_params(project, mix={"synthetic_fraction": before})
    assert dagster_unsynced(project, instance) == set() == dvc_changed(project)

    # A ptq edit stales exactly `ptq` (and the report, which shows the params of every row):
    # qat, distill and everything upstream stay up to date; the list of llama.cpp quant types
    # stales exactly `gguf` and the report. So does a student hyperparameter for `distill`:
    # the teacher's top-k logits stay cached.
    for edit, stale in (({"ptq": {"scheme": {"group_size": 32}}}, "ptq"),
                        ({"gguf": {"quant_types": ["Q6_K"]}}, "gguf"),
                        ({"distill": {"kd": {"temperature": 2.0}}}, "distill")):
        original = yaml.safe_load((project / "params.yaml").read_text())
        set_params(project, **edit)
        assert dagster_unsynced(project, instance) == {stale, "evaluate"} == dvc_changed(project)
        set_params(project, **{k: original[k] for k in edit})
        assert dagster_unsynced(project, instance) == set() == dvc_changed(project)

    # A quality threshold stales `filter` alone (not the classifier, not synth's QC: what follows
    # re-runs only if the kept set changes); a classifier training param stales `quality`
    # alone (filter follows if the scores change).
    for edit, stale in (({"filter": {"quality": {"top_fraction": 0.5}}}, {"filter"}),
                        ({"quality": {"c": 0.5}}, {"quality"})):
        original = yaml.safe_load((project / "params.yaml").read_text())
        set_params(project, **edit)
        assert dagster_unsynced(project, instance) == stale == dvc_changed(project)
        set_params(project, **{k: original[k] for k in edit})
        assert dagster_unsynced(project, instance) == set() == dvc_changed(project)

    # A new generator model (a declared input no stage produces) stales exactly `synth`.
    generator = project / "models/generator/other-model.gguf"
    generator.write_bytes(b"GGUF weights of a model")
    assert dagster_unsynced(project, instance) == {"synth"} == dvc_changed(project)
    assert ledger.fingerprint(stage("synth"), project).reasons == (
        "input changed: models/generator (external)",)
    generator.unlink()

    # An adapt edit that leaves the adapted weights' bytes as they were (the log cadence) re-runs
    # adapt, then the teacher logits, which come out byte-identical: distill is not stale.
    # (qat, ptq, gguf and evaluate read adapt's whole output, whose training.json records it.)
    set_params(project, adapt={"log_every": 2})
    assert dagster_unsynced(project, instance) == {"adapt", "evaluate"} == dvc_changed(project)
    assert dvc_repro(project, "teacher_logits") == {"adapt", "teacher_logits"}
    list(sync_to_instance(project, instance))
    after_adapt = {"qat", "ptq", "gguf", "evaluate"}
    assert dagster_unsynced(project, instance) == after_adapt == dvc_changed(project)
    set_params(project, adapt={"optimizer": {"lr": 0.002}})  # new weights: distill follows
    assert dvc_repro(project, "teacher_logits") == {"adapt", "teacher_logits"}
    list(sync_to_instance(project, instance))
    assert dagster_unsynced(project, instance) == after_adapt | {"distill"} == dvc_changed(project)

    # A filter edit that removes documents: DVC re-runs every data stage after it (the models
    # that follow are what test_dagster_first re-trains); both front ends then see the same
    # stale models.
    set_params(project, **REAL_EDIT)
    assert dvc_repro(project, "tokenize") == EDITED | {"dedup", "mix", "tokenize"}
    list(sync_to_instance(project, instance))
    stale = dagster_unsynced(project, instance)
    assert "pretrain" in stale and stale == dvc_changed(project)


def test_sync_sensor_reports_dvc_runs(project: Path, tmp_path: Path):
    from dagster import AssetCheckEvaluation, AssetMaterialization, build_sensor_context

    from assets.stage_assets import check_names
    from orchestration.definitions import SYNC_SENSOR, build_definitions

    instance = temp_instance(tmp_path / "dagster_home")
    dvc_repro(project, "ingest")
    sensor = build_definitions(project).get_sensor_def(SYNC_SENSOR)
    result = sensor(build_sensor_context(instance=instance))
    mats = [e for e in result.asset_events if isinstance(e, AssetMaterialization)]
    checks = [e for e in result.asset_events if isinstance(e, AssetCheckEvaluation)]
    assert [e.asset_key.to_user_string() for e in mats] == ["ingest"]
    assert mats[0].metadata["metric/read"].value > 0  # what a UI materialization shows
    assert [(c.asset_key.to_user_string(), c.check_name, c.passed) for c in checks] == [
        ("ingest", name, True) for name in check_names(stage("ingest"))]
