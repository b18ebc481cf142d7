"""`dvc.yaml` generated from the stage registry; committed, and a test fails on drift."""

from __future__ import annotations

from pathlib import Path

import yaml

from stages.registry import ROOT, STAGES, Stage, check_registry

HEADER = "# Generated from stages/registry.py by `python -m orchestration gen-dvc`. Do not edit.\n"


def stage_entry(stage: Stage, root: Path) -> dict:
    entry: dict = {"cmd": stage.cmd, "deps": [*stage.code_files(root), *stage.deps]}
    if stage.params:
        entry["params"] = list(stage.params)
    # Checkpoints are state, not data: kept across runs, not stored in the DVC cache.
    entry["outs"] = [stage.out] + [{p: {"persist": True, "cache": False}} for p in stage.persist]
    # Reports are read in git, like metrics.
    entry["outs"] += [{d: {"cache": False}} for d in stage.documents]
    if stage.metrics:
        entry["metrics"] = [{m: {"cache": False}} for m in stage.metrics]
    if stage.plots:
        entry["plots"] = [{p: _plot_options(stage, p)} for p in stage.plots]
    return entry


def _plot_options(stage: Stage, path: str) -> dict:
    options: dict = {"cache": False}
    if stage.plot_x and not path.endswith(".png"):
        options["x"] = stage.plot_x
    return options


def render(root: Path = ROOT) -> str:
    check_registry()
    doc = {"stages": {s.name: stage_entry(s, root) for s in STAGES}}
    return HEADER + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=100)


def write(root: Path = ROOT) -> bool:
    """Write dvc.yaml; True if it changed."""
    path = root / "dvc.yaml"
    text = render(root)
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    return True


def drift(root: Path = ROOT) -> str | None:
    """A message if the committed dvc.yaml differs from the registry, else None."""
    path = root / "dvc.yaml"
    if not path.exists():
        return "dvc.yaml is missing; run `python -m orchestration gen-dvc`"
    if path.read_text() != render(root):
        return (
            "dvc.yaml is out of date with stages/registry.py; run `python -m orchestration gen-dvc`"
        )
    return None
