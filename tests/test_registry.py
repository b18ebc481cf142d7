"""The registry is the single declaration: dvc.yaml and the Dagster assets follow it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestration import dvc_yaml
from stages.registry import STAGES, Stage, check_registry, upstream
from tests.conftest import copy_project

REPO = Path(__file__).resolve().parent.parent


def test_committed_dvc_yaml_matches_registry():
    assert dvc_yaml.drift(REPO) is None


def test_drift_is_detected(tmp_path):
    root = copy_project(tmp_path)
    (root / "dvc.yaml").write_text(dvc_yaml.render(root).replace("ingest", "ingest2", 1))
    assert "out of date" in dvc_yaml.drift(root)
    (root / "stages" / "ingest" / "new_module.py").write_text("X = 1\n")  # new code file
    dvc_yaml.write(root)
    assert "stages/ingest/new_module.py" in (root / "dvc.yaml").read_text()
    assert dvc_yaml.drift(root) is None


def test_dvc_stages_match_registry():
    doc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(doc) == [s.name for s in STAGES]
    for s in STAGES:
        assert doc[s.name]["cmd"] == f"python -m stages run {s.name}"
        assert set(s.deps) <= set(doc[s.name]["deps"])
        assert doc[s.name].get("params", []) == list(s.params)


def test_dagster_assets_match_registry():
    from orchestration.definitions import defs

    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {s.name for s in STAGES}
    for s in STAGES:
        node = graph.get(__import__("dagster").AssetKey(s.name))
        assert {k.to_user_string() for k in node.parent_keys} == set(upstream(s))
        assert node.code_version


def test_stage_code_imports_neither_dagster_nor_dvc():
    for path in (REPO / "stages").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in {"dagster", "dvc"}, f"{path}: imports {name}"



def test_params_validation_imports_no_ml_framework():
    """Every stage process validates all params first; torch + transformers would add seconds."""
    code = ("import sys; from pathlib import Path; from stages import params; "
            "params.load(Path('.')); "
            "print(sorted({'torch', 'transformers', 'accelerate'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"

def test_registry_rules():
    a = Stage(name="a", description="", code=(), out="data/a")
    with pytest.raises(ValueError, match="inside output"):
        check_registry(
            (a, Stage(name="b", description="", code=(), out="data/b", deps=("data/a/x",)))
        )
    with pytest.raises(ValueError, match="also produced"):
        check_registry((a, Stage(name="b", description="", code=(), out="data/a")))
    with pytest.raises(ValueError, match="later stage"):
        check_registry(
            (Stage(name="b", description="", code=(), out="data/b", deps=("data/a",)), a)
        )
    check_registry()


def test_instance_settings_template_is_valid(tmp_path):
    from dagster import DagsterInstance

    (tmp_path / "dagster.yaml").write_text((REPO / "orchestration" / "dagster.yaml").read_text())
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.run_coordinator is not None


def test_persistent_outputs_and_gpu_flag_reach_both_front_ends():
    s = Stage(name="train", description="", code=(), out="models/x", persist=("ckpt/x",), gpu=True)
    entry = dvc_yaml.stage_entry(s, REPO)
    assert entry["outs"] == ["models/x", {"ckpt/x": {"persist": True, "cache": False}}]
    from assets.stage_assets import GPU_POOL, build_stage_asset

    assert build_stage_asset(s, REPO, {}).op.pool == GPU_POOL
    assert build_stage_asset(STAGES[0], REPO, {"base": {"seed": 0}, "ingest": {}}).op.pool is None


def test_synth_identity_covers_the_model_not_the_client():
    """A different endpoint model (or any declared synth param) re-keys synth; the API key's
    variable, concurrency, timeouts and retries are how, not what: they never stale it."""
    from orchestration.ledger import code_version
    from stages.params import read_params
    from stages.profiles import merge
    from stages.registry import ROOT, stage

    synth = stage("synth")
    raw = read_params(ROOT)
    base = code_version(synth, ROOT, raw)
    client = {"concurrency": 64, "api_key_env": "OTHER_KEY", "timeout_s": 5, "attempts": 9,
              "backoff_s": 2.0, "batch_size": 1, "threads": 1}
    assert code_version(synth, ROOT, merge(yaml.safe_load(yaml.safe_dump(raw)),
                                           {"synth": {"client": client}})) == base
    for edit in ({"endpoint": {"model": "another-model"}}, {"sampling": {"temperature": 0.2}},
                 {"model": "models/generator/other"}, {"backend": "http"}):
        changed = merge(yaml.safe_load(yaml.safe_dump(raw)), {"synth": edit})
        assert code_version(synth, ROOT, changed) != base, edit
