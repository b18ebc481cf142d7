"""The one entry point both front ends use: `python -m stages run <stage>`.

Validates params, checks inputs, gives the stage temporary output paths, publishes them atomically
when the stage returns and writes its metrics. Stage modules define `Params` and
`run(params, ctx) -> dict` and import neither dagster nor dvc.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from stages import atomic, params
from stages.executor import Executor, open_executor
from stages.registry import ROOT, Stage, stage

T = TypeVar("T")
log = logging.getLogger("stages")


class StageInputError(RuntimeError):
    """A declared input is missing or unusable; the message says which and what to do."""


@dataclass
class StageContext:
    """What a stage gets besides its own params: paths, shared params, logging, progress."""

    stage: Stage
    root: Path
    base: params.Base
    runtime: params.Runtime
    log: logging.Logger
    _tmp: dict[str, Path] = field(default_factory=dict)
    _sections: dict[str, params.StrictModel] = field(default_factory=dict)

    def section(self, name: str) -> params.StrictModel:
        """Validated params of another stage's section that this stage declares (all of it or
        some of its keys), e.g. the curation thresholds `synth` applies to generated text."""
        if not any(p == name or p.startswith(name + ".") for p in self.stage.params):
            raise KeyError(f"stage {self.stage.name!r} does not declare params of {name!r}")
        return self._sections[name]

    def dep(self, path: str) -> Path:
        """A declared data dep, or a path inside one (e.g. `data/ingest/heldout`)."""
        if not any(_within(path, d) for d in self.stage.deps):
            raise KeyError(f"{path!r} is not (inside) a declared dep of stage {self.stage.name!r}")
        return self.root / path

    def out(self, path: str) -> Path:
        """Temporary location for the declared output, a plot, a document, or a path inside the
        output.

        Everything written there is moved into place when the stage succeeds.
        """
        owner = next((o for o in (self.stage.out, *self.stage.plots, *self.stage.documents)
                      if _within(path, o)), None)
        if owner is None:
            raise KeyError(f"{path!r} is not (inside) a declared out of stage {self.stage.name!r}")
        if owner not in self._tmp:
            final = self.root / owner
            final.parent.mkdir(parents=True, exist_ok=True)
            self._tmp[owner] = atomic.tmp_path(final)
        if path == owner:
            return self._tmp[owner]
        self._tmp[owner].mkdir(exist_ok=True)
        target = self._tmp[owner] / Path(path).relative_to(owner)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def persist(self, path: str) -> Path:
        """A persistent output (e.g. checkpoints) that the stage manages itself, across runs."""
        if path not in self.stage.persist:
            raise KeyError(f"{path!r} is not a declared persistent out of {self.stage.name!r}")
        return self.root / path

    @property
    def workers(self) -> int:
        return self.runtime.workers or len(os.sched_getaffinity(0))

    def executor(self) -> Executor:
        """Where this stage's data-parallel work runs: local processes or Ray (runtime)."""
        return open_executor(self.runtime, self.workers)

    def progress(self, items: Iterable[T], total: int | None, desc: str) -> Iterator[T]:
        """Iterate with progress: a tqdm bar on a terminal, periodic log lines otherwise."""
        if not self.runtime.progress:
            yield from items
            return
        if sys.stderr.isatty():
            from tqdm import tqdm

            yield from tqdm(items, total=total, desc=desc, file=sys.stderr)
            return
        last, done = time.monotonic(), 0
        for item in items:
            yield item
            done += 1
            now = time.monotonic()
            if now - last >= 5.0:
                pct = f" ({100 * done / total:.0f}%)" if total else ""
                self.log.info("progress %s: %d/%s%s", desc, done, total or "?", pct)
                last = now
        self.log.info("progress %s: %d/%s (100%%)", desc, done, total or done)


def _within(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip("/") + "/")


def run_stage(name: str, root: Path = ROOT) -> dict:
    """Run one stage to completion; outputs appear only if it succeeds."""
    st = stage(name)
    models = params.load(root)  # validates every section before any work
    runtime: params.Runtime = models["runtime"]  # type: ignore[assignment]
    logging.basicConfig(
        level=runtime.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    missing = [d for d in st.deps if not (root / d).exists()]
    if missing:
        raise StageInputError(
            f"stage {name!r}: missing input(s) {', '.join(missing)}; "
            "run the upstream stages first (dvc repro, or materialize them in Dagster)"
        )
    for out in st.all_outs:
        atomic.sweep(root / out)
    module = importlib.import_module(st.module_name)
    ctx = StageContext(
        stage=st,
        root=root,
        base=models["base"],  # type: ignore[arg-type]
        runtime=runtime,
        log=logging.getLogger(f"stages.{name}"),
        _sections=models,
    )
    started = time.monotonic()
    ctx.log.info("running stage %s", name)
    metrics = module.run(models[name], ctx) or {}
    for path in (st.out, *st.plots, *st.documents):
        tmp = ctx._tmp.get(path)
        if tmp is None or not tmp.exists():
            raise RuntimeError(f"stage {name!r} finished without writing its output {path!r}")
    for path, tmp in ctx._tmp.items():
        atomic.publish(tmp, root / path)
    for path in st.metrics:
        atomic.write_json(root / path, metrics)
    ctx.log.info("stage %s done in %.2fs", name, time.monotonic() - started)
    return metrics
