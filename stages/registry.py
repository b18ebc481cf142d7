"""The single declaration of every pipeline stage.

`dvc.yaml` is generated from this list (`python -m orchestration gen-dvc`) and the Dagster assets
are built from it, so both front ends run the same command over the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Code every stage runs through (runner, atomic writes, params loading).
COMMON_CODE = ("stages/runner.py", "stages/atomic.py", "stages/params.py")


@dataclass(frozen=True)
class Stage:
    """One stage: the command it runs, what it reads and writes, and what it needs."""

    name: str
    description: str
    code: tuple[str, ...]  # files or packages (dirs) whose content defines the stage's logic
    deps: tuple[str, ...] = ()  # data paths it reads, usually outs of earlier stages
    params: tuple[str, ...] = ()  # params.yaml keys (sections or dotted keys) it depends on
    outs: tuple[str, ...] = ()  # cached data outputs (the stage's data version)
    metrics: tuple[str, ...] = ()  # small JSON metrics files, kept in git, not in the cache
    plots: tuple[str, ...] = ()  # PNG/JSON plots, kept in git
    persist: tuple[str, ...] = ()  # outputs kept across runs (resumable checkpoints)
    gpu: bool = False  # runs in the GPU concurrency pool
    module: str = field(default="")  # python module with `Params` and `run`; default stages.<name>

    @property
    def cmd(self) -> str:
        return f"python -m stages run {self.name}"

    @property
    def module_name(self) -> str:
        return self.module or f"stages.{self.name}"

    @cached_property
    def code_files(self) -> tuple[str, ...]:
        """Sorted code dependency files, directories expanded to their `.py` files."""
        files: set[str] = set(COMMON_CODE)
        for entry in self.code:
            path = ROOT / entry
            if path.is_dir():
                files.update(p.relative_to(ROOT).as_posix() for p in path.rglob("*.py"))
            else:
                files.add(entry)
        return tuple(sorted(files))

    @property
    def all_outs(self) -> tuple[str, ...]:
        return self.outs + self.persist + self.metrics + self.plots


STAGES: tuple[Stage, ...] = (
    Stage(
        name="ingest",
        description="Raw corpus: documents from the declared sources, sharded, with a held-out slice.",
        code=("stages/ingest",),
        params=("base.seed", "ingest"),
        outs=("data/ingest/corpus", "data/ingest/heldout"),
        metrics=("reports/ingest/metrics.json",),
    ),
    Stage(
        name="signals",
        description="Per-document quality, repetition, language and toxicity signals, computed once.",
        code=("stages/signals",),
        deps=("data/ingest/corpus",),
        params=("signals",),
        outs=("data/signals",),
        metrics=("reports/signals/metrics.json",),
    ),
    Stage(
        name="filter",
        description="Thresholds from params applied to the stored signals; the filtered corpus.",
        code=("stages/filter",),
        deps=("data/ingest/corpus", "data/signals"),
        params=("filter",),
        outs=("data/filter/corpus", "reports/filter/removed_samples.jsonl"),
        metrics=("reports/filter/metrics.json",),
    ),
    Stage(
        name="dedup",
        description="Exact and MinHash near-duplicate removal, decontamination, SoftDedup weights.",
        code=("stages/dedup",),
        deps=("data/filter/corpus", "data/ingest/heldout"),
        params=("base.seed", "dedup"),
        outs=("data/dedup/corpus", "reports/dedup/examples.json"),
        metrics=("reports/dedup/metrics.json",),
        plots=("reports/dedup/weights.png",),
    ),
)


def stage(name: str) -> Stage:
    for s in STAGES:
        if s.name == name:
            return s
    known = ", ".join(s.name for s in STAGES)
    raise KeyError(f"unknown stage {name!r}; known stages: {known}")


def producer_of(path: str) -> Stage | None:
    """The stage whose output contains `path` (or None for external inputs)."""
    for s in STAGES:
        for out in s.all_outs:
            if path == out or path.startswith(out.rstrip("/") + "/"):
                return s
    return None


def upstream(s: Stage) -> tuple[str, ...]:
    """Names of the stages `s` reads from, in declaration order, without duplicates."""
    names: list[str] = []
    for dep in s.deps:
        p = producer_of(dep)
        if p is not None and p.name not in names:
            names.append(p.name)
    return tuple(names)
